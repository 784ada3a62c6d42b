"""Checkpoints that are whole or absent, never cut short, and that load with weights_only=True.

Lightning stages a checkpoint in the system temp folder and moves it into place, which is a
copy, not a rename, when the two are on different filesystems: a run killed during that copy
leaves a truncated last.ckpt. Here the file is written beside its target, synced, and renamed.

A module that calls `save_hyperparameters()` puts its constructor's arguments in every
checkpoint: in the template's style a net (an nn.Module) and optimizer and schedule partials.
Those are pickled objects, which `torch.load(weights_only=True)` refuses (and Hydra 1.4's
partials cannot be pickled at all). So the hyperparameters are written as plain data: a
factory as its config, a value weights_only cannot load left out (a net's weights are in the
state dict anyway); `lit_tune_dropped` names what was left out.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from omegaconf import OmegaConf

from lit_tune.build import Factory

HPARAM_KEYS = ("hyper_parameters", "datamodule_hyper_parameters")
DROPPED = "lit_tune_dropped"  # {key: names of the hyperparameters left out}
_DROP = object()


def plain(value: Any) -> Any:
    """`value` as data torch.load(weights_only=True) reads back, or _DROP."""
    if value is None or isinstance(value, bool | int | float | str | torch.Tensor):
        return value
    if isinstance(value, Factory):
        return value.node
    if OmegaConf.is_config(value):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, dict):
        return {k: v for k, v in ((k, plain(v)) for k, v in value.items()) if v is not _DROP}
    if isinstance(value, list | tuple):
        items = [plain(v) for v in value]
        return _DROP if any(v is _DROP for v in items) else type(value)(items)
    return _DROP


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        checkpoint = dict(checkpoint)
        for key in HPARAM_KEYS:
            if key in checkpoint:
                given = dict(checkpoint[key])
                checkpoint[key] = plain(given)
                dropped = sorted(set(given) - set(checkpoint[key]))
                if dropped:
                    checkpoint.setdefault(DROPPED, {})[key] = dropped
        if storage_options is not None or "://" in str(path):  # remote: Lightning's own way
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.partial")
        with open(partial, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, target)  # atomic on one filesystem
