"""Data sets that fit in memory: the base of digits, MNIST, Fashion-MNIST, CIFAR-10 and tabular.

Each is loaded once per process, split with a fixed seed and normalised once with the training
split's statistics: per channel for images, per feature for tabular data. Two ways to serve it
(`data.loader`):

- `device` (default): the normalised tensors live on the training device (the GPU when there is
  one); a batch is one index operation on that device: no per-sample Python, no workers.
- `dataloader`: a torch DataLoader over single examples (num_workers, pinned memory), the place
  for per-sample transforms. Same examples, same order, same values as `device`.

Both take the order of epoch e from `epoch_order(n, seed, e)`, so that a run resumed at epoch e
sees the batches an uninterrupted run would have seen, on any device. On the fast path of the
built-in modules (lit_tune/fast_path.py) a training batch holds several batches' examples,
cut into its batches after the transfer.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler

from lit_tune import fast_path

Pair = tuple[Tensor, Tensor]
Task = Literal["binary", "multiclass", "regression"]

# One data set per process (the last one asked for): a sweep's trials in one worker process
# load and normalise it once. Keys hold everything the tensors depend on.
_loaded: dict[tuple[Any, ...], tuple[dict[str, Pair], Tensor, Tensor, dict[str, Any]]] = {}
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

    def __init__(self, x: Tensor, y: Tensor, mean: Tensor, std: Tensor) -> None:
        self.x, self.y, self.mean, self.std = x, y, mean.squeeze(0), std.squeeze(0)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> Pair:
        return normalise(self.x[i], self.mean, self.std), self.y[i]


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


def normalise(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """(x - mean) / std in float32: one formula for both paths, so both give the same bits."""
    return (x.float() - mean) / std


class Normalise(nn.Module):
    """`normalise` with a split's statistics, as a module: what a served model puts before
    the net so that it takes raw examples."""

    mean: Tensor
    std: Tensor

    def __init__(self, mean: Tensor, std: Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean.float().cpu())
        self.register_buffer("std", std.float().cpu())

    def forward(self, x: Tensor) -> Tensor:
        return normalise(x, self.mean, self.std)


def split_off_test(
    x: Tensor, y: Tensor, fraction: float, seed: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(x, y) of the rest, then of a test split of `fraction`. The test split is drawn with its
    own seed offset, so that changing the validation fraction never moves a test example into
    training."""
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed + 1))
    n_test = max(1, round(fraction * len(x)))
    test, rest = order[:n_test], order[n_test:]
    return x[rest], y[rest], x[test], y[test]


def statistics(x: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and std of a training split (N, C, ...) per channel (per feature for (N, F)),
    shaped to broadcast over it; a constant channel gets std 1."""
    dims = (0, *range(2, x.ndim))
    x = x.float()
    mean, std = x.mean(dim=dims, keepdim=True), x.std(dim=dims, keepdim=True)
    return mean, torch.where(std > 0, std, torch.ones_like(std))


class InMemoryData(L.LightningDataModule):
    """Base: a subclass says how to `load` (train x, train y, test x, test y), x shaped
    (N, *input_shape), and what `key` (beyond the class) identifies the data it loads.

    The sizes a net or a module reads (`input_shape`, `num_classes`, `num_outputs`, ...; see
    README, "Tune your own model") are attributes, known once the data is loaded."""

    task: Task = "multiclass"
    num_classes: int = 10
    # The largest raw pixel value of an image data set (None: not images): how a served
    # model's caller scales an image file's pixels.
    pixel_max: float | None = 255.0
    serves_pieces = True  # the fast path may serve it several batches at a time

    def __init__(
        self,
        batch_size: int,
        val_fraction: float,
        seed: int,
        loader: Literal["device", "dataloader"] = "device",
        num_workers: int = 0,
        shift: int = 0,
    ) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.seed = seed
        self.loader = loader
        self.num_workers = num_workers
        self.shift = shift
        self.splits: dict[str, Pair] = {}  # `device`: normalised, on the training device

    def load(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        raise NotImplementedError

    def key(self) -> tuple[Any, ...]:
        return ()

    def found_while_loading(self) -> dict[str, Any]:
        """Attributes `load` set (class names, say): cached with the tensors, and set again on
        an instance that finds them cached."""
        return {}

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self._raw()[0]["train"][0].shape[1:])

    @property
    def num_features(self) -> int:
        """The size of one example, flattened."""
        return math.prod(self.input_shape)

    @property
    def num_outputs(self) -> int:
        """What a net's head must give: a logit per class, or a value per target."""
        return self.num_targets if self.task == "regression" else self.num_classes

    @property
    def num_targets(self) -> int:
        if self.task != "regression":
            raise AttributeError("num_targets: a classification data set has classes")
        y = self._raw()[0]["train"][1]
        return 1 if y.ndim == 1 else int(y.shape[1])

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
            _loaded.clear()
            _loaded[key] = (
                {"train": (x[train], y[train]), "val": (x[val], y[val]), "test": (x_test, y_test)},
                *statistics(x[train]),
                self.found_while_loading(),
            )
        splits, mean, std, found = _loaded[key]
        vars(self).update(found)
        return splits, mean, std

    def input_transform(self) -> nn.Module:
        """What turns raw examples into what the loaders serve: the normalisation."""
        _, mean, std = self._raw()
        return Normalise(mean, std)

    def raw_examples(self, n: int) -> Tensor:
        """The first `n` raw test examples, as float32 (a served model's input example)."""
        return self._raw()[0]["test"][0][:n].float()

    def train_examples(self) -> int:
        return len(self._raw()[0]["train"][1])

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
                name: (normalise(x.to(device), mean, std), y.to(device))
                for name, (x, y) in raw.items()
            }
        self.splits = _resident[key]

    def _loader(self, split: str, shuffle: bool = False) -> DeviceBatches | DataLoader:
        raw, mean, std = self._raw()
        x, y = raw[split]
        trainer = self.trainer
        # Lightning overfits fixed batches by swapping a DataLoader's sampler: do it here too.
        shuffle = shuffle and not (
            trainer is not None and getattr(trainer, "overfit_batches", False)
        )
        sampler = EpochOrder(len(y), shuffle, self.seed)
        steps = fast_path.steps_per_batch(trainer) if split == "train" else 1
        batch_size = self.batch_size * steps
        if self.loader == "dataloader":
            return DataLoader(
                _Examples(x, y, mean, std),
                batch_size=batch_size,
                sampler=sampler,
                num_workers=self.num_workers,
                persistent_workers=self.num_workers > 0,
                pin_memory=torch.cuda.is_available(),
            )
        rank, world = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
        return DeviceBatches(*self.splits[split], batch_size, sampler, rank, world)

    def on_after_batch_transfer(self, batch: Pair, dataloader_idx: int) -> Pair | list[Pair]:
        """A training batch: shifted (`shift`), then, on the fast path, cut into its steps'
        batches."""
        if self.trainer is None or not self.trainer.training:
            return batch
        x, y = batch
        if self.shift:
            x = random_shift(x, self.shift)
        if fast_path.steps_per_batch(self.trainer) == 1:
            return x, y
        return fast_path.split((x, y), self.batch_size)

    def train_dataloader(self) -> DeviceBatches | DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DeviceBatches | DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DeviceBatches | DataLoader:
        return self._loader("test")
