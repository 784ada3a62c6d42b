"""The datamodules: fixed splits, normalisation, whole epochs, both ways of serving them (same
examples, same order, same metrics), the per-process cache, DDP shards, the IDX files, errors."""

from __future__ import annotations

import functools
from pathlib import Path

import lightning as L
import pytest
import torch
import torchvision
from conftest import SHARED_DATA, bare_trainer, free_port, idx_count
from torch import Tensor

from lit_tune import fast_path
from lit_tune.config import ConfigError
from lit_tune.data import (
    MNIST,
    DeviceBatches,
    Digits,
    EpochOrder,
    FashionMNIST,
    InMemoryData,
    memory,
)
from lit_tune.models import MLP
from lit_tune.module import Classifier
from lit_tune.schedules import none as no_schedule


def digits(seed: int = 0, batch_size: int = 64, loader: str = "device") -> Digits:
    dm = Digits(batch_size, val_fraction=0.15, test_fraction=0.15, seed=seed, loader=loader)
    dm.setup()
    return dm


def rows(x: Tensor) -> set[bytes]:
    return {row.numpy().tobytes() for row in x.reshape(len(x), -1)}


def test_digits_splits_are_disjoint_and_cover_the_data():
    dm = digits()
    sizes = {name: len(y) for name, (_, y) in dm.splits.items()}
    assert sum(sizes.values()) == 1797
    assert sizes["test"] == round(0.15 * 1797)
    train, val, test = (rows(dm.splits[s][0]) for s in ("train", "val", "test"))
    assert not (train & val) and not (train & test) and not (val & test)


def test_splits_depend_on_the_seed_only():
    a, b, c = digits(seed=1), digits(seed=1), digits(seed=2)
    assert torch.equal(a.splits["val"][1], b.splits["val"][1])
    assert not torch.equal(a.splits["val"][0], c.splits["val"][0])


def test_training_split_is_normalised():
    x = digits().splits["train"][0]
    assert x.shape[1:] == (1, 8, 8)
    assert abs(float(x.mean())) < 1e-4
    assert float(x.std()) == pytest.approx(1.0, abs=1e-4)


class Numbered(InMemoryData):
    """Example i is the number i: lets a test see which examples an epoch served."""

    def load(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        x = torch.arange(103, dtype=torch.float32)[:, None, None, None]
        return x, x.flatten().long() % 10, x[:7], x[:7].flatten().long() % 10


def test_an_epoch_serves_every_training_example_exactly_once_in_batches():
    dm = Numbered(batch_size=16, val_fraction=0.2, seed=0)
    dm.setup()
    loader = dm.train_dataloader()
    batches = list(loader)
    assert [len(y) for _, y in batches] == [16] * 5 + [2]
    served = torch.cat([x.flatten() for x, _ in batches])
    assert sorted(served.tolist()) == sorted(dm.splits["train"][0].flatten().tolist())
    loader.sampler.set_epoch(1)  # as Lightning does
    second = torch.cat([x.flatten() for x, _ in loader])
    assert not torch.equal(served, second)  # reshuffled
    loader.sampler.set_epoch(0)
    assert torch.equal(served, torch.cat([x.flatten() for x, _ in loader]))  # resumable


@pytest.mark.parametrize("loader", ["device", "dataloader"])
def test_steps_per_execution_serves_the_same_batches_in_pieces(loader: str, monkeypatch):
    """A training batch of k steps, cut after the transfer, is the k batches of k=1."""
    trainer = bare_trainer(max_epochs=1)
    trainer.state.stage = "train"

    def served(steps: int, epoch: int) -> list:
        # The module's steps_per_execution, as the fast path would decide it in a fit.
        monkeypatch.setattr(fast_path, "steps_per_batch", lambda trainer, module=None: steps)
        dm = Numbered(batch_size=16, val_fraction=0.2, seed=0, loader=loader)
        dm.trainer = trainer
        dm.setup()
        loader_ = dm.train_dataloader()
        loader_.sampler.set_epoch(epoch)
        return [dm.on_after_batch_transfer(batch, 0) for batch in loader_]

    for epoch in range(2):
        steps_of_one, steps_of_four = served(1, epoch), served(4, epoch)
        assert [len(steps) for steps in steps_of_four] == [4, 2]  # 82 examples: 6 steps
        assert all(isinstance(batch, tuple) for batch in steps_of_one)  # a batch, not a list
        pairs = [pair for steps in steps_of_four for pair in steps]
        assert len(pairs) == len(steps_of_one) == 6
        for (x, y), (x1, y1) in zip(pairs, steps_of_one, strict=True):
            assert torch.equal(x, x1) and torch.equal(y, y1)
    dm = Numbered(batch_size=16, val_fraction=0.2, seed=0, loader=loader)
    dm.setup()
    assert dm.train_examples() == 82
    four = len(dm.val_dataloader())
    monkeypatch.setattr(fast_path, "steps_per_batch", lambda trainer, module=None: 1)
    assert len(dm.val_dataloader()) == four  # validation: unchanged


def test_mnist_loads_from_its_idx_files(mnist_dir: Path):
    dm = MNIST(str(mnist_dir), batch_size=128, val_fraction=0.1, seed=0, download=False)
    dm.prepare_data()
    dm.setup()
    raw = mnist_dir / "MNIST" / "raw"
    train, test = (idx_count(raw / f"{s}-labels-idx1-ubyte") for s in ("train", "t10k"))
    if mnist_dir == SHARED_DATA:
        assert (train, test) == (60000, 10000)  # the originals
    assert {k: len(v[1]) for k, v in dm.splits.items()} == {
        "train": train - train // 10,
        "val": train // 10,
        "test": test,
    }
    x, _ = next(iter(dm.train_dataloader()))
    assert x.shape == (128, 1, 28, 28) and x.dtype == torch.float32
    assert set(dm.splits["test"][1].tolist()) == set(range(10))


def test_fashion_mnist_reads_the_same_idx_layout(fashion_dir: Path):
    dm = FashionMNIST(str(fashion_dir), batch_size=32, val_fraction=0.1, seed=0, download=False)
    dm.prepare_data()
    dm.setup()
    assert {k: len(v[1]) for k, v in dm.splits.items()} == {"train": 270, "val": 30, "test": 100}
    assert dm.splits["test"][1].tolist() == [i % 10 for i in range(100)]


@pytest.mark.parametrize("download", [False, True])
def test_missing_files_say_which_files_to_put_where(
    tmp_path: Path, download: bool, monkeypatch: pytest.MonkeyPatch
):
    # The download goes to a port nobody listens on: it fails alike on- and offline.
    closed = [f"http://127.0.0.1:{free_port()}/"]
    monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", closed)
    dm = MNIST(str(tmp_path), batch_size=8, val_fraction=0.1, seed=0, download=download)
    with pytest.raises(ConfigError) as error:
        dm.prepare_data()
    message = str(error.value)
    assert "\n" not in message
    assert ("and the download failed;" if download else "and download is off;") in message
    assert message.startswith("data.data_dir:")
    assert str(tmp_path / "MNIST" / "raw") in message
    assert "train-images-idx3-ubyte" in message and "t10k-labels-idx1-ubyte" in message


def test_both_loaders_serve_the_same_examples_in_the_same_order():
    fast, slow = digits(loader="device"), digits(loader="dataloader")
    fast_loader, slow_loader = fast.train_dataloader(), slow.train_dataloader()
    assert isinstance(fast_loader, DeviceBatches)
    assert isinstance(slow_loader, torch.utils.data.DataLoader)
    for epoch in range(3):
        fast_loader.sampler.set_epoch(epoch)
        slow_loader.sampler.set_epoch(epoch)
        a, b = list(fast_loader), list(slow_loader)
        assert [len(y) for _, y in a] == [len(y) for _, y in b]
        xa, xb = torch.cat([x for x, _ in a]), torch.cat([x for x, _ in b])
        assert sorted(rows(xa)) == sorted(rows(xb))  # the same multiset of examples...
        assert torch.equal(xa, xb)  # ...in the same order, to the bit
        assert torch.equal(torch.cat([y for _, y in a]), torch.cat([y for _, y in b]))
    assert len(rows(xa)) == len(fast.splits["train"][1])  # every example, once


def fit_digits(loader: str) -> dict[str, float]:
    L.seed_everything(0)
    dm = digits(loader=loader)
    net = MLP(input_shape=(1, 8, 8), num_outputs=10, hidden_layers=1, width=32)
    optimizer = functools.partial(torch.optim.SGD, lr=0.1)
    module = Classifier(net, 10, optimizer, no_schedule)
    trainer = bare_trainer(max_epochs=3)
    trainer.fit(module, datamodule=dm)
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k != "epoch_time"}


def test_both_loaders_give_the_same_metrics_for_a_fixed_seed():
    fast, slow = fit_digits("device"), fit_digits("dataloader")
    assert {"train/loss", "val/loss", "val/acc", "val/acc_best"} <= set(fast)
    assert fast == slow
    assert fast["val/acc"] > 0.5  # it trained


def test_the_data_is_loaded_once_per_process(monkeypatch: pytest.MonkeyPatch):
    loads = []
    original = Digits.load
    monkeypatch.setattr(Digits, "load", lambda self: loads.append(1) or original(self))
    monkeypatch.setattr(memory, "_loaded", {})
    monkeypatch.setattr(memory, "_resident", {})
    first, second = digits(seed=3), digits(seed=3, batch_size=16)
    assert len(loads) == 1
    assert first.splits["train"][0] is second.splits["train"][0]
    digits(seed=4)  # another split: loaded again, and the cache keeps only the last one
    assert len(loads) == 2 and len(memory._loaded) == 1


@pytest.mark.parametrize("n", [10, 11])
def test_ddp_ranks_shard_an_epoch(n: int):
    x = torch.arange(n).float()

    def shards(shuffle: bool) -> list[list[int]]:
        return [
            torch.cat(
                [b for b, _ in DeviceBatches(x, x, 4, EpochOrder(n, shuffle, 0), rank, 2)]
            ).tolist()
            for rank in range(2)
        ]

    train = shards(shuffle=True)
    assert len(train[0]) == len(train[1]) == -(-n // 2)  # equal steps on every rank
    assert set(train[0]) | set(train[1]) == set(range(n))
    val = shards(shuffle=False)
    assert sorted(val[0] + val[1]) == list(range(n))  # no padding: each example counted once


def test_random_shift_translates_each_image_and_fills_with_zeros():
    torch.manual_seed(0)
    images = torch.rand(64, 2, 8, 8) + 1.0  # no zeros of its own
    assert torch.equal(memory.random_shift(images, 0), images)
    shifted = memory.random_shift(images, 2)
    assert shifted.shape == images.shape
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    moves = set()
    for i in range(len(images)):
        found = [
            (dy, dx)
            for dy in range(5)
            for dx in range(5)
            if torch.equal(shifted[i], padded[i, :, dy : dy + 8, dx : dx + 8])
        ]
        assert len(found) == 1, i  # one translation, the same for every channel
        moves.add(found[0])
    assert len(moves) > 10  # drawn per image, not once per batch


def test_shift_applies_to_training_batches_only():
    dm = digits()
    dm.shift = 1
    batch = dm.splits["val"][0][:8], dm.splits["val"][1][:8]
    assert dm.on_after_batch_transfer(batch, 0) is batch  # no trainer: not training
    trainer = bare_trainer(max_epochs=1)
    dm.trainer = trainer
    trainer.state.stage = "train"
    moved, labels = dm.on_after_batch_transfer(batch, 0)  # one step: a batch
    assert torch.equal(labels, batch[1]) and not torch.equal(moved, batch[0])
    trainer.state.stage = "validate"
    assert dm.on_after_batch_transfer(batch, 0) is batch
