"""Image sets held in memory: scikit-learn's digits, MNIST, Fashion-MNIST and CIFAR-10."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import Tensor

from lit_tune.config import ConfigError
from lit_tune.data.memory import InMemoryData, split_off_test

IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


class Digits(InMemoryData):
    """scikit-learn's bundled 8x8 digits (1,797 images); test_fraction of them held out."""

    pixel_max = 16.0  # grey levels 0..16

    def __init__(
        self, batch_size: int, val_fraction: float, test_fraction: float, seed: int, **serve: Any
    ) -> None:
        super().__init__(batch_size, val_fraction, seed, **serve)
        self.test_fraction = test_fraction

    def key(self) -> tuple[Any, ...]:
        return (self.test_fraction,)

    def load(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        from sklearn.datasets import load_digits

        digits = load_digits()
        x = torch.as_tensor(digits.images).to(torch.uint8)[:, None]  # grey levels 0..16
        y = torch.as_tensor(digits.target, dtype=torch.long)
        return split_off_test(x, y, self.test_fraction, self.seed)


def check_idx(path: Path) -> None:
    """Raise ConfigError unless `path` is an IDX file of the size its header promises."""
    with path.open("rb") as f:
        header = f.read(4)
        ndim = header[3] if len(header) == 4 and header[:2] == b"\0\0" else 0
        dims = f.read(4 * ndim)
    if ndim == 0 or len(dims) < 4 * ndim:
        raise ConfigError(f"data.data_dir: {path} is not an IDX file (bad header)")
    expected = (
        4 + 4 * ndim + math.prod(int.from_bytes(dims[i : i + 4]) for i in range(0, 4 * ndim, 4))
    )
    if path.stat().st_size != expected:
        raise ConfigError(
            f"data.data_dir: {path} has {path.stat().st_size} bytes, its header says "
            f"{expected}; the file is cut short or corrupt"
        )


class _LocalFiles(InMemoryData):
    """A torchvision data set read from `data_dir` (downloaded there when `download` is on
    and the network allows); missing files fail in one line saying which files go where."""

    dataset: Any
    files: tuple[str, ...]
    folder: str
    also = ""  # more on what to put there

    def __init__(
        self,
        data_dir: str,
        batch_size: int,
        val_fraction: float,
        seed: int,
        download: bool = True,
        **serve: Any,
    ) -> None:
        super().__init__(batch_size, val_fraction, seed, **serve)
        self.data_dir = data_dir
        self.download = download

    def key(self) -> tuple[Any, ...]:
        return (self.dataset.__name__, str(Path(self.data_dir).resolve()))

    def check(self, folder: Path) -> None:
        """What to check of files that are all there (torchvision checks the rest)."""

    def prepare_data(self) -> None:
        folder = (Path(self.data_dir) / self.folder).resolve()
        if all((folder / name).is_file() for name in self.files):
            self.check(folder)
            return
        try:
            self.dataset(self.data_dir, train=True, download=self.download)
            self.dataset(self.data_dir, train=False, download=self.download)
        except (RuntimeError, OSError) as error:
            tried = "the download failed" if self.download else "download is off"
            raise ConfigError(
                f"data.data_dir: no {self.dataset.__name__} files in {folder} and {tried}; put "
                f"{', '.join(self.files)} there{self.also}"
            ) from error

    def splits_from_torchvision(self) -> tuple[Any, Any]:
        try:
            return (
                self.dataset(self.data_dir, train=True, download=False),
                self.dataset(self.data_dir, train=False, download=False),
            )
        except RuntimeError as error:  # torchvision's integrity check
            raise ConfigError(
                f"data.data_dir: the {self.dataset.__name__} files in "
                f"{Path(self.data_dir) / self.folder} are not the originals ({error})"
            ) from error


class MNIST(_LocalFiles):
    """MNIST's 60k/10k IDX files under `data_dir/MNIST/raw`, via torchvision."""

    dataset = torchvision.datasets.MNIST
    files = IDX_FILES
    folder = "MNIST/raw"
    also = " (or the same names with .gz)"

    def check(self, folder: Path) -> None:
        for name in IDX_FILES:  # what torchvision would check, and that none is cut short
            check_idx(folder / name)

    def load(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        train, test = self.splits_from_torchvision()
        return train.data[:, None], train.targets, test.data[:, None], test.targets


class FashionMNIST(MNIST):
    """Fashion-MNIST: MNIST's IDX layout, under `data_dir/FashionMNIST/raw`."""

    dataset = torchvision.datasets.FashionMNIST
    folder = "FashionMNIST/raw"


class CIFAR10(_LocalFiles):
    """CIFAR-10 (50k/10k colour images, 32x32) from `data_dir/cifar-10-batches-py`, the
    python version torchvision downloads (it checks each file's md5 before unpickling it)."""

    dataset = torchvision.datasets.CIFAR10
    files: tuple[str, ...] = tuple(f"data_batch_{i}" for i in range(1, 6))
    files += ("test_batch", "batches.meta")
    folder = "cifar-10-batches-py"
    also = " (unpack cifar-10-python.tar.gz into data_dir)"

    @property
    def class_names(self) -> list[str]:
        return list(self.splits_from_torchvision()[1].classes)

    def load(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        train, test = self.splits_from_torchvision()

        def images(split: Any) -> Tensor:  # NHWC uint8 -> NCHW
            return torch.as_tensor(split.data).permute(0, 3, 1, 2).contiguous()

        def labels(split: Any) -> Tensor:
            return torch.as_tensor(split.targets, dtype=torch.long)

        return images(train), labels(train), images(test), labels(test)
