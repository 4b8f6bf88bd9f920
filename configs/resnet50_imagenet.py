"""ResNet50 on ImageNet-1k at 224 px: the recipe of flax's examples/imagenet (configs/tpu.py on top of
configs/default.py, and train.py), the JAX ecosystem's reference ImageNet run.

The recipe, as flax's example has it (checked against google/flax at 18f8f31, 2026-07-02):
  - ResNet50 v1.5 (stride on the 3x3 conv of a bottleneck: `stride_on_3x3`), 1000 classes, 224x224 inputs
    normalised by the ImageNet mean and std (preprocess 'torch': flax's MEAN_RGB / STDDEV_RGB).
  - SGD, momentum 0.9, Nesterov; learning rate 0.1 x batch / 256 (0.4 at batch 1024: `learning_rate` follows
    `--config.batch_size` unless set itself); 5 epochs of linear warmup from 0, then cosine decay to 0 at the end
    of 100 epochs (flax's join of linear_schedule and cosine_decay_schedule is optax's warmup_cosine_decay_schedule,
    cnnjax's 'warmup_cosine').
  - Weight decay 1e-4 as an L2 penalty on the kernels only (flax adds 1e-4 / 2 * sum of squares of every param of
    2+ dims to the loss; cnnjax adds the same gradient, `weight_decay_params='kernels'`). No label smoothing: flax's
    cross_entropy_loss uses plain one-hot labels.
  - Batch 1024 (flax's tpu.py; default.py has 128), bfloat16 compute (flax's `half_precision`: bfloat16 on TPU; on
    GPU flax uses float16 with dynamic loss scaling, cnnjax uses bfloat16 on both, which needs no loss scaling).
    Parameters, BatchNorm statistics, the loss and the optimizer stay float32.

Where cnnjax differs from flax's example (so expect top-1 to differ somewhat; not measured here):
  - Input: cnnjax resizes each whole image to 224x224 (aspect not kept) when it decodes it; training augments on
    the device with a horizontal flip and a zoom of each side to 35-100% (`augment.zoom=(0.35, 1.0)`, about the
    area range 0.08-1 of flax's random-resized crop, but centred, and with independent x and y scales) plus
    shifts of up to 10%; flax takes Inception-style random crops of the original JPEG (area 8-100%, aspect
    3/4-4/3) and evaluates on the centre 87.5% crop.
  - Model details of the Keras-layout ResNet50: convolutions have biases, BatchNorm momentum 0.99 and epsilon
    1.001e-5 (flax: no conv biases, momentum 0.9, epsilon 1e-5, and the last BatchNorm scale of each residual
    branch initialised to zero).
  - Validation: tfds imagenet2012's own 50,000-image validation split (as flax); with `folder:PATH` it is carved
    from the training folder (`validation_split`, 4%: about 51,000 images, the size of the official split).
  - Memory: 1,281,167 training images at 224 px would be 193 GB of uint8, far over `in_memory_limit_gb` (2), so
    the input streams (cnnjax.data.streaming, on grain): tfds imagenet2012 is prepared as array_record files, a
    folder is read file by file; host memory stays near the model's own (README "Streaming").

flax's README reports top-1 on the validation split of 76.54% (TPU v3-32, 125,100 steps, 2.1 h), 76.67% (TPU
v2-32), 76.37% (TPU v3-8), 76.72% (8x V100, batch 512 float32) and 76.27% (8x V100, float16).

Data: tfds `imagenet2012` (the default): put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from image-net.org
in DATA_DIR/downloads/manual (DATA_DIR: `--config.data_dir`, default ~/tensorflow_datasets); the first run
prepares the tfds records there once. Or an ImageNet-layout folder, `PATH/<wnid>/*.JPEG` (classes sorted by wnid
give tfds's label order): `--config.dataset=folder:PATH`.

  # one GPU node (e.g. 8 GPUs, after `pip install -r requirements.txt "jax[cuda12]==0.10.2"`; the global batch
  # of 1024 is split over every GPU):
  python train.py --config configs/resnet50_imagenet.py --workdir runs/resnet50_imagenet \
      --config.data_dir=/data/tensorflow_datasets
  # a Cloud TPU slice (e.g. v3-32, 4 hosts; `pip install -r requirements.txt "jax[tpu]==0.10.2"` on each): the
  # same command on every host at once; --distributed connects them (detected on Cloud TPU), each host reads its
  # share of each batch. The workdir must be one folder every host mounts (NFS, Filestore, gcsfuse): orbax
  # checkpoints are written and read there by all of them. tfds reads data_dir from GCS itself.
  gcloud compute tpus tpu-vm ssh $VM --zone $ZONE --worker=all --command "cd cnnjax && python train.py \
      --config configs/resnet50_imagenet.py --workdir /mnt/shared/resnet50_imagenet --distributed \
      --config.data_dir=gs://$BUCKET/tensorflow_datasets"
  # GPU hosts under SLURM: `srun` one process per host running the GPU command with --distributed.
  # Installed (`pip install .`): cnnjax-train --config /path/to/checkout/configs/resnet50_imagenet.py ...
  # CPU (slow; XLA:CPU emulates bfloat16): add --config.model_options.dtype=float32
"""
from configs import default


def get_config():
  config = default.get_config()
  config.model = "resnet50"
  config.model_options.stride_on_3x3 = True
  config.model_options.dtype = "bfloat16"
  config.num_classes = 1000
  config.image_size = 224
  config.channels = 3

  config.dataset = "imagenet2012"
  config.validation_split = 0.04  # folder:PATH only; imagenet2012 brings its validation split
  config.preprocess = "torch"
  config.augment.horizontal_flip = True
  config.augment.width_shift = 0.1
  config.augment.height_shift = 0.1
  del config.augment["zoom"]  # a float field by default: re-created as a (low, high) pair
  config.augment.zoom = (0.35, 1.0)

  config.batch_size = 1024
  config.eval_batch_size = 1024
  config.num_epochs = 100
  config.optimizer = "sgd"
  config.momentum = 0.9
  config.nesterov = True
  # 0.1 per 256 images, as flax's base_learning_rate: a --config.batch_size override rescales it.
  config.learning_rate = config.get_ref("batch_size").to_float() * (0.1 / 256)
  config.schedule = "warmup_cosine"
  config.warmup_epochs = 5.0
  config.weight_decay = 1e-4
  config.weight_decay_params = "kernels"
  config.label_smoothing = 0.0
  return config
