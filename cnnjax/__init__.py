"""cnnjax: train the classic convolutional networks in JAX/Flax and see why they predict what they predict."""
__version__ = "0.1.0"
