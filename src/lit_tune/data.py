"""The datasets of `conf/data/`: scikit-learn's digits, MNIST and Fashion-MNIST.

All three fit in memory. Each is loaded once per process as uint8, split with a fixed seed and
normalised once with the training split's mean and std. Two ways to serve it (`data.loader`):

- `device` (default): the normalised tensors live on the training device (the GPU when there is
  one); a batch is one index operation on that device: no per-sample Python, no workers.
- `dataloader`: a torch DataLoader over single examples (num_workers, pinned memory), the place
  for per-sample transforms. Same examples, same order, same values as `device`.

Both take the order of epoch e from `epoch_order(n, seed, e)`, so that a run resumed at epoch e
sees the batches an uninterrupted run would have seen, on any device.

Training batches come `steps_per_execution` at a time (Keras's name for it): the loader serves
that many batches' examples in one piece and `on_after_batch_transfer` cuts it into a list of
batches, each one optimizer step of the module. Lightning's bookkeeping (hooks, callbacks,
progress) then runs once per piece, not once per step: it costs about 1 ms a batch on our
CPU (docs/benchmarks.md). The batches and their order are those of `steps_per_execution=1`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
import torchvision
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from lit_tune.config import ConfigError

IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
Pair = tuple[Tensor, Tensor]

# One data set per process (the last one asked for): a sweep's trials in one worker process
# load and normalise it once. Keys hold everything the tensors depend on.
_loaded: dict[tuple[Any, ...], tuple[dict[str, Pair], Tensor, Tensor]] = {}
_resident: dict[tuple[Any, ...], dict[str, Pair]] = {}


def epoch_order(n: int, seed: int, epoch: int) -> Tensor:
    """The training order of epoch `epoch`: a permutation of range(n), the same on any device."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))


class EpochOrder(Sampler[int]):
    """Indices in `epoch_order` (or 0..n-1 unshuffled); Lightning calls set_epoch each epoch."""

    def __init__(self, n: int, shuffle: bool, seed: int) -> None:
        self.n, self.shuffle, self.seed, self.epoch = n, shuffle, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> Tensor:
        return epoch_order(self.n, self.seed, self.epoch) if self.shuffle else torch.arange(self.n)

    def __iter__(self) -> Iterator[int]:
        return iter(self.order().tolist())

    def __len__(self) -> int:
        return self.n


class DeviceBatches:
    """Batches cut from tensors on the training device, one index operation each.

    Under DDP each rank takes every world-th index of the epoch's order; training shards are
    padded to equal length (as DistributedSampler does) so that every rank steps together.
    """

    def __init__(
        self, x: Tensor, y: Tensor, batch_size: int, sampler: EpochOrder, rank: int, world: int
    ) -> None:
        self.x, self.y, self.batch_size = x, y, batch_size
        self.sampler = sampler  # where Lightning looks for set_epoch...
        self.batch_sampler = None  # ...after checking this, as on a DataLoader
        self.rank, self.world = rank, world

    def _indices(self) -> Tensor:
        order = self.sampler.order()
        if self.world > 1:
            if self.sampler.shuffle:
                padded = math.ceil(len(order) / self.world) * self.world
                order = torch.cat([order, order[: padded - len(order)]])
            order = order[self.rank :: self.world]
        return order.to(self.x.device, non_blocking=True)

    def __len__(self) -> int:
        n = len(self.sampler)
        if self.world > 1:
            n = (
                math.ceil(n / self.world)
                if self.sampler.shuffle
                else len(range(self.rank, n, self.world))
            )
        return math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[Pair]:
        indices = self._indices()
        for start in range(0, len(indices), self.batch_size):
            batch = indices[start : start + self.batch_size]
            yield self.x[batch], self.y[batch]


class _Examples(Dataset[Pair]):
    """Single raw examples, normalised one at a time (the DataLoader path)."""

    def __init__(self, x: Tensor, y: Tensor, mean: Tensor, std: Tensor, shape: tuple) -> None:
        self.x, self.y, self.mean, self.std, self.shape = x, y, mean, std, shape

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> Pair:
        return normalise(self.x[i], self.mean, self.std).reshape(self.shape), self.y[i]


def random_shift(images: Tensor, pixels: int) -> Tensor:
    """Each image moved by up to `pixels` in x and y (zeros fill in), on its own device, in
    one gather: the augmentation the CNN wants, with no per-sample Python."""
    n, c, h, w = images.shape
    padded = torch.nn.functional.pad(images, (pixels,) * 4)
    dy, dx = torch.randint(0, 2 * pixels + 1, (2, n, 1), device=images.device)
    rows = (torch.arange(h, device=images.device) + dy)[:, None, :, None]
    cols = (torch.arange(w, device=images.device) + dx)[:, None, None, :]
    batch = torch.arange(n, device=images.device)[:, None, None, None]
    channel = torch.arange(c, device=images.device)[None, :, None, None]
    return padded[batch, channel, rows, cols]


def normalise(images: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """(x - mean) / std in float32: one formula for both paths, so both give the same bits."""
    return (images.float() - mean) / std


class InMemoryData(L.LightningDataModule):
    """Base: subclasses say how to `load` (train x, train y, test x, test y) as tensors and
    what `key` (beyond the class) identifies the data they load."""

    input_shape: tuple[int, int, int]
    num_classes: int = 10

    def __init__(
        self,
        batch_size: int,
        val_fraction: float,
        seed: int,
        loader: Literal["device", "dataloader"] = "device",
        num_workers: int = 0,
        shift: int = 0,
        steps_per_execution: int = 1,
    ) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.seed = seed
        self.loader = loader
        self.num_workers = num_workers
        self.shift = shift
        self.steps_per_execution = steps_per_execution
        self.splits: dict[str, Pair] = {}  # `device`: normalised, on the training device

    def load(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        raise NotImplementedError

    def key(self) -> tuple[Any, ...]:
        return ()

    def _cache_key(self) -> tuple[Any, ...]:
        return (type(self), self.key(), self.val_fraction, self.seed)

    def _raw(self) -> tuple[dict[str, Pair], Tensor, Tensor]:
        """The raw splits on the CPU and the training split's mean and std (cached)."""
        key = self._cache_key()
        if key not in _loaded:
            x, y, x_test, y_test = self.load()
            order = torch.randperm(len(x), generator=torch.Generator().manual_seed(self.seed))
            n_val = max(1, round(self.val_fraction * len(x)))
            val, train = order[:n_val], order[n_val:]
            x_train = x[train].float()
            _loaded.clear()
            _loaded[key] = (
                {"train": (x[train], y[train]), "val": (x[val], y[val]), "test": (x_test, y_test)},
                x_train.mean(),
                x_train.std(),
            )
        return _loaded[key]

    def setup(self, stage: str | None = None) -> None:
        if self.loader == "dataloader":
            self._raw()
            return
        device = self.trainer.strategy.root_device if self.trainer else torch.device("cpu")
        key = (*self._cache_key(), str(device))
        if key not in _resident:
            raw, mean, std = self._raw()
            mean, std = mean.to(device), std.to(device)
            _resident.clear()
            _resident[key] = {
                name: (
                    normalise(x.to(device), mean, std).reshape(-1, *self.input_shape),
                    y.to(device),
                )
                for name, (x, y) in raw.items()
            }
        self.splits = _resident[key]

    def steps_per_batch(self) -> int:
        """Optimizer steps in one training batch of the loader: steps_per_execution, except
        under DDP, whose gradient sync expects one forward and one backward per step."""
        trainer = self.trainer
        return 1 if trainer is not None and trainer.world_size > 1 else self.steps_per_execution

    def optimizer_steps(self, loader_batches: int) -> int:
        """Optimizer steps in an epoch of `loader_batches` training batches (the last batch
        of an epoch holds the examples that are left, maybe fewer steps)."""
        steps = math.ceil(len(self._raw()[0]["train"][1]) / self.batch_size)
        return min(loader_batches * self.steps_per_batch(), steps)

    def _loader(self, split: str, shuffle: bool = False) -> DeviceBatches | DataLoader:
        raw, mean, std = self._raw()
        x, y = raw[split]
        sampler = EpochOrder(len(y), shuffle, self.seed)
        batch_size = self.batch_size * (self.steps_per_batch() if split == "train" else 1)
        if self.loader == "dataloader":
            return DataLoader(
                _Examples(x, y, mean, std, self.input_shape),
                batch_size=batch_size,
                sampler=sampler,
                num_workers=self.num_workers,
                persistent_workers=self.num_workers > 0,
                pin_memory=torch.cuda.is_available(),
            )
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
        return DeviceBatches(*self.splits[split], batch_size, sampler, rank, world)

    def on_after_batch_transfer(self, batch: Pair, dataloader_idx: int) -> Pair | list[Pair]:
        """A training batch: shifted (`shift`), then cut into its steps' batches."""
        if self.trainer is None or not self.trainer.training:
            return batch
        x, y = batch
        if self.shift:
            x = random_shift(x, self.shift)
        return list(zip(x.split(self.batch_size), y.split(self.batch_size), strict=True))

    def train_dataloader(self) -> DeviceBatches | DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DeviceBatches | DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DeviceBatches | DataLoader:
        return self._loader("test")


class Digits(InMemoryData):
    """scikit-learn's bundled 8x8 digits (1,797 images); test_fraction of them held out."""

    input_shape = (1, 8, 8)

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
        x = torch.as_tensor(digits.images).to(torch.uint8)  # grey levels 0..16
        y = torch.as_tensor(digits.target, dtype=torch.long)
        # The test split is drawn with its own seed offset, so that changing the
        # validation fraction never moves a test example into training.
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(self.seed + 1))
        n_test = max(1, round(self.test_fraction * len(x)))
        test, rest = order[:n_test], order[n_test:]
        return x[rest], y[rest], x[test], y[test]


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


class MNIST(InMemoryData):
    """MNIST's 60k/10k IDX files under `data_dir/MNIST/raw`, via torchvision."""

    input_shape = (1, 28, 28)
    dataset = torchvision.datasets.MNIST

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

    def prepare_data(self) -> None:
        raw = (Path(self.data_dir) / self.dataset.__name__ / "raw").resolve()
        if all((raw / name).is_file() for name in IDX_FILES):
            for name in IDX_FILES:  # what torchvision would check, and that none is cut short
                check_idx(raw / name)
            return
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
