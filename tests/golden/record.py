"""Golden runs: what training, the LR finder, transfer learning and every explainer computed before the #13
redesign, so that tests/test_golden.py can check that behaviour did not change.

  python tests/golden/record.py   # rewrites tests/golden/golden.json and tests/golden/explainers.npz

Run it only when a change of numbers is intended (and say so in the commit). golden.json's "notes" say which
entries were recorded later than the rest, and why. It runs with the tests' four virtual
CPU devices and uses public entry points only (train_and_evaluate, lr_find, cnnjax.explain, cnnjax.pretrained),
so the same functions measure the code before and after a refactor. Each run is small: a few hundred images
from ../shared (limit_per_class), steps capped, so the whole record takes about two minutes on two cores.
"""
import json
import os
import sys
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SHARED = REPO.parent / "shared"
if __name__ == "__main__":
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()
  sys.path.insert(0, str(REPO))

import io  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

CIFAR_ZIP = SHARED / "data" / "cifar10_jpeg" / "train.zip"
CATDOG_ZIP = SHARED / "data" / "cats_vs_dogs" / "train.zip"
MOBILENET = SHARED / "weights" / "mobilenet" / "mobilenet_2_5_224_tf.h5"
RESNET20 = SHARED / "weights" / "resnet_cifar" / "resnet20-12fca82f.npz"
# The numbers a run reports, compared to 2e-3; per-epoch records and the final evaluation.
HISTORY_KEYS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "learning_rate", "step")
EVAL_KEYS = ("loss", "accuracy", "count")


def _numbers(record, keys):
  return {key: record[key] for key in keys if key in record}


def _read_run(workdir: Path) -> dict:
  history = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  evaluation = json.loads((workdir / "eval.json").read_text())
  return {"history": [_numbers(record, HISTORY_KEYS) for record in history],
          "eval": _numbers(evaluation, EVAL_KEYS)}


def _cifar_config(model: str):
  from configs import simple_cnn, simple_cnn_bn
  config = (simple_cnn if model == "simple_cnn" else simple_cnn_bn).get_config()
  config.update(dataset=f"folder:{CIFAR_ZIP}", limit_per_class=80, num_epochs=2, steps_per_epoch=20,
                batch_size=32, eval_batch_size=64)
  return config


def training_runs(root: Path) -> dict:
  """metrics.jsonl / eval.json of simple_cnn and simple_cnn_bn (2 epochs x 20 steps, batch 32)."""
  from cnnjax import train
  results = {}
  for model in ("simple_cnn", "simple_cnn_bn"):
    train.train_and_evaluate(_cifar_config(model), str(root / model))
    results[model] = _read_run(root / model)
  return results


def lr_find_run(root: Path) -> dict:
  from cnnjax import train
  result = train.lr_find(_cifar_config("simple_cnn"), str(root / "lr_find"), steps=30)
  return {key: result[key] for key in ("lrs", "losses", "smoothed_losses", "suggestion", "stopped")}


def _catdog_config(name: str):
  from configs import mobilenet_catdog, mobilenet_catdog_finetune
  config = (mobilenet_catdog_finetune if name == "finetune" else mobilenet_catdog).get_config()
  config.update(dataset=f"folder:{CATDOG_ZIP}", pretrained=str(MOBILENET), image_size=128, limit_per_class=24,
                batch_size=8, eval_batch_size=16, steps_per_epoch=3, num_epochs=2)
  if name == "bottleneck_no_dropout":  # pins everything of the head's run but its dropout stream
    config.bottleneck.dropout = (0.0, 0.0)
  if name == "finetune":
    config.phases = tuple(dict(phase, num_epochs=1) for phase in config.phases)
  return config


def transfer_runs(root: Path) -> dict:
  """The MobileNet bottleneck run and the two-phase fine-tune, each with capped steps."""
  from cnnjax import train
  results = {}
  for name in ("bottleneck", "bottleneck_no_dropout"):
    train.train_and_evaluate(_catdog_config(name), str(root / name))
    results[name] = _read_run(root / name)
  train.train_and_evaluate(_catdog_config("finetune"), str(root / "finetune"))
  results["finetune"] = {f"phase{index}": _read_run(root / "finetune" / f"phase{index}") for index in (1, 2)}
  results["finetune"]["eval"] = _numbers(json.loads((root / "finetune" / "eval.json").read_text()), EVAL_KEYS)
  return results


def fixed_images() -> np.ndarray:
  """uint8 (4, 32, 32, 3): the first CIFAR-10 image of classes 0, 3, 5 and 7."""
  with zipfile.ZipFile(CIFAR_ZIP) as archive:
    names = sorted(archive.namelist())
    chosen = [next(n for n in names if n.split("/")[1] == cls) for cls in ("airplane", "cat", "dog", "horse")]
    return np.stack([np.asarray(Image.open(io.BytesIO(archive.read(n))).convert("RGB")) for n in chosen])


def explainer_maps() -> dict:
  """Every explainer's output on fixed inputs with the shipped resnet20 (akamaster) weights."""
  import jax.numpy as jnp
  from cnnjax import data, explain, pretrained
  model, variables = pretrained.load(str(RESNET20))
  inputs = data.preprocess(jnp.asarray(fixed_images(), jnp.float32), mode="torch")
  targets = jnp.asarray([0, 3, 5, 7])
  maps = {
      "logits": model.apply(variables, inputs, train=False),
      "saliency": explain.saliency(model, variables, inputs, targets),
      "guided": explain.saliency(model, variables, inputs, targets, modifier="guided"),
      "relu": explain.saliency(model, variables, inputs, targets, modifier="relu"),
      "smoothgrad": explain.smoothgrad(model, variables, inputs, targets, samples=8),
      "integrated_gradients": explain.integrated_gradients(model, variables, inputs, targets, steps=16),
      "gradcam": explain.gradcam(model, variables, inputs, targets),
      "gradcam_stage2": explain.gradcam(model, variables, inputs, targets, layer="conv3_block3_out"),
      "gradcam_plus_plus": explain.gradcam_plus_plus(model, variables, inputs, targets),
      "guided_gradcam": explain.guided_gradcam(model, variables, inputs, targets),
      "activations": explain.activations(model, variables, inputs, ["conv2_block3_out"])["conv2_block3_out"],
      "maximize": explain.maximize_activation(model, variables, [0, 3], input_shape=(32, 32, 3), steps=20,
                                              preprocess="torch"),
      "maximize_filters": explain.maximize_activation(model, variables, input_shape=(32, 32, 3), steps=20,
                                                      layer="conv3_block1_out", filters=[0, 5], **explain.KERAS_VIS),
  }
  scores = explain.deletion_insertion(model, variables, inputs, targets, maps["gradcam"], steps=8)
  maps["deletion"], maps["insertion"] = scores["deletion"], scores["insertion"]
  check = explain.randomization_check(model, variables, inputs[:2], targets[:2], method="gradcam")
  maps["randomization"] = np.stack([entry["spearman"] for entry in check[:3]])
  return {name: np.asarray(value, np.float32) for name, value in maps.items()}


def main():
  import tempfile
  with tempfile.TemporaryDirectory() as tmp:
    os.environ.setdefault("CNNJAX_CACHE_DIR", os.path.join(tmp, "cache"))
    root = Path(tmp)
    golden = {"training": training_runs(root), "lr_find": lr_find_run(root), "transfer": transfer_runs(root)}
  (HERE / "golden.json").write_text(json.dumps(golden, indent=1) + "\n")
  np.savez_compressed(HERE / "explainers.npz", **explainer_maps())
  print(f"wrote {HERE / 'golden.json'} and {HERE / 'explainers.npz'}")


if __name__ == "__main__":
  main()
