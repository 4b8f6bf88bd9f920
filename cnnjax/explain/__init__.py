"""Explain any cnnjax model's predictions: jitted, batched, one target class (logit) per image.

Every explainer is `f(model, variables, images, targets, *, ...)`, runs the model in inference mode, and is
compiled once per (model, shapes, options): a second call with the same shapes does not retrace.
"""
from cnnjax.explain.cam import gradcam, gradcam_plus_plus, guided_gradcam
from cnnjax.explain.features import activations, layer_names
from cnnjax.explain.gradients import saliency, saliency_map

__all__ = [
    "activations", "gradcam", "gradcam_plus_plus", "guided_gradcam", "layer_names", "saliency",
    "saliency_map",
]
