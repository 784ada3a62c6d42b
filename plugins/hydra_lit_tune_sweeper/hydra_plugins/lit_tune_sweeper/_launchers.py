"""What the sweeper does for particular Hydra launchers: start Ray once, turn a broken launch
into a failed trial (GPUs for joblib's workers: _resources)."""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from omegaconf import open_dict, read_write

from ._errors import ConfigError, first_line


def start(launcher: Any) -> None:
    """Start what a launcher would start in its first launch() (Ray: ray.init), once: trials
    launch from several threads at once, which would race to start it."""
    if type(launcher).__name__ != "RayLauncher":
        return
    from hydra_plugins.hydra_ray_launcher._launcher_util import start_ray

    init = launcher.ray_cfg.init
    # The launcher sets this default in every launch(); on the read-only struct config that
    # hydra-core 1.4 instantiates it with, that fails unless the key is there already.
    with read_write(init), open_dict(init):
        init.setdefault("object_store_memory", 78643200)
    try:
        start_ray(init)
    except Exception as error:  # a bad argument, or no cluster at the address
        raise ConfigError(f"hydra.launcher.ray.init: {first_line(error)}") from error


def job_return(future: Future[JobReturn]) -> JobReturn:
    """The job's return; a launcher that broke (a worker process died) fails just the trial."""
    try:
        return future.result()
    except Exception as error:
        ret = JobReturn(status=JobStatus.FAILED)
        ret.return_value = error
        return ret
