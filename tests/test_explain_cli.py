"""explain.py end to end on a run trained by train.py in the test."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from cnnjax.apps import report
from cnnjax.train import weights

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained_run(image_folder, tmp_path_factory):
  from cnnjax.train import config as config_lib, loop
  config = config_lib.default_config()
  config.update(dataset=f"folder:{image_folder}", num_classes=3, image_size=16, batch_size=8, eval_batch_size=8,
                num_epochs=2)
  workdir = tmp_path_factory.mktemp("run") / "simple_cnn"
  loop.train_and_evaluate(config, str(workdir))
  return workdir


def explain(*args):
  return subprocess.run([sys.executable, "explain.py", *args], cwd=REPO, capture_output=True, text=True,
                        timeout=600)


def test_explain_py_writes_figures_activations_and_deletion_scores(trained_run, image_folder, tmp_path):
  images = [str(image_folder / "red" / "0.png"), str(image_folder / "blue" / "1.png")]
  out = tmp_path / "out"
  done = explain("--workdir", str(trained_run), "--images", ",".join(images), "--out", str(out),
                 "--methods", "saliency,guided,relu,gradcam,guided_gradcam,deletion")
  assert done.returncode == 0, done.stderr[-2000:]
  assert "0.png: " in done.stdout and any(name in done.stdout for name in ("red", "blue", "green"))
  for stem in ("0", "1"):
    assert (out / f"{stem}_explanations.png").stat().st_size > 1000
  scores = json.loads((out / "deletion.json").read_text())
  assert set(scores) == {"saliency", "guided", "relu", "gradcam", "guided_gradcam"}
  for per_image in scores.values():
    for auc in per_image.values():
      assert 0.0 <= auc["deletion_auc"] <= 1.0 and 0.0 <= auc["insertion_auc"] <= 1.0

  # The rest in-process: the same code path explain.py calls, without another interpreter start.
  report.run(report.load_workdir(str(trained_run)), images[:1], methods=["activations", "maximize"],
             target="green", layer="conv2d_1", out_dir=str(out), print_fn=lambda line: None)
  assert (out / "0_conv2d_1_activations.png").is_file()
  assert (out / "maximize_1_green.png").is_file()
  assert (out / "maximize_conv2d_1_channels.png").stat().st_size > 1000  # the --layer's channel grid
  with pytest.raises(ValueError, match="'dense' has output shape .*not a feature map; pick a conv layer"):
    report.run(report.load_workdir(str(trained_run)), images[:1], methods=["maximize"], target="green",
               layer="dense", out_dir=str(out), print_fn=lambda line: None)


def test_explain_py_takes_spaces_commas_folders_and_globs_and_never_overwrites_a_figure(trained_run, image_folder,
                                                                                       tmp_path):
  photos = tmp_path / "photos"
  for name, source in (("a/cat.png", "red/0.png"), ("b/cat.png", "blue/1.png"), ("cat.jpg", "green/2.png")):
    (photos / name).parent.mkdir(parents=True, exist_ok=True)
    Image.open(image_folder / source).convert("RGB").save(photos / name)
  (photos / "a" / "notes.txt").write_text("not an image")  # a folder gives only its images
  out = tmp_path / "out"
  done = explain("--workdir", str(trained_run), "--images", f"{photos / 'a'},{photos / 'b' / 'cat.png'}",
                 f"{photos}/*.jpg", "--methods", "saliency", "--out", str(out))
  assert done.returncode == 0, done.stderr[-2000:]
  assert sorted(path.name for path in out.iterdir()) == [
      "a_cat_explanations.png", "b_cat_explanations.png", "cat_jpg_explanations.png"]


def test_explain_py_refuses_a_word_that_is_no_image_in_one_line(trained_run, image_folder):
  done = explain("--workdir", str(trained_run), "--images", str(image_folder / "red" / "0.png"),
                 "--target", "tiger", "cat")  # an unquoted value with a space
  assert done.returncode != 0 and done.stderr.strip().splitlines()[-1].startswith(
      "error: unexpected argument 'cat': not an image file, folder or glob"), done.stderr[-2000:]


def test_image_paths_expand_folders_and_globs_and_name_every_missing_input(tmp_path):
  for name in ("b.jpg", "a.PNG", ".hidden.jpg", "notes.txt", "sub/c.jpg"):
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / name).write_bytes(b"")
  (tmp_path / "empty").mkdir()
  folder = [str(tmp_path / "a.PNG"), str(tmp_path / "b.jpg")]  # sorted, not recursive, images only
  assert report.image_paths([str(tmp_path)]) == folder
  assert report.image_paths([str(tmp_path / "*.jpg"), str(tmp_path / "b.jpg"), str(tmp_path)]) == folder[::-1]
  for items, message in (([str(tmp_path / "nope.jpg")], "does not exist"),
                         ([str(tmp_path / "empty")], "holds no image files"),
                         ([str(tmp_path / "*.gif")], "matches no image files")):
    with pytest.raises(ValueError, match=message) as error:
      report.image_paths(items)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("paths, stems", [
    (["x/cat.jpg", "y/dog.jpg"], ["cat", "dog"]),  # unique names stay short
    (["cat.jpg", "cat.png"], ["cat_jpg", "cat_png"]),
    (["a/cat.jpg", "b/cat.jpg", "c/cat.png"], ["a_cat", "b_cat", "cat_png"]),
    (["a/cat.jpg", "b/Cat.png"], ["cat_jpg", "Cat_png"]),  # case-insensitive file systems
    (["p/a/cat.jpg", "q/a/cat.jpg"], ["p_a_cat", "q_a_cat"]),
    (["x.jpg", "./x.jpg"], ["x", "x_2"]),  # the same file twice
])
def test_output_stems_are_unique_and_deterministic(paths, stems):
  assert report.output_stems(paths) == stems


@pytest.mark.parametrize("methods, target, layer, message", [
    ("saliency,sharpness", "top1", None, "unknown method(s) sharpness"),
    ("saliency", "zebra", None, "unknown target class 'zebra'"),
    ("saliency", "7", None, "target 7 is out of range"),
    ("gradcam", "top1", "block9_conv9", "block9_conv9"),
    ("activations", "top1", None, "needs --layer"),
])
def test_bad_input_is_one_line(trained_run, image_folder, tmp_path, methods, target, layer, message):
  source = report.load_workdir(str(trained_run))
  with pytest.raises(ValueError) as error:
    report.run(source, [str(image_folder / "red" / "0.png")], methods=report.parse_methods(methods),
               target=target, layer=layer, out_dir=str(tmp_path), print_fn=lambda line: None)
  assert message in str(error.value) and "\n" not in str(error.value)


def test_explain_py_reports_bad_input_in_one_line(trained_run, tmp_path):
  done = explain("--workdir", str(trained_run), "--images", str(tmp_path / "nope.jpg"))
  assert done.returncode != 0 and done.stderr.strip().splitlines()[-1].startswith("error:")
  assert "does not exist" in done.stderr.strip().splitlines()[-1]
  with pytest.raises(ValueError, match="not a train.py workdir"):
    weights.restore(str(tmp_path))


def test_explain_py_with_imported_weights(shared_dir, tmp_path):
  weights = shared_dir / "weights" / "keras_cifar10" / "sagecodes_keras_cifar10_trained_model.h5"
  done = explain("--weights", str(weights), "--images", str(shared_dir / "data" / "photos" / "both.png"),
                 "--methods", "saliency,gradcam", "--target", "3", "--out", str(tmp_path))
  assert done.returncode == 0, done.stderr[-2000:]
  assert "both.png: " in done.stdout  # top-5 by class index: the file does not name its classes
  assert (tmp_path / "both_explanations.png").stat().st_size > 1000
  with pytest.raises(ValueError, match="pass either --workdir RUN_DIR or --weights FILE"):
    report.load_source(workdir=None, weights=None)


def test_every_registry_method_is_offered_by_name_or_as_all():
  from cnnjax.explain import registry  # pylint: disable=import-outside-toplevel
  listed = explain("--list_methods")
  assert listed.returncode == 0, listed.stderr
  assert [line.split()[0] for line in listed.stdout.splitlines()] == [*registry.METHODS, *report.OTHER_METHODS]
  assert report.parse_methods("all,deletion") == [*registry.METHODS, "deletion"]
  with pytest.raises(ValueError, match="unknown method.*lime.*or all"):
    report.parse_methods("gradcam,lime")


def test_explain_py_draws_new_methods(trained_run, image_folder, tmp_path):
  out = tmp_path / "explain"
  result = explain("--workdir", str(trained_run), "--images", str(image_folder / "red" / "0.png"), "--methods",
                   "layercam,occlusion,input_x_gradient", "--out", str(out))
  assert result.returncode == 0, result.stderr
  assert (out / "0_explanations.png").is_file()
