"""The Packt "smile detector" chapter on real faces: smile_cnn (the chapter's two 5x5 conv + BN blocks, Dense128,
two logits for its sigmoid unit) on tfds celeb_a, faces centre-cropped to 148x148 and resized to 64x64, labelled
by the `Smiling` attribute (0 not smiling, 1 smiling). Adam 1e-3, batch 64, up to 10 epochs, early stopping on
val_loss; celeb_a's own train/validation/test splits, so eval.json reports the test split (precision, recall and
F1 of 'smiling', and the confusion matrix).

  python train.py --config configs/smile_cnn.py --workdir runs/smile_cnn
  # a quicker run on the first 10,000 faces of each class per split:
  python train.py --config configs/smile_cnn.py --workdir runs/smile_cnn_10k --config.limit_per_class=10000

celeb_a (1.4 GB of aligned faces) is downloaded and prepared by tfds on first use, into --config.data_dir
(default ~/tensorflow_datasets). Its three splits at 64 px decode to 2.5 GB, over the default in_memory_limit_gb of
2, so this config raises the limit to 3 and keeps the faster in-memory path (and the tfrecord files tfds.load
prepares); `--config.in_memory_limit_gb=0` streams them instead (tfds then prepares array_record files). Then ask where the model looks:
  python explain.py --workdir runs/smile_cnn --images FACE.png ... --methods saliency,guided,gradcam,guided_gradcam
"""
from configs import default


def get_config():
  config = default.get_config()
  config.model = "smile_cnn"
  config.dataset = "celeb_a:Smiling"
  config.num_classes = 2
  config.image_size = 64
  config.in_memory_limit_gb = 3.0
  config.batch_size = 64
  config.num_epochs = 10
  config.optimizer = "adam"
  config.learning_rate = 1e-3
  # A smile is left-right symmetric; the faces are aligned, so shifts and rotations stay small.
  config.augment.update(horizontal_flip=True, rotation=10.0, width_shift=0.05, height_shift=0.05)
  config.early_stopping.update(monitor="val_loss", patience=3)
  return config
