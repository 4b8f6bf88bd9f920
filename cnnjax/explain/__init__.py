"""Explain any cnnjax model's predictions: jitted, batched, one target class (logit) per image.

Every explainer is `f(model, variables, images, targets, *, ...)`, runs the model in inference mode, and is
compiled once per (model, shapes, options): a second call with the same shapes does not retrace.
"""
from cnnjax.explain.attribution import integrated_gradients, smoothgrad
from cnnjax.explain.cam import gradcam, gradcam_plus_plus, guided_gradcam
from cnnjax.explain.features import activations, layer_names
from cnnjax.explain.gradients import saliency, saliency_map
from cnnjax.explain.maximize import maximize_activation
from cnnjax.explain.metrics import deletion_insertion, randomization_check

__all__ = [
    "activations", "deletion_insertion", "gradcam", "gradcam_plus_plus", "guided_gradcam",
    "integrated_gradients", "layer_names", "maximize_activation", "randomization_check", "saliency",
    "saliency_map", "smoothgrad",
]
