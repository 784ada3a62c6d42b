"""The sweep's output unless `verbose`: one line per finished trial and a summary. What goes
says nothing about the trials: the launcher's three lines per launch, Optuna's study banner,
and Optuna's warnings that its heartbeat is experimental and meant for Study.optimize. We use
the heartbeat knowingly, outside optimize (ask and tell is how trials run without a batch
barrier; the heartbeat is how a killed sweep's trials are found): no API of Optuna's does
the same without these warnings, so they are filtered, each by its own message."""

from __future__ import annotations

import logging
import warnings
from typing import Any

import optuna


def quiet(launcher: Any) -> None:
    """Silence what is said above, in this process, for the rest of the sweep."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Launchers log through their package's loggers (hydra_plugins.hydra_joblib_launcher...).
    logging.getLogger(type(launcher).__module__.rsplit(".", 1)[0]).setLevel(logging.WARNING)
    warnings.filterwarnings(
        "ignore", "Heartbeat of storage is supposed to be used with Study.optimize", UserWarning
    )
    for experimental in (
        r".*fail_stale_trials is experimental",
        r"Argument ``heartbeat_interval`` is an experimental",
    ):
        warnings.filterwarnings("ignore", experimental, optuna.exceptions.ExperimentalWarning)
