"""lit_tune's Optuna sweeper for Hydra: `override hydra/sweeper: lit_tune`.

Reads the config language of hydra-optuna-sweeper (params, samplers, direction, storage, ...)
and adds pruning, failure tolerance, resume, parallel trials without batch barriers, and an
MLflow parent run per sweep with one nested run per trial. The plugin's README is its manual.

The app's side, for a job that wants to report, be pruned or stop when the sweep stops:

    from hydra_plugins.lit_tune_sweeper import current_trial, PruningCallback

Hydra imports every public module here at start-up, in every app: they stay light, and
these names import optuna (and lightning, for the callback) only when first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._callback import PruningCallback
    from ._trial import Trial, current_trial

__all__ = ["PruningCallback", "Trial", "current_trial"]


def __getattr__(name: str) -> Any:
    if name == "PruningCallback":
        from ._callback import PruningCallback

        return PruningCallback
    if name in ("Trial", "current_trial"):
        from . import _trial

        return getattr(_trial, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
