"""The example notebooks: committed without outputs, and executed end to end at small sizes so they never rot."""
import os
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "examples").glob("*.ipynb"))
# The notebooks' defaults are what a reader runs (about two minutes each); CI trains on less.
SMALL_SIZES = {"CNNJAX_NOTEBOOK_LIMIT_PER_CLASS": "50", "CNNJAX_NOTEBOOK_EPOCHS": "1"}
CELL_TIMEOUT_SECONDS = 600


def test_notebooks_are_committed_without_outputs():
  assert [path.name for path in NOTEBOOKS] == ["01_train_simple_cnn.ipynb", "02_explain.ipynb"]
  for path in NOTEBOOKS:
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
      if cell.cell_type == "code":
        assert cell.outputs == [] and cell.execution_count is None, (
            f"{path.name} holds outputs; clear them before committing (Jupyter: Edit > Clear Outputs of All Cells)")


def test_notebooks_run_in_order(shared_dir, tmp_path, monkeypatch):
  nbclient = pytest.importorskip("nbclient")
  # The kernel inherits this environment: sizes, where runs and decoded images go, and one CPU device as a
  # reader has (conftest's XLA_FLAGS fake four).
  for key, value in {**SMALL_SIZES, "CNNJAX_NOTEBOOK_RUNS": str(tmp_path / "runs"), "CNNJAX_SHARED": str(shared_dir),
                     "CNNJAX_CACHE_DIR": str(tmp_path / "cache")}.items():
    monkeypatch.setenv(key, value)
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  for path in NOTEBOOKS:  # 02 explains the model 01 trained
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=CELL_TIMEOUT_SECONDS, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}})
    try:
      client.execute()
    finally:
      nbformat.write(notebook, tmp_path / path.name)  # the executed copy, to look at after a failure
    images = [output for cell in notebook.cells for output in cell.get("outputs", [])
              if "image/png" in output.get("data", {})]
    assert images, f"{path.name} drew no figure"
  assert (tmp_path / "runs" / "simple_cnn_50" / "eval.json").is_file()
  assert os.listdir(tmp_path / "cache"), "notebook 1 decoded the images through the cache"
