"""Explain any cnnjax model's predictions: jitted, batched, with any target.

Every explainer is `f(model, variables, images, targets, *, ...)`, runs the model in inference mode, and is
compiled once per (model, shapes, options): a second call with the same shapes does not retrace. `targets` is one
class per image `(B,)` (or an int for all), K classes per image `(B, K)` (outputs gain a K axis after the batch,
from one forward pass), or a function `(logits) -> (B,)` of any scalar to explain.
"""
from cnnjax.explain.attribution import gradient_shap, integrated_gradients, noise_tunnel, smoothgrad
from cnnjax.explain.cam import gradcam, gradcam_plus_plus, guided_gradcam
from cnnjax.explain.features import activations
from cnnjax.explain.gradients import input_x_gradient, saliency, saliency_map
from cnnjax.explain.maximize import maximize_activation
from cnnjax.explain.metrics import deletion_insertion, randomization_check
from cnnjax.explain.features import with_one_line_errors as _with_one_line_errors
from cnnjax.explain.targets import Targets
from cnnjax.models.introspect import layer_names

# Images of another size than the model's, or another model's variables: one line, not flax's scope errors.
(activations, deletion_insertion, gradcam, gradcam_plus_plus, gradient_shap, guided_gradcam, input_x_gradient,
 integrated_gradients, maximize_activation, noise_tunnel, randomization_check, saliency, smoothgrad) = map(
     _with_one_line_errors, (
         activations, deletion_insertion, gradcam, gradcam_plus_plus, gradient_shap, guided_gradcam,
         input_x_gradient, integrated_gradients, maximize_activation, noise_tunnel, randomization_check, saliency,
         smoothgrad))

__all__ = [
    "Targets", "activations", "deletion_insertion", "gradcam", "gradcam_plus_plus", "gradient_shap",
    "guided_gradcam", "input_x_gradient", "integrated_gradients", "layer_names", "maximize_activation",
    "noise_tunnel", "randomization_check", "saliency", "saliency_map", "smoothgrad",
]
