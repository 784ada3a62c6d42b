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

`ModelCheckpoint` writes last.ckpt after every epoch, as Lightning did before 2.6.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch import callbacks
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


class ModelCheckpoint(callbacks.ModelCheckpoint):
    """Lightning's ModelCheckpoint, with `save_last` writing last.ckpt after every epoch, and
    a resumed run keeping the best so far.

    Lightning 2.6 writes last.ckpt only in a step where it writes a top-k checkpoint: with
    save_top_k=1, a copy of the best, so a run resumed from it would train again every epoch
    since its best, and EarlyStopping would count its patience from there."""

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # A resumed run writes to a folder of its own (Hydra's run dir), and Lightning forgets
        # the best so far of a checkpoint from another folder: the first epoch after the
        # resume would be the new best, whatever it scores. The best stays in the stopped
        # run's folder (never deleted from here: Lightning deletes only inside dirpath).
        if Path(state_dict.get("best_model_path") or "").is_file():
            state_dict = {**state_dict, "dirpath": self.dirpath}
        super().load_state_dict(state_dict)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last(trainer)

    def _save_last(self, trainer: L.Trainer) -> None:
        # Skipped also where Lightning has just saved it, with a top-k checkpoint.
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
