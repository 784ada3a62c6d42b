"""The datasets of `conf/data/`: scikit-learn's digits, MNIST and Fashion-MNIST.

All three fit in memory, so each is loaded once as one tensor, normalised once with the
training split's mean and std, split with a fixed seed, and served a whole batch per index
operation (no per-sample Python, no PIL, no worker processes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
import torchvision
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from lit_tune.config import ConfigError

IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


class _BatchTensors(TensorDataset):
    """A TensorDataset that the DataLoader indexes with a whole batch of indices at once."""

    def __getitems__(self, indices: list[int]) -> tuple[Tensor, ...]:
        index = torch.as_tensor(indices)
        return tuple(t[index] for t in self.tensors)


def _as_batch(batch: Any) -> Any:
    # __getitems__ already made the batch; the default collate would re-stack it.
    return batch


class InMemoryData(L.LightningDataModule):
    """Base: subclasses say how to `load` (train x, train y, test x, test y) as tensors."""

    input_shape: tuple[int, int, int]
    num_classes: int = 10

    def __init__(self, batch_size: int, val_fraction: float, seed: int) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.seed = seed
        self.splits: dict[str, _BatchTensors] = {}

    def load(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        x, y, x_test, y_test = self.load()
        generator = torch.Generator().manual_seed(self.seed)
        order = torch.randperm(len(x), generator=generator)
        n_val = max(1, round(self.val_fraction * len(x)))
        val, train = order[:n_val], order[n_val:]
        x_train = x[train].float()
        mean, std = x_train.mean(), x_train.std()

        def normalise(images: Tensor) -> Tensor:
            return ((images.float() - mean) / std).reshape(-1, *self.input_shape)

        self.splits = {
            "train": _BatchTensors(normalise(x_train), y[train]),
            "val": _BatchTensors(normalise(x[val]), y[val]),
            "test": _BatchTensors(normalise(x_test), y_test),
        }

    def _loader(self, split: str, shuffle: bool = False) -> DataLoader:
        return DataLoader(
            self.splits[split], batch_size=self.batch_size, shuffle=shuffle, collate_fn=_as_batch
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")


class Digits(InMemoryData):
    """scikit-learn's bundled 8x8 digits (1,797 images); test_fraction of them held out."""

    input_shape = (1, 8, 8)

    def __init__(
        self, batch_size: int, val_fraction: float, test_fraction: float, seed: int
    ) -> None:
        super().__init__(batch_size, val_fraction, seed)
        self.test_fraction = test_fraction

    def load(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        from sklearn.datasets import load_digits

        digits = load_digits()
        x = torch.as_tensor(digits.images, dtype=torch.float32)
        y = torch.as_tensor(digits.target, dtype=torch.long)
        # The test split is drawn with its own seed offset, so that changing the
        # validation fraction never moves a test example into training.
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(self.seed + 1))
        n_test = max(1, round(self.test_fraction * len(x)))
        test, rest = order[:n_test], order[n_test:]
        return x[rest], y[rest], x[test], y[test]


class MNIST(InMemoryData):
    """MNIST's 60k/10k IDX files under `data_dir/MNIST/raw`, via torchvision."""

    input_shape = (1, 28, 28)
    dataset = torchvision.datasets.MNIST

    def __init__(
        self, data_dir: str, batch_size: int, val_fraction: float, seed: int, download: bool = True
    ) -> None:
        super().__init__(batch_size, val_fraction, seed)
        self.data_dir = data_dir
        self.download = download

    def prepare_data(self) -> None:
        raw = (Path(self.data_dir) / self.dataset.__name__ / "raw").resolve()
        try:
            self.dataset(self.data_dir, train=True, download=self.download)
            self.dataset(self.data_dir, train=False, download=self.download)
        except (RuntimeError, OSError) as error:
            tried = "the download failed" if self.download else "download is off"
            raise ConfigError(
                f"data.data_dir: no {self.dataset.__name__} files in {raw} and {tried}; put "
                f"{', '.join(IDX_FILES)} (or the same names with .gz) there"
            ) from error

    def load(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        train = self.dataset(self.data_dir, train=True, download=False)
        test = self.dataset(self.data_dir, train=False, download=False)
        return train.data, train.targets, test.data, test.targets


class FashionMNIST(MNIST):
    """Fashion-MNIST: MNIST's IDX layout, under `data_dir/FashionMNIST/raw`."""

    dataset = torchvision.datasets.FashionMNIST
