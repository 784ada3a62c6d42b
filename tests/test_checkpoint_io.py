"""Checkpoints are written whole or not at all."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lit_tune.checkpoint_io import AtomicCheckpointIO


def test_a_checkpoint_is_written_whole(tmp_path: Path):
    path = tmp_path / "deep" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"epoch": 3, "w": torch.arange(5)}, path)
    loaded = torch.load(path, weights_only=True)
    assert loaded["epoch"] == 3 and torch.equal(loaded["w"], torch.arange(5))
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]


def test_a_save_cut_short_leaves_the_previous_checkpoint(tmp_path: Path, monkeypatch):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"epoch": 1}, path)

    def cut_short(obj: object, f: object) -> None:
        f.write(b"PK\x03\x04 half a zip")  # type: ignore[attr-defined]
        raise OSError("killed mid-write")

    monkeypatch.setattr(torch, "save", cut_short)
    with pytest.raises(OSError):
        io.save_checkpoint({"epoch": 2}, path)
    assert torch.load(path, weights_only=True)["epoch"] == 1
