"""Whole-dataset explanations (explain.py --dataset): every image of a dataset through the explainers, in chunks of
one global batch sharded over every device of every process, each map written to `OUT/<method>.zarr` (a zarr array
through tensorstore, its first axis in the order of `OUT/images.txt`), per-image faithfulness in
`OUT/metrics.jsonl`, aggregates in `OUT/summary.json` and the best- and worst-explained images in
`OUT/summary.png`.

A job survives SIGKILL: the chunks are computed in order, and after a chunk's maps and metrics are written process
0 records it in `OUT/progress.json` (tmp + rename); a rerun starts after the last recorded chunk and gives the same
arrays. `OUT/run.json`, written first, says what the directory holds (dataset, images, model, methods, settings); a
rerun on a directory of another run is refused rather than mixed into it.

  summary = explain_dataset(report.load_workdir("runs/x"), "folder:data/train.zip", methods=["saliency",
                            "gradcam"], out_dir="runs/x/dataset")
"""
import concurrent.futures
import dataclasses
import hashlib
import json
import os
import tempfile
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from cnnjax import data as data_lib
from cnnjax import explain, viz
from cnnjax.apps import report
from cnnjax.data import streaming
from cnnjax.explain import registry
from cnnjax.train import sharding

RUN_FILE, PROGRESS_FILE, IMAGES_FILE = "run.json", "progress.json", "images.txt"
METRICS_FILE, SUMMARY_FILE, FIGURE_FILE = "metrics.jsonl", "summary.json", "summary.png"
# Written into every <method>.zarr beside zarr's own .zarray: the run the array belongs to (zarr's attributes file).
ZARR_ATTRIBUTES = ".zattrs"
TARGETS = ("top1", "label")  # besides a class index or name
EXTREMES = 4  # best- and worst-explained images per method in the summary figure


# --- reading: the one place that knows where images come from --------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Listing:
  """A dataset's images in a fixed order, and how to decode any run of them."""
  names: Tuple[str, ...]  # one per image: its path inside the folder or zip, or 'DATASET/SPLIT/RECORD' (tfds)
  class_names: Tuple[str, ...]
  # read(start, stop) -> (uint8 (n, S, S, C) images, int32 (n,) labels, bool (n,) decoded) of images [start, stop)
  read: Callable[[int, int], Tuple[np.ndarray, np.ndarray, np.ndarray]]


def open_dataset(dataset: str, *, image_size: int, channels: int, data_dir: Optional[str] = None,
                 limit_per_class: Optional[int] = None, split: str = "train") -> Listing:
  """The images of `dataset` (config.dataset's syntax), listed but not decoded: a folder or zip gives every image in
  a class subfolder (no validation split carved off), ordered by class then path as `cnnjax.data` lists them; a tfds
  dataset gives its `split` in its stored order (cnnjax.data.streaming.open_images). Images are decoded only when
  `read`, on the streaming reader's threads.
  """
  images, class_names = streaming.open_images(dataset, image_size=image_size, channels=channels, data_dir=data_dir,
                                              limit_per_class=limit_per_class, split=split)

  def read(start: int, stop: int):
    for chunk in streaming.read_chunks(images, max(stop - start, 1), start, stop):
      return chunk.images, chunk.labels, chunk.ok
    return np.zeros((0, *images.image_shape), np.uint8), np.zeros(0, np.int32), np.zeros(0, bool)

  return Listing(tuple(images.name(position) for position in range(len(images))), tuple(class_names), read)


# --- what each chunk computes -----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Metric:
  """A per-image faithfulness metric of `cnnjax.explain` as the dataset job records it."""
  function: Callable  # (model, variables, inputs, targets, maps) -> {key: (B,)}
  ranking: Callable  # a record's scores {key: value} -> how well explained (higher is better)


def _deletion_insertion(model, variables, inputs, targets, maps):
  scores = explain.deletion_insertion(model, variables, inputs, targets, maps)
  return {"deletion_auc": scores["deletion"], "insertion_auc": scores["insertion"]}


# Deletion / insertion (Petsiuk et al. 2018) cost 66 forwards per image; MuFidelity (Bhatt et al. 2020) 200 and
# infidelity (Yeh et al. 2019) 50, so they are asked for by name.
METRICS = {
    "deletion_insertion": Metric(_deletion_insertion,
                                 lambda scores: scores["insertion_auc"] - scores["deletion_auc"]),
    "mufidelity": Metric(lambda *args: {"mufidelity": explain.mufidelity(*args)},
                         lambda scores: scores["mufidelity"]),
    "infidelity": Metric(lambda *args: {"infidelity": explain.infidelity(*args)},
                         lambda scores: -scores["infidelity"]),
}


def parse_metrics(names: Sequence[str]) -> List[str]:
  """The metric names, checked; the first ranks the images in the summary."""
  names = [name.strip() for name in names if name.strip()]
  unknown = [name for name in names if name not in METRICS]
  if unknown or not names:
    raise ValueError(f"unknown metric(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(METRICS)}")
  return names


def target_rule(target: str, class_names: Sequence[str]):
  """'top1' (each image's prediction), 'label' (its dataset label) or a class index (from an index or a name)."""
  if target in TARGETS:
    return target
  try:
    return int(report.resolve_target(target, np.zeros((1, len(class_names))), class_names)[0])
  except ValueError as error:
    raise ValueError(f"{error}; or label (each image's dataset label)") from None


def chunk_program(source: report.ModelSource, methods: Sequence[str], metrics: Sequence[str],
                  layer: Optional[str], target, mesh) -> Callable:
  """One jitted call per chunk: (variables, uint8 images, labels, valid), the batch sharded on the mesh's `data`
  axis, -> every output replicated (so process 0 holds what it writes): predictions, targets, the target's
  probability, each method's maps and their metrics."""

  def compute(variables, images, labels, valid):
    inputs = data_lib.preprocess(images.astype(jnp.float32), **source.preprocess)
    logits = source.model.apply(variables, inputs, train=False)
    predictions = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    targets = {"top1": predictions, "label": labels}.get(target)
    if targets is None:
      targets = jnp.full(labels.shape, target, jnp.int32)
    probabilities = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    outputs = {"valid": valid, "label": labels, "prediction": predictions, "target": targets,
               "probability": jnp.take_along_axis(probabilities, targets[:, None], axis=1)[:, 0],
               "maps": {}, "scores": {}}
    for name in methods:
      maps = registry.METHODS[name](source.model, variables, inputs, targets, layer=layer)
      outputs["maps"][name] = maps.astype(jnp.float32)
      outputs["scores"][name] = {key: value for metric in metrics
                                 for key, value in METRICS[metric].function(source.model, variables, inputs,
                                                                            targets, maps).items()}
    return outputs

  replicated = sharding.replicated(mesh)
  batch = sharding.batch_sharded(mesh)
  return jax.jit(compute, in_shardings=(replicated, batch, batch, batch), out_shardings=replicated)


# --- the output directory -------------------------------------------------------------------------------------

def _write_atomically(path: str, text: str) -> None:
  """Whole or not at all: a reader (or a rerun after SIGKILL) never sees half a file."""
  handle, temporary = tempfile.mkstemp(dir=os.path.dirname(path), prefix=os.path.basename(path), suffix=".tmp")
  try:
    with os.fdopen(handle, "w") as file:
      file.write(text)
      file.flush()
      os.fsync(file.fileno())
    os.replace(temporary, path)
  except BaseException:
    if os.path.exists(temporary):
      os.remove(temporary)
    raise


def _read_json(path: str, what: str) -> Optional[Dict]:
  if not os.path.exists(path):
    return None
  try:
    with open(path) as file:
      return json.load(file)
  except (OSError, ValueError) as error:
    raise ValueError(f"cannot read {what} {path} ({error}); delete the directory or pass another --out") from None


def model_fingerprint(variables) -> str:
  """A hash of every variable's name, shape, dtype and bytes: another checkpoint is another run."""
  digest = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_leaves_with_path(variables):
    leaf = np.asarray(leaf)
    digest.update(f"{jax.tree_util.keystr(path)}:{leaf.shape}:{leaf.dtype}\n".encode())
    digest.update(leaf.tobytes())
  return digest.hexdigest()[:16]


def _manifest(listing: Listing, source: report.ModelSource, settings: Dict) -> Dict:
  names = "".join(name + "\n" for name in listing.names)
  return {**settings, "images": len(listing.names), "images_sha256": hashlib.sha256(names.encode()).hexdigest(),
          "image_size": source.image_size, "channels": source.channels, "preprocess": source.preprocess,
          "model": model_fingerprint(source.variables)}


def _run_key(manifest: Dict) -> str:
  return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:16]


def _check_same_run(out_dir: str, found: Dict, manifest: Dict) -> None:
  differing = sorted(key for key in set(found) | set(manifest) if found.get(key) != manifest.get(key))
  if differing:
    shown = ", ".join(f"{key} {found.get(key)!r} there, {manifest.get(key)!r} now" for key in differing[:3]
                      if key != "images_sha256")
    images = " (other images)" if "images_sha256" in differing else ""
    raise ValueError(f"{out_dir} holds explanations of another run{images}: {shown or 'image list differs'}; pass "
                     "another --out, or delete it to start over")


def _foreign_files(out_dir: str, methods: Sequence[str]) -> List[str]:
  ours = [RUN_FILE, PROGRESS_FILE, IMAGES_FILE, METRICS_FILE, SUMMARY_FILE] + [f"{m}.zarr" for m in methods]
  return [name for name in ours if os.path.exists(os.path.join(out_dir, name))]


def _zarr_spec(path: str) -> Dict:
  return {"driver": "zarr", "kvstore": {"driver": "file", "path": os.path.abspath(path)}}


def _open_store(out_dir: str, method: str, shape: Tuple[int, ...], chunk_rows: int, key: str):
  """OUT/<method>.zarr: float32 `shape`, NaN until written, one zarr chunk per global batch; its attributes name
  the run, written before the array so that a store without them is never taken for this run's."""
  import tensorstore  # pylint: disable=import-outside-toplevel  (installed with orbax; only process 0 writes)

  path = os.path.join(out_dir, f"{method}.zarr")
  attributes = os.path.join(path, ZARR_ATTRIBUTES)
  if os.path.exists(path):
    found = _read_json(attributes, "the zarr attributes") or {}
    if found.get("cnnjax_run") != key:
      raise ValueError(f"{path} is a zarr store of another run (its {ZARR_ATTRIBUTES} names run "
                       f"{found.get('cnnjax_run')!r}, not {key!r}); pass another --out, or delete it to start over")
  else:
    os.makedirs(path)
    _write_atomically(attributes, json.dumps({"cnnjax_run": key, "method": method, "images": IMAGES_FILE}))
  metadata = {"shape": list(shape), "chunks": [chunk_rows, *shape[1:]], "dtype": "<f4", "fill_value": "NaN"}
  try:
    return tensorstore.open({**_zarr_spec(path), "metadata": metadata}, create=True, open=True).result()
  except ValueError as error:  # another shape or dtype than this run's
    raise ValueError(f"{path} does not hold this run's {tuple(shape)} float32 maps "
                     f"({str(error).splitlines()[0][:200]}); pass another --out, or delete it") from None


def read_maps(out_dir: str, method: str) -> np.ndarray:
  """The whole OUT/<method>.zarr array (NaN rows: not yet computed, or images that failed to decode)."""
  import tensorstore  # pylint: disable=import-outside-toplevel
  return np.asarray(tensorstore.open(_zarr_spec(os.path.join(out_dir, f"{method}.zarr")), open=True).result()
                    .read().result())


class _Writer:
  """Process 0's side of the output directory: prepares it, then appends chunk after chunk."""

  def __init__(self, out_dir: str, listing: Listing, manifest: Dict, shapes: Dict[str, Tuple[int, ...]],
               batch_size: int):
    self.out_dir, self.listing, self.batch_size = out_dir, listing, batch_size
    self.key = _run_key(manifest)
    found = _read_json(os.path.join(out_dir, RUN_FILE), "the run description")
    if found is not None:
      _check_same_run(out_dir, found, manifest)
    elif _foreign_files(out_dir, manifest["methods"]):
      raise ValueError(f"{out_dir} holds {', '.join(_foreign_files(out_dir, manifest['methods']))} but no "
                       f"{RUN_FILE}: files of another run or tool; pass another --out, or delete them")
    try:
      os.makedirs(out_dir, exist_ok=True)
      if found is None:  # first: what the directory holds, so that a rerun after a kill recognises it
        _write_atomically(os.path.join(out_dir, RUN_FILE), json.dumps(manifest, indent=2, sort_keys=True))
      _write_atomically(os.path.join(out_dir, IMAGES_FILE), "".join(name + "\n" for name in listing.names))
      self.stores = {method: _open_store(out_dir, method, shape, batch_size, self.key)
                     for method, shape in shapes.items()}
      self.done = self._done_chunks()
    except OSError as error:
      raise ValueError(f"cannot write to --out {out_dir} ({error.strerror or error}: {error.filename or out_dir}); "
                       "pass a writable directory") from None

  def _done_chunks(self) -> int:
    """Chunks recorded done; metrics.jsonl cut back to their lines (a kill after a chunk's lines were appended but
    before it was recorded leaves them; the chunk is recomputed)."""
    progress = _read_json(os.path.join(self.out_dir, PROGRESS_FILE), "the progress record") or {
        "run": self.key, "chunks_done": 0}
    if progress.get("run") != self.key:
      raise ValueError(f"{self.out_dir}/{PROGRESS_FILE} belongs to another run; pass another --out, or delete it")
    done = int(progress["chunks_done"])
    expected = min(done * self.batch_size, len(self.listing.names))
    path = os.path.join(self.out_dir, METRICS_FILE)
    lines = []
    if os.path.exists(path):
      with open(path) as file:
        lines = [line for line in file.readlines() if line.endswith("\n")][:expected]
    if len(lines) < expected:
      raise ValueError(f"{path} has {len(lines)} lines but {PROGRESS_FILE} records {expected} images done; delete "
                       f"{self.out_dir} to start over")
    _write_atomically(path, "".join(lines))
    return done

  def write(self, chunk: int, outputs: Dict) -> None:
    start = chunk * self.batch_size
    stop = min(start + self.batch_size, len(self.listing.names))
    valid = outputs["valid"][:stop - start]
    writes = []
    for method, store in self.stores.items():
      maps = np.array(outputs["maps"][method][:stop - start])
      maps[~valid] = np.nan  # padding is cut off; images that failed to decode have no map
      writes.append(store[start:stop].write(maps))
    for write in writes:
      write.result()
    records = [_record(index, self.listing.names[index], outputs, index - start) for index in range(start, stop)]
    with open(os.path.join(self.out_dir, METRICS_FILE), "a") as file:
      file.write("".join(json.dumps(record) + "\n" for record in records))
      file.flush()
      os.fsync(file.fileno())
    self.record_progress(chunk + 1)

  def record_progress(self, done: int) -> None:
    _write_atomically(os.path.join(self.out_dir, PROGRESS_FILE), json.dumps({"run": self.key, "chunks_done": done}))


def _record(index: int, name: str, outputs: Dict, row: int) -> Dict:
  """One metrics.jsonl line: the image, its label, prediction, target and each method's scores."""
  record = {"index": index, "path": name, "label": int(outputs["label"][row]), "decoded": bool(outputs["valid"][row])}
  if record["decoded"]:
    record.update(prediction=int(outputs["prediction"][row]), target=int(outputs["target"][row]),
                  probability=float(outputs["probability"][row]),
                  methods={method: {key: float(values[row]) for key, values in scores.items()}
                           for method, scores in outputs["scores"].items()})
  return record


# --- the job ----------------------------------------------------------------------------------------------------

def _local_share(listing: Listing, chunk: int, batch_size: int, image_shape: Tuple[int, ...]) -> Dict[str, np.ndarray]:
  """This process's contiguous share of a chunk (one global batch), padded past the last image."""
  share = batch_size // jax.process_count()
  first = chunk * batch_size + jax.process_index() * share
  start, stop = min(first, len(listing.names)), min(first + share, len(listing.names))
  padded = {"images": np.zeros((share, *image_shape), np.uint8), "labels": np.zeros(share, np.int32),
            "valid": np.zeros(share, bool)}
  if stop > start:
    images, labels, decoded = listing.read(start, stop)
    padded["images"][:stop - start], padded["labels"][:stop - start], padded["valid"][:stop - start] = (
        images, labels, decoded)
  return padded


def _agree(value: int) -> int:
  """Process 0's value on every process (one collective; a no-op in a single process)."""
  if jax.process_count() == 1:
    return value
  return int(multihost_utils.broadcast_one_to_all(np.int32(value)))


def explain_dataset(source: report.ModelSource, dataset: str, *, methods: Sequence[str], out_dir: str,
                    batch_size: int = 64, metrics: Sequence[str] = ("deletion_insertion",), target: str = "top1",
                    layer: Optional[str] = None, data_dir: Optional[str] = None,
                    limit_per_class: Optional[int] = None, split: str = "train", print_fn=print) -> Dict:
  """Explains every image of `dataset` with `methods`, writing `out_dir` as the module docstring says.

  Args:
    source: the model (`report.load_source`). dataset: config.dataset's syntax ('folder:PATH' for a directory or a
      .zip of class subfolders, or a tfds name; `split` picks a tfds split). methods: names of
      `cnnjax.explain.registry` ('all' for every one).
    batch_size: images per chunk, one global batch sharded over every device of every process (a multiple of
      jax.device_count()); each zarr chunk holds one. A rerun must use the same.
    metrics: names of METRICS per image and method; the first ranks the images in the summary.
    target: 'top1' (each image's prediction), 'label' (its dataset label, for a model trained on these classes), or
      a class index or name.
    layer: the CAMs' layer (default: the last spatial feature map).
    limit_per_class: only the first N images of each class (tfds: reads every record's label first).
  Returns:
    {'summary': summary.json's content (process 0; None elsewhere), 'computed_chunks', 'chunk_seconds': seconds of
    each chunk this call computed (the first includes compilation)}.
  """
  methods = list(registry.parse(methods))
  metrics = parse_metrics(metrics)
  rule = target_rule(target, source.class_names)
  if not isinstance(batch_size, (int, np.integer)) or batch_size < 1 or batch_size % jax.device_count():
    raise ValueError(f"batch_size must be a positive multiple of the {jax.device_count()} devices (of "
                     f"{jax.process_count()} process(es)); got {batch_size!r}")
  listing = open_dataset(dataset, image_size=source.image_size, channels=source.channels, data_dir=data_dir,
                         limit_per_class=limit_per_class, split=split)
  if not listing.names:
    raise ValueError(f"{dataset} has no images")
  if rule == "label" and tuple(listing.class_names) != tuple(source.class_names):
    raise ValueError(f"--target label needs the dataset's classes to be the model's: {dataset} has "
                     f"{len(listing.class_names)} ({', '.join(listing.class_names[:5])}, ...), the model "
                     f"{len(source.class_names)} ({', '.join(source.class_names[:5])}, ...); use top1 or a class")
  mesh = sharding.data_mesh()
  program = chunk_program(source, methods, metrics, layer, rule, mesh)
  image_shape = (source.image_size, source.image_size, source.channels)
  abstract = jax.eval_shape(program, source.variables, jax.ShapeDtypeStruct((batch_size, *image_shape), jnp.uint8),
                            jax.ShapeDtypeStruct((batch_size,), jnp.int32), jax.ShapeDtypeStruct((batch_size,), bool))
  count = len(listing.names)
  manifest = _manifest(listing, source, {"dataset": dataset, "split": split, "limit_per_class": limit_per_class,
                                         "methods": methods, "metrics": metrics, "target": target, "layer": layer,
                                         "batch_size": int(batch_size)})
  writer, failure = None, None
  if jax.process_index() == 0:
    try:
      writer = _Writer(out_dir, listing, manifest,
                       {name: (count, *abstract["maps"][name].shape[1:]) for name in methods}, batch_size)
    except ValueError as error:
      failure = error
  done = _agree(-1 if failure else writer.done if writer else 0)
  if failure:
    raise failure
  if done < 0:
    raise ValueError(f"process 0 could not prepare {out_dir}; see its error")

  chunks = -(-count // batch_size)
  # From host memory: restored variables sit on one local device, and moving those to another host's devices
  # would be a cross-host transfer.
  variables = jax.device_put(jax.tree_util.tree_map(np.asarray, source.variables), sharding.replicated(mesh))
  batch = sharding.batch_sharded(mesh)
  seconds = []
  with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="cnnjax-read") as reader:
    # The next chunk is decoded while this one computes.
    read = lambda chunk: reader.submit(_local_share, listing, chunk, batch_size, image_shape)
    pending = read(done) if done < chunks else None
    for chunk in range(done, chunks):
      started = time.perf_counter()
      share = pending.result()
      pending = read(chunk + 1) if chunk + 1 < chunks else None
      arrays = sharding.global_batch(share, batch)
      outputs = jax.device_get(program(variables, arrays["images"], arrays["labels"], arrays["valid"]))
      if writer:
        try:
          writer.write(chunk, outputs)
        except OSError as error:  # a full disk: what progress.json records is whole, the rest is recomputed
          raise ValueError(f"cannot write to --out {out_dir} ({error.strerror or error}: {error.filename}); "
                           f"free space and rerun: it resumes after the {chunk} chunks done") from None
      seconds.append(time.perf_counter() - started)
      if writer and (chunk + 1 == chunks or (chunk - done) % max(1, chunks // 10) == 0):
        print_fn(f"chunk {chunk + 1}/{chunks}: {min((chunk + 1) * batch_size, count)} of {count} images")
  summary = None
  if writer:
    summary = summarise(out_dir, listing, methods, metrics, writer.stores, manifest)
    print_fn(f"wrote {out_dir}/{{{', '.join(f'{m}.zarr' for m in methods)}, {METRICS_FILE}, {SUMMARY_FILE}, "
             f"{FIGURE_FILE}}}")
  return {"summary": summary, "computed_chunks": chunks - done, "chunk_seconds": seconds}


# --- the summary ------------------------------------------------------------------------------------------------

def _statistics(values: Sequence[float]) -> Dict[str, float]:
  values = np.asarray(values, np.float64)
  return {"mean": float(np.mean(values)), "std": float(np.std(values)), "median": float(np.median(values)),
          "min": float(np.min(values)), "max": float(np.max(values))}


def read_records(out_dir: str) -> List[Dict]:
  """OUT/metrics.jsonl, one dict per image in images.txt's order."""
  with open(os.path.join(out_dir, METRICS_FILE)) as file:
    return [json.loads(line) for line in file]


def summarise(out_dir: str, listing: Listing, methods: Sequence[str], metrics: Sequence[str], stores: Dict,
              manifest: Dict) -> Dict:
  """summary.json (per method: each metric's mean, std, median, min and max over the decoded images, and the
  best- and worst-explained images by the first metric's ranking) and summary.png; returns the summary."""
  records = read_records(out_dir)
  decoded = [record for record in records if record["decoded"]]
  summary = {"dataset": manifest["dataset"], "images": len(records), "decoded": len(decoded),
             "failed_to_decode": [record["path"] for record in records if not record["decoded"]],
             "accuracy": float(np.mean([r["prediction"] == r["label"] for r in decoded])) if decoded else None,
             "target": manifest["target"], "ranked_by": metrics[0], "methods": {}}
  ranking = METRICS[metrics[0]].ranking
  rows = []
  for method in methods:
    if not decoded:
      break
    scores = [record["methods"][method] for record in decoded]
    ordered = sorted(decoded, key=lambda record: (-ranking(record["methods"][method]), record["index"]))
    extremes = {"best": ordered[:EXTREMES], "worst": ordered[::-1][:EXTREMES]}
    summary["methods"][method] = {**{key: _statistics([s[key] for s in scores]) for key in scores[0]},
                                  **{kind: [record["path"] for record in chosen]
                                     for kind, chosen in extremes.items()}}
    for kind, chosen in extremes.items():
      tiles = []
      for record in chosen:
        image = listing.read(record["index"], record["index"] + 1)[0][0]
        maps = np.asarray(stores[method][record["index"]].read().result())
        tiles.append((image, maps, f"{record['path'][-28:]}\n{ranking(record['methods'][method]):+.3f}"))
      rows.append((f"{registry.METHODS[method].title}: {kind}", method, tiles))
  if rows:
    viz.ranked_explanations_figure(rows, path=os.path.join(out_dir, FIGURE_FILE),
                                   title=f"best- and worst-explained images by {metrics[0]} ({summary['images']} "
                                         f"images of {manifest['dataset']})")
  _write_atomically(os.path.join(out_dir, SUMMARY_FILE), json.dumps(summary, indent=2))
  return summary
