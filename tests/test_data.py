"""The datamodules: fixed splits, normalisation, whole epochs, the IDX files, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor

from lit_tune.config import ConfigError
from lit_tune.data import MNIST, Digits, FashionMNIST, InMemoryData


def digits(seed: int = 0, batch_size: int = 64) -> Digits:
    dm = Digits(batch_size=batch_size, val_fraction=0.15, test_fraction=0.15, seed=seed)
    dm.setup()
    return dm


def rows(x: Tensor) -> set[bytes]:
    return {row.numpy().tobytes() for row in x.reshape(len(x), -1)}


def test_digits_splits_are_disjoint_and_cover_the_data():
    dm = digits()
    sizes = {name: len(split) for name, split in dm.splits.items()}
    assert sum(sizes.values()) == 1797
    assert sizes["test"] == round(0.15 * 1797)
    train, val, test = (rows(dm.splits[s].tensors[0]) for s in ("train", "val", "test"))
    assert not (train & val) and not (train & test) and not (val & test)


def test_splits_depend_on_the_seed_only():
    a, b, c = digits(seed=1), digits(seed=1), digits(seed=2)
    assert torch.equal(a.splits["val"].tensors[1], b.splits["val"].tensors[1])
    assert not torch.equal(a.splits["val"].tensors[0], c.splits["val"].tensors[0])


def test_training_split_is_normalised():
    x = digits().splits["train"].tensors[0]
    assert x.shape[1:] == (1, 8, 8)
    assert abs(float(x.mean())) < 1e-4
    assert float(x.std()) == pytest.approx(1.0, abs=1e-4)


class Numbered(InMemoryData):
    """Example i is the number i: lets a test see which examples an epoch served."""

    input_shape = (1, 1, 1)

    def load(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        x = torch.arange(103, dtype=torch.float32)
        return x, x.long() % 10, x[:7], x[:7].long() % 10


def test_an_epoch_serves_every_training_example_exactly_once_in_batches():
    dm = Numbered(batch_size=16, val_fraction=0.2, seed=0)
    dm.setup()
    batches = list(dm.train_dataloader())
    assert [len(y) for _, y in batches] == [16] * 5 + [2]
    served = torch.cat([x.flatten() for x, _ in batches])
    assert sorted(served.tolist()) == sorted(dm.splits["train"].tensors[0].flatten().tolist())
    second = torch.cat([x.flatten() for x, _ in dm.train_dataloader()])
    assert not torch.equal(served, second)  # reshuffled


def test_mnist_loads_from_the_shared_idx_files(mnist_dir: Path):
    dm = MNIST(str(mnist_dir), batch_size=128, val_fraction=0.1, seed=0, download=False)
    dm.prepare_data()
    dm.setup()
    assert {k: len(v) for k, v in dm.splits.items()} == {"train": 54000, "val": 6000, "test": 10000}
    x, _ = next(iter(dm.train_dataloader()))
    assert x.shape == (128, 1, 28, 28) and x.dtype == torch.float32
    assert set(dm.splits["test"].tensors[1].tolist()) == set(range(10))


def test_fashion_mnist_reads_the_same_idx_layout(fashion_dir: Path):
    dm = FashionMNIST(str(fashion_dir), batch_size=32, val_fraction=0.1, seed=0, download=False)
    dm.prepare_data()
    dm.setup()
    assert {k: len(v) for k, v in dm.splits.items()} == {"train": 270, "val": 30, "test": 100}
    assert dm.splits["test"].tensors[1].tolist() == [i % 10 for i in range(100)]


@pytest.mark.parametrize("download", [False, True])
def test_missing_files_say_which_files_to_put_where(tmp_path: Path, download: bool):
    dm = MNIST(str(tmp_path), batch_size=8, val_fraction=0.1, seed=0, download=download)
    with pytest.raises(ConfigError) as error:
        dm.prepare_data()
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("data.data_dir:")
    assert str(tmp_path / "MNIST" / "raw") in message
    assert "train-images-idx3-ubyte" in message and "t10k-labels-idx1-ubyte" in message
