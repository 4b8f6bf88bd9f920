"""Explain any cnnjax model's predictions: jitted, batched, with any target.

Every explainer is `f(model, variables, images, targets, *, ...)`, runs the model in inference mode, and is
compiled once per (model, shapes, options): a second call with the same shapes does not retrace. `targets` is one
class per image `(B,)` (or an int for all), K classes per image `(B, K)` (outputs gain a K axis after the batch,
from one forward pass), or a function `(logits) -> (B,)` of any scalar to explain. `registry.METHODS` lists them
all by the names explain.py and the web page use; `cost` tells what a call costs in forward passes.
"""
from cnnjax.explain import objectives, parameterization, registry, transforms
from cnnjax.explain.attribution import gradient_shap, integrated_gradients, noise_tunnel, smoothgrad
from cnnjax.explain.cam import (ablationcam, eigencam, gradcam, gradcam_plus_plus, guided_gradcam, hirescam, layercam,
                                scorecam, xgradcam)
from cnnjax.explain.cost import cost
from cnnjax.explain.features import activations
from cnnjax.explain.features import with_one_line_errors as _with_one_line_errors
from cnnjax.explain.gradients import input_x_gradient, saliency, saliency_map
from cnnjax.explain.maximize import KERAS_VIS, maximize_activation
from cnnjax.explain.metrics import (deletion_insertion, infidelity, mufidelity, noisy_linear_imputation,
                                    randomization_check, road, sensitivity_max)
from cnnjax.explain.perturbation import feature_ablation, grid_mask, kernel_shap, occlusion, rise
from cnnjax.explain.targets import Targets
from cnnjax.models.introspect import layer_names

# Images of another size than the model's, or another model's variables: one line, not flax's scope errors.
# (noise_tunnel, sensitivity_max and cost call an explainer, which gives that line itself.)
(ablationcam, activations, deletion_insertion, eigencam, feature_ablation, gradcam, gradcam_plus_plus, gradient_shap,
 guided_gradcam, hirescam, infidelity, input_x_gradient, integrated_gradients, kernel_shap, layercam,
 maximize_activation, mufidelity, occlusion, randomization_check, rise, road, saliency, scorecam, smoothgrad,
 xgradcam) = map(_with_one_line_errors, (
     ablationcam, activations, deletion_insertion, eigencam, feature_ablation, gradcam, gradcam_plus_plus,
     gradient_shap, guided_gradcam, hirescam, infidelity, input_x_gradient, integrated_gradients, kernel_shap,
     layercam, maximize_activation, mufidelity, occlusion, randomization_check, rise, road, saliency, scorecam,
     smoothgrad, xgradcam))

__all__ = [
    "KERAS_VIS", "Targets", "ablationcam", "activations", "cost", "deletion_insertion", "eigencam", "feature_ablation", "gradcam",
    "gradcam_plus_plus", "gradient_shap", "grid_mask", "guided_gradcam", "hirescam", "infidelity",
    "input_x_gradient", "integrated_gradients", "kernel_shap", "layer_names", "layercam", "maximize_activation",
    "mufidelity", "noise_tunnel", "noisy_linear_imputation", "objectives", "occlusion", "parameterization",
    "randomization_check", "registry", "rise", "road", "saliency", "saliency_map", "scorecam", "sensitivity_max",
    "smoothgrad", "transforms", "xgradcam",
]
