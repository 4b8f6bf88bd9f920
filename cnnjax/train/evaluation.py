"""Evaluation over a whole split: loss, accuracy, per-class precision/recall/F1 and the confusion matrix; for
binary tasks also the positive class's precision, recall and F1 at the top level."""
from typing import Dict, Optional, Sequence

import jax
import numpy as np

from cnnjax import data as data_lib
from cnnjax.train import sharding


def evaluate(eval_step, variables, images: data_lib.ImageSet, batch_size: int, batch_sharding,
             class_names: Optional[Sequence[str]] = None) -> Dict:
  """Sums `eval_step` over every image once; with `class_names`, adds the per-class report."""
  totals = None
  for batch in data_lib.batches(images, batch_size=batch_size, seed=0, epoch=0, shuffle=False,
                                process_index=jax.process_index(), process_count=jax.process_count()):
    sums = eval_step(variables, sharding.global_batch(batch, batch_sharding))
    totals = sums if totals is None else jax.tree_util.tree_map(lambda a, b: a + b, totals, sums)
  totals = jax.device_get(totals)
  count = float(totals["count"])
  results = {"loss": float(totals["loss"]) / count, "accuracy": float(totals["correct"]) / count,
             "count": int(count)}
  if class_names is not None:
    results.update(classification_report(np.asarray(totals["confusion"]), class_names))
  return results


def classification_report(confusion: np.ndarray, class_names: Sequence[str]) -> Dict:
  """Per-class precision, recall and F1 from a confusion matrix (rows: true class, columns: predicted).

  With two classes, class 1 is the positive class (e.g. 'smiling'): its precision, recall and F1 are also
  given at the top level, as binary classifiers are usually reported.
  """
  confusion = np.asarray(confusion, np.float64)  # counts may come as ints; the ratios below need floats
  true_positives = np.diag(confusion)
  predicted = confusion.sum(axis=0)
  actual = confusion.sum(axis=1)
  precision = np.divide(true_positives, predicted, out=np.zeros_like(true_positives), where=predicted > 0)
  recall = np.divide(true_positives, actual, out=np.zeros_like(true_positives), where=actual > 0)
  denominator = precision + recall
  f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(denominator), where=denominator > 0)
  per_class = {name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
               for name, p, r, f, s in zip(class_names, precision, recall, f1, actual)}
  report = {"per_class": per_class, "macro_f1": float(f1.mean()),
            "confusion_matrix": confusion.astype(int).tolist(), "class_names": list(class_names)}
  if len(class_names) == 2:
    report.update(positive_class=class_names[1], **{key: per_class[class_names[1]][key]
                                                    for key in ("precision", "recall", "f1")})
  return report
