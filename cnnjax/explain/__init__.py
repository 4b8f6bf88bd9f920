"""Explain any cnnjax model's predictions: jitted, batched, one target class (logit) per image.

Every explainer is `f(model, variables, images, targets, *, ...)`, runs the model in inference mode, and is
compiled once per (model, shapes, options): a second call with the same shapes does not retrace.
"""
from cnnjax.explain.attribution import integrated_gradients, smoothgrad
from cnnjax.explain.cam import gradcam, gradcam_plus_plus, guided_gradcam
from cnnjax.explain.features import activations
from cnnjax.explain.gradients import saliency, saliency_map
from cnnjax.explain.maximize import maximize_activation
from cnnjax.explain.metrics import deletion_insertion, randomization_check
from cnnjax.explain.features import with_one_line_errors as _with_one_line_errors
from cnnjax.models.introspect import layer_names

# Images of another size than the model's, or another model's variables: one line, not flax's scope errors.
(activations, deletion_insertion, gradcam, gradcam_plus_plus, guided_gradcam, integrated_gradients,
 maximize_activation, randomization_check, saliency, smoothgrad) = map(_with_one_line_errors, (
     activations, deletion_insertion, gradcam, gradcam_plus_plus, guided_gradcam, integrated_gradients,
     maximize_activation, randomization_check, saliency, smoothgrad))

__all__ = [
    "activations", "deletion_insertion", "gradcam", "gradcam_plus_plus", "guided_gradcam",
    "integrated_gradients", "layer_names", "maximize_activation", "randomization_check", "saliency",
    "saliency_map", "smoothgrad",
]
