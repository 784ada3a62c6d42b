"""What each of the trials that run at once on this machine gets of it: CPU threads and a GPU
(`hydra.sweeper.resources`).

Threads. torch, OpenMP, MKL and OpenBLAS size their thread pools from OMP_NUM_THREADS & co once,
when they load, and use every core if unset: two trials at once would each run a thread per
core. joblib's loky workers get `cpu_count // n_jobs` from joblib already, but its
multiprocessing backend's processes got every core (measured: torch.get_num_threads() was 2 in
each of two trials on two cores). Setting the variables inside a job is too late: a worker
imports the app, and torch, before it runs the job. So the sweeper sets them in its own
environment before the first trial, and the worker processes inherit them; a worker forked
from it (the multiprocessing backend) inherits its torch, which it sets as well. That is for the
launchers whose trials run here (joblib, submitit_local); Ray and SLURM size a trial's CPUs
themselves (`ray.remote.num_cpus`, `cpus_per_task`).

GPUs. With the joblib launcher, each trial slot gets a GPU by the app's `gpu_override`; slots
take turns, so ceil(n_jobs / GPUs) trials share one. `trials_per_gpu` packs them tighter.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Iterator
from typing import Any

from ._errors import ConfigError

THREAD_VARS = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


def _count(key: str, value: Any) -> Any:
    """`value` if it is "auto", null or an integer > 0; else a ConfigError naming `key`."""
    if value is None or value == "auto" or (type(value) is int and value > 0):
        return value
    raise ConfigError(f"hydra.sweeper.resources.{key}={value}: auto, null or an integer > 0")


def check(resources: Any) -> None:
    """Refuse a `resources` setting that is not "auto", null or a count."""
    _count("threads", resources.threads)
    _count("trials_per_gpu", resources.trials_per_gpu)


def cpus() -> int:
    """The CPUs this process may run on (its affinity: taskset, cgroups, SLURM's binding)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# The launchers whose trials run on this machine, in processes of their own.
LOCAL = ("JoblibLauncher", "LocalLauncher")  # joblib; submitit_local


def threads_per_trial(setting: Any, slots: int, launcher: Any) -> int | None:
    """The threads each trial gets: "auto" shares this machine's CPUs between the `slots`
    trials a local launcher runs at once (None with one slot, which keeps the libraries'
    default of every core, and for Ray and SLURM, which size their jobs); an integer is that
    for any launcher; None leaves the environment as it is."""
    if setting != "auto":
        return setting
    if slots == 1 or type(launcher).__name__ not in LOCAL:
        return None
    return max(1, cpus() // slots)


@contextlib.contextmanager
def thread_limit(threads: int | None) -> Iterator[None]:
    """OMP_NUM_THREADS & co set to `threads` in this process while the sweep runs, for the
    worker processes it starts to inherit, and torch's own count where this process has
    imported it already (a worker forked from it keeps its torch as it was); as they were
    afterwards."""
    if threads is None:
        yield
        return
    saved = {var: os.environ.get(var) for var in THREAD_VARS}
    os.environ.update({var: str(threads) for var in THREAD_VARS})
    torch = sys.modules.get("torch")
    torch_threads = torch.get_num_threads() if torch is not None else None
    if torch is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        for var, value in saved.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value
        if torch is not None:
            torch.set_num_threads(torch_threads)


def gpus_to_share(launcher: Any, template: str | None, n_jobs: int, per_gpu: Any) -> int:
    """How many GPUs the trials of this machine's worker processes (joblib) spread over, each
    slot on one: every GPU (`per_gpu` "auto"), or as few as hold `per_gpu` trials each; 0 when
    the app gave no `gpu_override` or another launcher hands out GPUs."""
    if template is None or type(launcher).__name__ != "JoblibLauncher":
        return 0  # Ray and SLURM give each job its GPUs (ray.remote.num_gpus, gpus_per_task)
    try:
        import torch
    except ImportError:
        return 0
    gpus = torch.cuda.device_count()
    if per_gpu in ("auto", None) or gpus == 0:
        return gpus
    if n_jobs > per_gpu * gpus:
        raise ConfigError(
            f"hydra.sweeper.resources.trials_per_gpu={per_gpu}: n_jobs={n_jobs} trials at once "
            f"need {math.ceil(n_jobs / per_gpu)} GPUs, this machine has {gpus}"
        )
    return min(gpus, math.ceil(n_jobs / per_gpu))


def gpu_override(slot: int, gpus: int, template: str | None) -> list[str]:
    """The override that runs the trial in trial slot `slot` on GPU `slot % gpus`, when there
    are several GPUs to spread over (on one, every trial takes the first)."""
    if template is None or gpus <= 1:
        return []
    return [template.format(gpu=slot % gpus)]
