"""The data sets of `conf/data/`, each a LightningDataModule.

- `memory.py`: the base of the data sets held in memory, served from the training device;
- `images.py`: scikit-learn's digits, MNIST, Fashion-MNIST, CIFAR-10;
- `tabular.py`: a CSV or Parquet file, or one of scikit-learn's bundled tables;
- `folder.py`: a folder of images per class, read as training goes.

A datamodule of your own needs none of this: `data._target_` may name any LightningDataModule.
"""

from lit_tune.data.folder import ImageFolder
from lit_tune.data.images import CIFAR10, MNIST, Digits, FashionMNIST
from lit_tune.data.memory import DeviceBatches, EpochOrder, InMemoryData
from lit_tune.data.tabular import Tabular

__all__ = [
    "CIFAR10",
    "MNIST",
    "DeviceBatches",
    "Digits",
    "EpochOrder",
    "FashionMNIST",
    "ImageFolder",
    "InMemoryData",
    "Tabular",
]
