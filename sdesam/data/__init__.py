"""Dataset loaders for sdesam: MNIST, Fashion-MNIST, CIFAR-10/100, SVHN.

Files are looked for in the data directory (argument ``data_dir`` > environment variable
``SDESAM_DATA`` > ``~/.cache/sdesam``); see ``docs/data.md`` for the layouts accepted and
how MNIST is obtained offline. Pickled formats are only ever read with a restricted
unpickler that allows numpy array reconstruction and nothing else.

- ``load_mnist``, ``load_fashion_mnist``, ``load_cifar10``, ``load_cifar100``,
  ``load_svhn`` → :class:`DataSplits` (uint8 images, int64 labels, CPU tensors);
- ``load_dataset(name)`` → ``(train, test)`` :class:`ImageDataset` (N, C, H, W) with the
  training split's per-channel mean/std;
- :class:`DeviceLoader`: device-resident, seeded, resumable, shardable batches with the
  paper's pad-4 crop + flip augmentation;
- ``check_data_dir``: a command line's ``--data-dir`` refused unless it is a directory.
"""
from .cifar import load_cifar10, load_cifar100
from .datasets import DATASET_NAMES, ImageDataset, load_dataset
from .errors import CorruptDatasetError, DatasetNotFoundError, UnsafePickleError
from .fashion_mnist import load_fashion_mnist
from .loader import DeviceLoader
from .mnist import load_mnist
from .paths import check_data_dir
from .splits import DataSplits
from .svhn import load_svhn

__all__ = [
    "load_mnist", "load_fashion_mnist", "load_cifar10", "load_cifar100", "load_svhn",
    "load_dataset", "DATASET_NAMES", "DataSplits", "ImageDataset", "DeviceLoader",
    "DatasetNotFoundError", "CorruptDatasetError", "UnsafePickleError", "check_data_dir",
]
