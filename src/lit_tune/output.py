"""What a run prints. A sweep's trial keeps its console to warnings and errors (its log file,
`<trial dir>/train.log`, still has everything) and draws no progress bars; the sweeper's line
per trial is what a person reads. Library warnings we cannot fix are filtered, each by its
own message, and `verbose=true` brings everything back."""

from __future__ import annotations

import logging
import os
import warnings

# Loggers that Lightning gives console handlers of their own on import (lightning/__init__.py
# always; lightning/pytorch/__init__.py when logging is not set up yet), in the unified and
# the standalone packages.
LIGHTNING = (
    "lightning",
    "lightning.pytorch",
    "lightning.fabric",
    "pytorch_lightning",
    "lightning_fabric",
)


def quiet_warnings() -> None:
    """Filter the library warnings whose cause is not ours to fix."""
    # Lightning 2.6's own pytree code builds torch's LeafSpec, which torch 2.10+ deprecates.
    warnings.filterwarnings("ignore", r"`isinstance\(treespec, LeafSpec\)`", FutureWarning)
    # Advice for logging every n steps, given whenever an epoch has fewer batches than
    # log_every_n_steps: the normal case on a small table. Our metrics are logged per epoch.
    warnings.filterwarnings("ignore", r"The number of training batches \(\d+\) is smaller")
    # hydra-ray-launcher 1.2.2, its newest, calls OmegaConf's deprecated register_new_resolver
    # on import, and Hydra imports every installed plugin at start-up (`pip install .[scale]`),
    # also in a launcher's worker processes, before any code of ours runs: hence the variable.
    ray = "ignore:register_new_resolver() is deprecated:UserWarning"
    warnings.filterwarnings("ignore", r"register_new_resolver\(\) is deprecated", UserWarning)
    if ray not in os.environ.get("PYTHONWARNINGS", ""):
        os.environ["PYTHONWARNINGS"] = ",".join(
            filter(None, [os.environ.get("PYTHONWARNINGS"), ray])
        )


class _Console(logging.Filter):
    """Warnings and errors, and INFO from the loggers named in `keep` (and their children)."""

    def __init__(self, keep: tuple[str, ...]) -> None:
        super().__init__()
        self.keep = keep

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.name.startswith(self.keep)


def quiet_console(own_lines: bool) -> None:
    """From now on, this process's console shows warnings, errors and the sweeper's lines
    only, and with `own_lines` lit_tune's (under a sweeper that prints no line per trial of
    its own, the `objective ... =` line is that line); log files keep everything, Python's
    warnings too."""
    logging.captureWarnings(True)
    for name in LIGHTNING:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)  # its records reach the root's handlers instead
        logger.propagate = True
    keep = ("hydra_plugins.lit_tune_sweeper", *(["lit_tune."] if own_lines else []))
    for handler in logging.getLogger().handlers:
        if type(handler) is logging.StreamHandler:
            for old in [f for f in handler.filters if isinstance(f, _Console)]:
                handler.removeFilter(old)
            handler.addFilter(_Console(keep))
