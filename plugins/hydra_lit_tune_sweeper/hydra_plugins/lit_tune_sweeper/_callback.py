"""`PruningCallback`: a Lightning app's one line to be pruned by a lit_tune sweep."""

from __future__ import annotations

import os
from types import SimpleNamespace

import lightning as L
import optuna
from optuna_integration import PyTorchLightningPruningCallback

from ._errors import ConfigError
from ._trial import current_trial


class PruningCallback(PyTorchLightningPruningCallback):
    """Report `monitor` after every validation and stop the trial when the pruner says so.

    Outside a lit_tune sweep it does nothing, so a config can always list it. `monitor`
    defaults to the sweeper's `hydra.sweeper.metric`. Steps are epochs trained (1, 2, ...),
    not Lightning's 0-based epoch index, so that a pruner's resources are epochs:
    `min_resource=1` judges a trial after its first epoch and `max_resource=max_epochs` is the
    last step a trial reaches. A pruned trial ends its epoch (its training metrics logged,
    as under DDP), and `trainer.fit` raises `optuna.TrialPruned`, which the sweeper records
    PRUNED.

    Under `ddp_spawn` the callback runs in the spawned ranks, whose exceptions Lightning turns
    into a failure: call `check_pruned()` after `trainer.fit` in the process that made the
    trainer, as with Optuna's own callback.
    """

    pruned: optuna.TrialPruned | None = None

    def __init__(self, monitor: str | None = None) -> None:
        self.pid = os.getpid()  # a spawned rank gets a copy: it must not raise
        self.sweep = current_trial()
        if self.sweep is None or not self.sweep.reports:
            self.sweep = None
            return
        monitor = monitor or self.sweep.metric
        if not monitor:
            raise ConfigError(
                "PruningCallback: give monitor=<the logged metric to report>, or set "
                "hydra.sweeper.metric"
            )
        super().__init__(self.sweep.optuna, monitor)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.sweep is not None:
            super().on_fit_start(trainer, pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.sweep is None or self.pruned is not None:  # pruned: min_epochs holds it
            return
        # The parent reads nothing from the module but `current_epoch`.
        epochs = SimpleNamespace(current_epoch=pl_module.current_epoch + 1)
        try:
            super().on_validation_end(trainer, epochs)  # type: ignore[arg-type]
        except optuna.TrialPruned as pruned:  # one process: raised, not flagged
            self.pruned, trainer.should_stop = pruned, True
            trainer.fit_loop.min_epochs = 0  # which would keep it training
            trainer.fit_loop.epoch_loop.min_steps = 0

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if os.getpid() == self.pid:
            self.check_pruned()

    def check_pruned(self) -> None:
        """Raise `optuna.TrialPruned` if the trial was pruned, in this process or in the
        ranks it spawned (`fit` does it as it ends, but for `ddp_spawn`)."""
        if self.sweep is None:
            return
        if self.pruned is not None:
            raise self.pruned
        super().check_pruned()
