"""What explain.py does, as functions: load a run or a weight file and photos, pick targets, run the explainers,
write PNGs."""
import dataclasses
import functools
import glob
import json
import os
import pathlib
from typing import Any, BinaryIO, Dict, List, Optional, Sequence, Tuple, Union

import flax
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from cnnjax import data as data_lib
from cnnjax import explain, pretrained, train, viz
from cnnjax.explain import registry
from cnnjax.data import sources
from cnnjax.train import experiment

# Beyond the registry's explainers: what else a report can draw or score.
OTHER_METHODS = ("activations", "maximize", "deletion")
MAXIMIZED_CHANNELS = 16  # `maximize` with a --layer draws its first channels, at most this many
METHODS = tuple(registry.METHODS) + OTHER_METHODS


# Input side of imported models whose source does not fix it: CIFAR ResNets, and the tutorials' full Keras models
# (CIFAR-10 CNNs); every other source is an ImageNet architecture at 224x224.
_IMPORTED_IMAGE_SIZES = {"torch:resnet_cifar": 32, "keras:model": 32}
_IMAGENET_CLASSES = 1000


@dataclasses.dataclass(frozen=True)
class ModelSource:
  """A model ready to explain and what its inputs and outputs mean."""
  model: Any  # flax.linen.Module returning logits
  variables: Any
  class_names: Tuple[str, ...]
  preprocess: Dict[str, Any]  # keyword arguments of cnnjax.data.preprocess
  image_size: int
  channels: int


def load_workdir(workdir: str) -> ModelSource:
  """The best checkpoint of a train.py run, with the run's class names and preprocessing."""
  model, variables, config = train.restore(workdir)
  return ModelSource(model, variables, tuple(config.class_names), experiment.preprocess_settings(config),
                     config.image_size, config.channels)


def load_weights(path: str, image_size: Optional[int] = None) -> ModelSource:
  """An imported weight file (`cnnjax.pretrained.load`): ImageNet class names for 1000 outputs, else indices."""
  source = pretrained.source_of(path)
  model, variables = pretrained.load(path)
  image_size = image_size or _IMPORTED_IMAGE_SIZES.get(source, 224)
  try:  # abstract evaluation: checks the input size against the weights without computing anything
    logits = jax.eval_shape(functools.partial(model.apply, train=False), variables,
                            jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32))
  except (ValueError, TypeError, flax.errors.FlaxError) as error:
    raise ValueError(f"{path} does not take {image_size}x{image_size} RGB inputs ({str(error).splitlines()[0]}); "
                     f"pass --image_size") from None
  outputs = logits.shape[-1]
  if outputs == _IMAGENET_CLASSES:
    class_names = pretrained.imagenet_class_names()
  else:  # the file does not name its classes; targets are then given by index
    class_names = [str(index) for index in range(outputs)]
  return ModelSource(model, variables, tuple(class_names), {"mode": pretrained.preprocessing_for(source)},
                     image_size, 3)


def parse_methods(text: str) -> List[str]:
  """The --methods list, checked before any model loads so a typo costs no restore or compilation."""
  methods = [name.strip() for name in text.split(",") if name.strip()]
  methods = [name for entry in methods for name in (registry.METHODS if entry == "all" else (entry,))]
  unknown = [name for name in methods if name not in METHODS]
  if unknown or not methods:
    raise ValueError(f"unknown method(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(METHODS)} "
                     "(or all)")
  return methods


def methods_table() -> str:
  """Every --methods name: the registry's explainers (paper, peer), then the report's other outputs."""
  rows = [f"{m.name:22} {m.title:22} {m.paper:26} {m.peer}" for m in registry.METHODS.values()]
  rows += [f"{name:22} {description}" for name, description in (
      ("activations", "the --layer's feature maps"),
      ("maximize", "an input maximising the target class (with --layer: a grid of its first channels too)"),
      ("deletion", "deletion/insertion AUCs of the other maps (deletion.json)"))]
  return "\n".join(rows)


def load_source(workdir: Optional[str], weights: Optional[str], image_size: Optional[int] = None) -> ModelSource:
  """The model of a train.py workdir or of a weight file, whichever is given (exactly one)."""
  if (workdir is None) == (weights is None):
    raise ValueError("pass either --workdir RUN_DIR or --weights FILE")
  if workdir is None:
    return load_weights(weights, image_size)
  if image_size is not None:
    raise ValueError("--image_size is for --weights; a workdir's config fixes the input size")
  return load_workdir(workdir)


class ImageTooLargeError(ValueError):
  """An image with more pixels than the caller allows (a web server answers 413 rather than 400)."""


def decode_image(file: Union[str, BinaryIO], image_size: int, channels: int, name: str,
                 max_pixels: Optional[int] = None) -> np.ndarray:
  """uint8 (S, S, C) from an image file (path or file object), resized as the training data was.

  `max_pixels` bounds the decoded size: the header is checked before any pixel is decoded, so a small file that
  expands to gigabytes (a decompression bomb) is refused cheaply.
  """
  try:
    with Image.open(file) as image:
      if max_pixels is not None and image.width * image.height > max_pixels:
        raise ImageTooLargeError(f"{name} is {image.width}x{image.height} pixels; the limit is "
                                 f"{max_pixels / 1e6:g} megapixels")
      image.load()
      return sources.to_array(image, image_size, channels)
  except ImageTooLargeError:
    raise
  except Image.DecompressionBombError as error:  # Pillow's own, larger, limit
    raise ImageTooLargeError(f"cannot decode {name}: {error}") from None
  except Image.UnidentifiedImageError:  # its message shows the file object, not the file
    raise ValueError(f"cannot decode {name} as an image (not a format Pillow reads)") from None
  except (OSError, ValueError, SyntaxError) as error:
    raise ValueError(f"cannot decode {name} as an image ({error})") from None


def image_paths(items: Sequence[str]) -> List[str]:
  """The image files that --images items name, each once, in the order given.

  A file is taken as given; a folder gives the image files directly inside it, sorted; a glob ('photos/*.jpg',
  quoted so that the program rather than the shell expands it) gives its matching image files, sorted.
  """
  paths = {}  # absolute path -> the path as given, so ./a.jpg and a.jpg are one image
  for item in items:
    for path in _expand_image_item(os.path.expanduser(item)):
      paths.setdefault(os.path.abspath(path), path)
  return list(paths.values())


def _expand_image_item(item: str) -> List[str]:
  if os.path.isfile(item):
    return [item]
  if os.path.isdir(item):
    found, what = _image_files(glob.glob(os.path.join(glob.escape(item), "*"))), f"folder {item!r} holds"
  elif glob.has_magic(item):
    found, what = _image_files(glob.glob(item)), f"{item!r} matches"
  else:
    raise ValueError(f"image {item!r} does not exist")
  if not found:
    raise ValueError(f"{what} no image files ({', '.join(sources.IMAGE_EXTENSIONS)})")
  return found


def _image_files(paths: Sequence[str]) -> List[str]:
  """The image files among a folder's or a glob's matches, sorted (glob already leaves out hidden files, such as
  macOS's ._x.jpg)."""
  return sorted(path for path in paths if path.lower().endswith(sources.IMAGE_EXTENSIONS) and os.path.isfile(path))


def load_images(paths: Sequence[str], image_size: int, channels: int) -> np.ndarray:
  """uint8 (N, S, S, C) from image files, resized as the training data was."""
  if not paths:
    raise ValueError("no images given; pass --images a.jpg b.png, a folder or a quoted glob ('photos/*.jpg')")
  arrays = []
  for path in paths:
    if not os.path.isfile(path):
      raise ValueError(f"image {path!r} does not exist")
    arrays.append(decode_image(path, image_size, channels, repr(path)))
  return np.stack(arrays)


def resolve_target(target: str, logits: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
  """'top1' (each image's prediction), a class index, or a class name (or its first comma-separated part)."""
  if target == "top1":
    return np.argmax(logits, axis=-1).astype(np.int32)
  if target.lstrip("-").isdigit():
    index = int(target)
    if not 0 <= index < len(class_names):
      raise ValueError(f"target {index} is out of range: the model has {len(class_names)} classes (0..."
                       f"{len(class_names) - 1})")
  else:
    wanted = target.strip().lower()
    matches = [i for i, name in enumerate(class_names)
               if wanted in (name.lower(), name.split(",")[0].strip().lower())]
    if not matches:
      shown = ", ".join(class_names[:20]) + (", ..." if len(class_names) > 20 else "")
      raise ValueError(f"unknown target class {target!r}; use top1, an index, or one of: {shown}")
    index = matches[0]
  return np.full(len(logits), index, np.int32)


def top_predictions(logits: np.ndarray, class_names: Sequence[str], k: int = 5) -> List[List[Tuple[str, float]]]:
  """Each image's k most probable classes as (name, probability): what the model thinks it sees."""
  probabilities = np.asarray(jax.nn.softmax(jnp.asarray(logits, jnp.float32), axis=-1))
  order = np.argsort(-probabilities, axis=-1)[:, :k]
  return [[(class_names[i], float(row[i])) for i in indices] for row, indices in zip(probabilities, order)]


def explanation_maps(model, variables, inputs, targets, methods: Sequence[str],
                     layer: Optional[str]) -> Dict[str, np.ndarray]:
  """Every requested map for the whole batch, each method one jitted batched call."""
  return {name: np.asarray(registry.METHODS[name](model, variables, inputs, targets, layer=layer))
          for name in methods if name in registry.METHODS}


def run(source: ModelSource, image_paths: Sequence[str], *, methods: Sequence[str], target: str,
        layer: Optional[str], out_dir: str, print_fn=print) -> Dict:
  """Explains every image for `target` with `methods`; writes figures into out_dir and returns a summary."""
  os.makedirs(out_dir, exist_ok=True)
  images = load_images(image_paths, source.image_size, source.channels)
  inputs = data_lib.preprocess(jnp.asarray(images, jnp.float32), **source.preprocess)
  logits = np.asarray(source.model.apply(source.variables, inputs, train=False))
  if logits.shape[-1] != len(source.class_names):
    raise ValueError(f"the model has {logits.shape[-1]} outputs but {len(source.class_names)} class names were "
                     f"given")
  targets = resolve_target(target, logits, source.class_names)
  predictions = top_predictions(logits, source.class_names)
  target_names = [source.class_names[index] for index in targets]
  summary = {"images": {}, "files": []}
  for path, top, target_name in zip(image_paths, predictions, target_names):
    print_fn(f"{path}: " + ", ".join(f"{name} {probability:.3f}" for name, probability in top))
    summary["images"][path] = {"top5": top, "target": target_name}

  maps = explanation_maps(source.model, source.variables, inputs, jnp.asarray(targets), methods, layer)
  if maps:
    titles = [f"predicted: {top[0][0]} ({top[0][1]:.2f}) | target: {target_name}"
              for top, target_name in zip(predictions, target_names)]
    summary["files"] += _write_figures(images, image_paths, maps, titles, out_dir)
  if "activations" in methods:
    summary["files"] += _write_activations(source, inputs, image_paths, layer, out_dir)
  if "maximize" in methods:
    summary["files"] += _write_maximized(source, targets, inputs.shape[1:], layer, out_dir)
  if "deletion" in methods:
    summary["deletion"] = _deletion_scores(source, inputs, targets, maps, image_paths, out_dir)
    summary["files"].append(os.path.join(out_dir, "deletion.json"))
  for file in summary["files"]:
    print_fn(f"wrote {file}")
  return summary


def output_stems(paths: Sequence[str]) -> List[str]:
  """The prefix of every file written for each image, one per path and all different, so no figure overwrites
  another: the file name without its suffix, lengthened only where inputs would share it (a/cat.jpg, b/cat.jpg ->
  a_cat, b_cat; cat.jpg, cat.png -> cat_jpg, cat_png); the same file given twice is numbered (x, x_2). Names are
  compared ignoring case, as macOS's and Windows' file systems do."""
  levels = [0] * len(paths)
  while True:
    names = [_output_stem(path, level) for path, level in zip(paths, levels)]
    growable = [i for group in _clashes(names) if len({_file_key(paths[i]) for i in group}) > 1
                for i in group if levels[i] < _max_level(paths[i])]
    if not growable:
      return _numbered(names)
    for i in growable:
      levels[i] += 1


def _file_key(path: str) -> str:
  return os.path.abspath(path).casefold()


def _output_stem(path: str, level: int) -> str:
  """Level 0: the stem; odd levels add the extension; every second level one more parent folder."""
  *folders, name = pathlib.Path(os.path.abspath(path)).parts[1:]
  stem, suffix = os.path.splitext(name)
  parents = folders[len(folders) - level // 2:] if level // 2 else []
  return "_".join([*parents, stem] + ([suffix[1:]] if level % 2 and suffix else []))


def _max_level(path: str) -> int:
  return 2 * (len(pathlib.Path(os.path.abspath(path)).parts) - 2) + 1


def _clashes(names: Sequence[str]) -> List[List[int]]:
  """Groups of the indices of names that are equal, ignoring case."""
  groups = {}
  for i, name in enumerate(names):
    groups.setdefault(name.casefold(), []).append(i)
  return [group for group in groups.values() if len(group) > 1]


def _numbered(names: Sequence[str]) -> List[str]:
  seen = {}
  numbered = []
  for name in names:
    count = seen[name.casefold()] = seen.get(name.casefold(), 0) + 1
    numbered.append(name if count == 1 else f"{name}_{count}")
  return numbered


def _write_figures(images, image_paths, maps, titles, out_dir) -> List[str]:
  """One figure per image: the input and every map side by side, so the methods can be compared at a glance."""
  files = []
  for index, (path, title, stem) in enumerate(zip(image_paths, titles, output_stems(image_paths))):
    file = os.path.join(out_dir, f"{stem}_explanations.png")
    viz.explanation_figure(images[index], {name: value[index] for name, value in maps.items()}, title, path=file)
    files.append(file)
  return files


def _feature_maps(source: ModelSource, inputs, layer) -> np.ndarray:
  """(B, h, w, C) outputs of `layer`; one line if it has none (activations and maximize draw feature maps)."""
  values = np.asarray(explain.activations(source.model, source.variables, inputs, [layer])[layer])
  if values.ndim != 4:
    raise ValueError(f"layer {layer!r} has output shape {values.shape[1:]}, not a feature map; pick a conv layer")
  return values


def _write_activations(source: ModelSource, inputs, image_paths, layer, out_dir) -> List[str]:
  if layer is None:
    raise ValueError("--methods activations needs --layer NAME (see cnnjax.explain.layer_names)")
  values = _feature_maps(source, inputs, layer)
  files = []
  for index, (path, stem) in enumerate(zip(image_paths, output_stems(image_paths))):
    file = os.path.join(out_dir, f"{stem}_{layer}_activations.png")
    viz.activation_grid(values[index], path=file, title=f"{layer} on {os.path.basename(path)}")
    files.append(file)
  return files


def _write_maximized(source: ModelSource, targets, input_shape, layer, out_dir) -> List[str]:
  """The target classes' feature visualizations and their gallery; with a --layer, a grid of its first channels."""
  # lucid's recipe (explain/maximize.py): [0, 1] pixels through the run's own preprocessing into the model.
  draw = functools.partial(explain.maximize_activation, source.model, source.variables, input_shape=input_shape,
                           return_pixels=True, preprocess=functools.partial(data_lib.preprocess, **source.preprocess),
                           colour="imagenet" if input_shape[-1] == 3 else None)
  if layer is not None:  # checked before minutes of drawing
    count = _feature_maps(source, jnp.zeros((1, *input_shape)), layer).shape[-1]
    channels = list(range(min(MAXIMIZED_CHANNELS, count)))
  classes = sorted(set(int(t) for t in targets))
  pixels = np.asarray(draw(classes))
  files = []
  for image, index in zip(pixels, classes):
    name = source.class_names[index].split(",")[0].strip().replace(" ", "_").replace("/", "_")
    file = os.path.join(out_dir, f"maximize_{index}_{name}.png")
    Image.fromarray(np.uint8(np.round(255 * (image.squeeze(-1) if image.shape[-1] == 1 else image)))).save(file)
    files.append(file)
  if len(classes) > 1:
    file = os.path.join(out_dir, "maximize_gallery.png")
    viz.class_gallery(pixels, [source.class_names[index] for index in classes], path=file)
    files.append(file)
  if layer is not None:
    file = os.path.join(out_dir, f"maximize_{layer}_channels.png")
    viz.channel_grid(np.asarray(draw(layer=layer, filters=channels)), layer, channels, path=file)
    files.append(file)
  return files


def _deletion_scores(source: ModelSource, inputs, targets, maps, image_paths, out_dir) -> Dict:
  if not maps:
    raise ValueError("--methods deletion scores other maps: add e.g. saliency,gradcam to --methods")
  scores = {}
  for name, value in maps.items():
    result = explain.deletion_insertion(source.model, source.variables, inputs, jnp.asarray(targets), value)
    scores[name] = {path: {"deletion_auc": float(d), "insertion_auc": float(i)}
                    for path, d, i in zip(image_paths, np.asarray(result["deletion"]),
                                          np.asarray(result["insertion"]))}
  with open(os.path.join(out_dir, "deletion.json"), "w") as f:
    json.dump(scores, f, indent=2)
  return scores
