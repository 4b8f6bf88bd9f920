"""configs/catdog_cnn_tuned.py: the tutorial's config (configs/catdog_cnn.py) with only the training recipe its
docstring names changed: the same model (the KDnuggets catdog_cnn, 1,355,938 parameters at 150x150), data, split
and the seed's augmentation; one-cycle over exactly its epochs; no early stop."""
import numpy as np

from cnnjax import models
from cnnjax.train import config as config_lib
from cnnjax.train import optim
from configs import catdog_cnn, catdog_cnn_tuned

# The fields the recipe sets; every other field must stay the tutorial's.
RECIPE_FIELDS = {"num_epochs", "batch_size", "preprocess", "optimizer", "learning_rate", "schedule", "weight_decay",
                 "weight_decay_params", "label_smoothing", "mixup_alpha", "test_time_flip", "augment",
                 "early_stopping"}
# configs/catdog_cnn.py's ImageDataGenerator: shear 0.2 rad (in degrees), zoom 0.2, horizontal flips.
SEED_AUGMENTATION = {"shear": 11.46, "zoom": 0.2, "horizontal_flip": True}


def test_only_the_recipe_differs_from_the_tutorials_config():
  tuned, tutorial = catdog_cnn_tuned.get_config(), catdog_cnn.get_config()
  config_lib.validate(tuned)
  tuned_fields, tutorial_fields = tuned.to_dict(), tutorial.to_dict()
  assert tuned_fields.keys() == tutorial_fields.keys()
  changed = {key for key in tutorial_fields if tuned_fields[key] != tutorial_fields[key]}
  assert changed == RECIPE_FIELDS
  # The seed's augmentation is kept; the recipe only adds to it.
  assert {key: tuned.augment[key] for key in SEED_AUGMENTATION} == SEED_AUGMENTATION
  # The full one-cycle run: its last epoch is the model, which eval.json reports.
  assert tuned.early_stopping.patience == 0 and not tuned.early_stopping.restore_best_weights
  assert (tuned.model, tuned.image_size, tuned.num_classes, tuned.validation_split) == ("catdog_cnn", 150, 2, 0.2)


def test_it_trains_the_seeds_model():
  text = models.summary(models.create(catdog_cnn_tuned.get_config().model, num_classes=2), (150, 150, 3),
                        print_fn=lambda line: None)
  assert "Total params: 1,355,938" in text


def test_the_one_cycle_peaks_at_the_learning_rate_and_anneals_to_zero_at_the_last_step():
  config = catdog_cnn_tuned.get_config()
  steps_per_epoch = 1600 // config.batch_size  # the shipped 1,600 training photos, full batches
  schedule = optim.create_schedule(config, steps_per_epoch)
  rates = np.array([float(schedule(step)) for step in range(0, config.num_epochs * steps_per_epoch + 1, 10)])
  assert np.isclose(rates.max(), config.learning_rate, rtol=1e-3)
  assert rates[0] < config.learning_rate / 20 and rates[-1] < config.learning_rate * 1e-3
