"""Stopping a study before its budget is used (`hydra.sweeper.stop`): once the best reaches a
target, after `patience` trials without an improvement, or after `timeout` seconds.

Each is checked before a trial is launched; the running trials always finish. `target` reads
the whole study's best, so a resumed study that has reached it stops at once (raise the target
to go on). `patience` and `timeout` count from the start of this run, so that a resumed study
with a larger budget goes on for at least that long.
"""

from __future__ import annotations

import math
import time
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from ._errors import ConfigError


class Stopping:
    """The reason this run stops launching trials, once there is one."""

    def __init__(self, settings: Any, directions: list[str]) -> None:
        self.target: float | None = settings.target
        self.patience: int | None = settings.patience
        self.min_delta = float(settings.min_delta)
        self.timeout: float | None = settings.timeout
        if (self.target is not None or self.patience is not None) and len(directions) > 1:
            raise ConfigError(
                "hydra.sweeper.stop.target, stop.patience: a multi-objective study has no best"
                " value to compare; use stop.timeout or n_trials"
            )
        for key, value in (("patience", self.patience), ("timeout", self.timeout)):
            if value is not None and not value > 0:
                raise ConfigError(f"hydra.sweeper.stop.{key}={value}: must be > 0 (or null)")
        if self.min_delta < 0:
            raise ConfigError(f"hydra.sweeper.stop.min_delta={self.min_delta}: must be >= 0")
        self.maximize = directions[0].lower() == "maximize"
        self.best: float | None = None
        self.since_best = 0  # finished trials of this run since the best improved
        self.started = time.monotonic()
        self.why: tuple[str, str] | None = None  # (the setting, the reason in words)

    def begin(self, study: optuna.Study) -> None:
        """Start the clock and the count at this run's first trial (the study's best so far
        is the one to improve on)."""
        self.best = _best_value(study)
        self.started = time.monotonic()

    def _better(self, value: float, than: float, by: float = 0.0) -> bool:
        return value - than > by if self.maximize else than - value > by

    def saw(self, trial: FrozenTrial) -> None:
        """Count a finished trial of this run for `patience`: as Lightning's EarlyStopping
        counts epochs, an improvement of min_delta or less is none."""
        value = trial.values[0] if trial.state == TrialState.COMPLETE and trial.values else None
        if value is not None and (
            self.best is None or self._better(value, self.best, self.min_delta)
        ):
            self.best, self.since_best = value, 0
        else:
            self.since_best += 1

    def reason(self, study: optuna.Study) -> tuple[str, str] | None:
        """(setting, reason) once this run should launch no more trials; None until then."""
        if self.why is None:
            self.why = self._check(study)
        return self.why

    def _check(self, study: optuna.Study) -> tuple[str, str] | None:
        best = _best_value(study)
        if self.target is not None and best is not None and not self._better(self.target, best):
            number = study.best_trial.number
            return "target", f"best {best:.6g} (trial {number}) reached stop.target={self.target}"
        if self.patience is not None and self.since_best >= self.patience:
            return "patience", (
                f"{self.since_best} trials without an improvement of more than "
                f"stop.min_delta={self.min_delta:g} on {self.best} (stop.patience="
                f"{self.patience})"
            )
        elapsed = time.monotonic() - self.started
        if self.timeout is not None and elapsed >= self.timeout:
            return "timeout", f"{elapsed:.0f}s since this run started (stop.timeout={self.timeout})"
        return None


def _best_value(study: optuna.Study) -> float | None:
    if len(study.directions) > 1:
        return None
    values = [
        t.values[0]
        for t in study.get_trials(deepcopy=False, states=[TrialState.COMPLETE])
        if t.values and math.isfinite(t.values[0])
    ]
    if not values:
        return None
    return max(values) if study.directions[0].name == "MAXIMIZE" else min(values)
