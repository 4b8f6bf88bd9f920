"""Every explainer by the name explain.py, the web page and the notebooks offer it under: one list, so a method
added here is offered everywhere (and named as captum and pytorch-grad-cam users know it)."""
import dataclasses
import types
from typing import Callable, Dict, Mapping, Optional, Sequence

from cnnjax.explain import attribution, cam, features, gradients, perturbation


def _no_defaults(image_shape):
  del image_shape
  return {}


@dataclasses.dataclass(frozen=True)
class Method:
  """One explainer as the apps offer it."""
  name: str  # on the command line and the page
  function: Callable  # the public explainer, f(model, variables, images, targets, **options)
  title: str  # panel title
  paper: str
  peer: str  # what captum / pytorch-grad-cam call it ("" if neither has it)
  options: Mapping = dataclasses.field(default_factory=dict)  # fixed keyword arguments (e.g. the modifier)
  # Options that depend on the (H, W, C) image shape, such as an occlusion window or a feature grid.
  sized_options: Callable = _no_defaults
  takes_layer: bool = False  # CAMs: explained at a feature layer (`layer=`)
  region: bool = False  # (B, H, W) maps of coarse regions in [0, 1], shown over the image; else per-pixel detail

  def __call__(self, model, variables, images, targets, *, layer: Optional[str] = None, **options):
    """The explanation of `images` for `targets`, with this method's fixed and size-dependent options."""
    keywords = {**self.options, **self.sized_options(images.shape[1:]), **options}
    if self.takes_layer:
      keywords["layer"] = layer
    return features.with_one_line_errors(self.function)(model, variables, images, targets, **keywords)


def _feature_grid(image_shape):
  """A grid of about 8 x 8 features for the feature-mask methods (captum's usual superpixel count)."""
  height, width = image_shape[:2]
  return {"feature_mask": perturbation.grid_mask(height, width, max(1, min(height, width) // 8))}


def _occlusion_window(image_shape):
  """A window of about 1/8 of the image, moved by half of it (captum tutorials' proportions)."""
  side = max(2, min(image_shape[:2]) // 8)
  return {"window": (side, side), "strides": (side // 2, side // 2)}


_METHODS = (
    Method("saliency", gradients.saliency, "saliency", "Simonyan et al. 2014", "captum Saliency"),
    Method("guided", gradients.saliency, "guided backprop", "Springenberg et al. 2015", "captum GuidedBackprop",
           options={"modifier": "guided"}),
    Method("relu", gradients.saliency, "rectified backprop", "Zeiler & Fergus 2014", "captum Deconvolution",
           options={"modifier": "relu"}),
    Method("input_x_gradient", gradients.input_x_gradient, "input x gradient", "Shrikumar et al. 2016",
           "captum InputXGradient"),
    Method("smoothgrad", attribution.smoothgrad, "SmoothGrad", "Smilkov et al. 2017", "captum NoiseTunnel"),
    Method("integrated_gradients", attribution.integrated_gradients, "integrated gradients",
           "Sundararajan et al. 2017", "captum IntegratedGradients"),
    Method("gradient_shap", attribution.gradient_shap, "GradientSHAP", "Lundberg & Lee 2017",
           "captum GradientShap"),
    Method("gradcam", cam.gradcam, "Grad-CAM", "Selvaraju et al. 2017", "pytorch-grad-cam GradCAM",
           takes_layer=True, region=True),
    Method("gradcam++", cam.gradcam_plus_plus, "Grad-CAM++", "Chattopadhay et al. 2018",
           "pytorch-grad-cam GradCAMPlusPlus", takes_layer=True, region=True),
    Method("guided_gradcam", cam.guided_gradcam, "guided Grad-CAM", "Selvaraju et al. 2017",
           "captum GuidedGradCam", takes_layer=True),
    Method("scorecam", cam.scorecam, "Score-CAM", "Wang et al. 2020", "pytorch-grad-cam ScoreCAM",
           takes_layer=True, region=True),
    Method("ablationcam", cam.ablationcam, "Ablation-CAM", "Desai & Ramaswamy 2020",
           "pytorch-grad-cam AblationCAM", takes_layer=True, region=True),
    Method("layercam", cam.layercam, "LayerCAM", "Jiang et al. 2021", "pytorch-grad-cam LayerCAM",
           takes_layer=True, region=True),
    Method("xgradcam", cam.xgradcam, "XGrad-CAM", "Fu et al. 2020", "pytorch-grad-cam XGradCAM",
           takes_layer=True, region=True),
    Method("eigencam", cam.eigencam, "Eigen-CAM", "Muhammad & Yeasin 2020", "pytorch-grad-cam EigenCAM",
           takes_layer=True, region=True),
    Method("hirescam", cam.hirescam, "HiResCAM", "Draelos & Carin 2020", "pytorch-grad-cam HiResCAM",
           takes_layer=True, region=True),
    Method("occlusion", perturbation.occlusion, "occlusion", "Zeiler & Fergus 2014", "captum Occlusion",
           sized_options=_occlusion_window),
    # 1,000 masks and 500 coalitions keep the apps' calls to minutes on a CPU ResNet50; call the functions for more.
    Method("rise", perturbation.rise, "RISE", "Petsiuk et al. 2018", "xplique Rise", options={"masks": 1000},
           region=True),
    Method("feature_ablation", perturbation.feature_ablation, "feature ablation", "(captum)",
           "captum FeatureAblation", sized_options=_feature_grid),
    Method("kernel_shap", perturbation.kernel_shap, "KernelSHAP", "Lundberg & Lee 2017", "captum KernelShap",
           options={"samples": 500}, sized_options=_feature_grid),
)

METHODS: Mapping[str, Method] = types.MappingProxyType({method.name: method for method in _METHODS})


def method(name: str) -> Method:
  """The registered method called `name`, or a one-line error listing them."""
  if name not in METHODS:
    raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
  return METHODS[name]


def parse(names: Sequence[str]) -> Dict[str, Method]:
  """{name: Method} for a list of names (checked, in the order given; 'all' stands for every method)."""
  expanded = [name for entry in names for name in (METHODS if entry == "all" else (entry,))]
  return {name: method(name) for name in expanded}
