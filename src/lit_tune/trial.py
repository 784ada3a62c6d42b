"""The Optuna trial a lit_tune sweep hands to one training run, found from the Hydra config.

The sweeper runs each trial as Hydra job number = trial number and passes the study's name
and storage as `hydra.sweeper.*` overrides, so a run (in this process or another, on this
machine or another) can load its trial, report the objective every epoch, be pruned, and be
stopped when the sweep is.
"""

from __future__ import annotations

import fcntl
import logging
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from optuna.storages import RDBStorage

from lit_tune.config import ConfigError, first_line
from lit_tune.signals import STOP, request_stop

log = logging.getLogger(__name__)

SWEEPER_TARGET = "hydra_plugins.lit_tune_sweeper.sweeper.LitTuneSweeper"
PARENT_RUN_ATTR = "mlflow_parent_run_id"  # study user attr: the sweep's MLflow parent run
STOP_ATTR = "stop_signal"  # trial system attr: the signal that stopped the sweep running it
SQLITE = "sqlite:///"


def open_storage(url: str, **kwargs: Any) -> RDBStorage:
    """An Optuna RDB storage; SQLite waits up to a minute for a lock instead of failing.
    A URL that names no database we can open is a ConfigError (password masked)."""
    from sqlalchemy.exc import SQLAlchemyError

    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    try:
        with store_lock(url):
            return RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)
    except (SQLAlchemyError, ImportError, ValueError, OSError) as error:
        raise ConfigError(
            f"hydra.sweeper.storage={mask(url)}: cannot open it ({mask(first_line(error))}); "
            "give an Optuna RDB URL such as sqlite:///path/optuna.db or postgresql://..."
        ) from None


def mask(text: str) -> str:
    """The text with the password of any URL in it (scheme://user:password@host) as ***."""
    return re.sub(r"(://[^:/@\s]+:)[^@\s/]+@", r"\1***@", text)


# Filesystems where SQLite's file locks do not hold across processes or machines.
NETWORK_FILESYSTEMS = {
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "afs", "ceph", "glusterfs", "lustre",
    "gpfs", "beegfs", "fuse.sshfs", "fuse.s3fs", "fuse.gcsfuse", "fuse.rclone",
}  # fmt: skip


def network_filesystem(url: str, mounts: Path = Path("/proc/self/mounts")) -> str | None:
    """The network filesystem a sqlite:/// URL's database is on, if it is on one (Linux)."""
    if not url.startswith(SQLITE):
        return None
    try:
        table = [line.split() for line in mounts.read_text().splitlines()]
    except OSError:
        return None
    path = Path(url.removeprefix(SQLITE)).resolve()
    best, kind = Path("/"), None
    for fields in table:
        if len(fields) < 3:
            continue
        point = Path(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), fields[1]))
        if (point == path or point in path.parents) and len(point.parts) >= len(best.parts):
            best, kind = point, fields[2]
    return kind if kind in NETWORK_FILESYSTEMS else None


def check_parallel_sqlite(stores: dict[str, str], parallel: bool, **kwargs: Any) -> None:
    """SQLite on a network filesystem: refused for parallel trials ({key: url}), whose
    processes write at once; a warning for one trial at a time."""
    for key, url in stores.items():
        kind = network_filesystem(url, **kwargs)
        if kind is None:
            continue
        problem = (
            f"{key}={mask(url)} is on {kind}, a network filesystem where SQLite's locks do not hold"
        )
        if parallel:
            raise ConfigError(
                f"{problem}: parallel trials could corrupt it; put it on a local disk, use a "
                "server database (postgresql://...), or run hydra.sweeper.n_jobs=1"
            )
        log.warning("%s: do not share this study or store with other processes", problem)


@contextmanager
def sqlite_lock(url: str) -> Iterator[None]:
    """Hold an exclusive lock beside a SQLite database while opening it. MLflow and Optuna
    create tables and run migrations when they open a database; two processes doing it at
    once (two sweeps started together) leave a broken schema. Other URLs: no lock."""
    if not url.startswith(SQLITE):
        yield
        return
    path = Path(url.removeprefix(SQLITE))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{path}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# pg_advisory_lock's key for store_lock: "lit_tune" as a bigint.
PG_LOCK_KEY = int.from_bytes(b"lit_tune", "big")


@contextmanager
def store_lock(url: str) -> Iterator[None]:
    """sqlite_lock for any store: on PostgreSQL an advisory lock, held on a connection of its
    own. Workers started at once on a new database would all create the tables (duplicate
    key errors). Other URLs: no lock."""
    if not url.startswith("postgresql"):
        with sqlite_lock(url):
            yield
        return
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:  # closing it ends the lock
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": PG_LOCK_KEY})
            yield
    finally:
        engine.dispose()


@dataclass(frozen=True)
class SweepTrial:
    """This run's trial, its study's name and the sweep's MLflow parent run (if any)."""

    trial: optuna.Trial
    study_name: str
    parent_run_id: str | None

    @property
    def reports(self) -> bool:
        """Whether the run reports its objective every epoch (for the pruner and the
        intermediate-values plot): Optuna takes reports from single-objective studies only."""
        return len(self.trial.study.directions) == 1


def current_trial() -> SweepTrial | None:
    """The trial this run is, when a lit_tune sweep launched it; None otherwise. While the
    trial runs, a stopped sweep's request to stop it sets STOP here (see `_stop_when_asked`)."""
    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    sweeper = hydra_cfg.sweeper
    if hydra_cfg.mode != RunMode.MULTIRUN or sweeper.get("_target_") != SWEEPER_TARGET:
        return None
    pruner = instantiate(sweeper.pruner, _execution_whitelist_=["optuna.pruners.*"])
    storage = open_storage(sweeper.storage)
    study = optuna.load_study(
        study_name=sweeper.study_name,
        storage=storage,
        sampler=optuna.samplers.RandomSampler(),  # this side never samples
        pruner=pruner,
    )
    trial_id = study._storage.get_trial_id_from_study_id_trial_number(
        study._study_id, hydra_cfg.job.num
    )
    _stop_when_asked(storage, trial_id, sweeper.heartbeat_interval)
    return SweepTrial(
        trial=optuna.trial.Trial(study, trial_id),
        study_name=study.study_name,
        parent_run_id=study.user_attrs.get(PARENT_RUN_ATTR),
    )


def _stop_when_asked(storage: RDBStorage, trial_id: int, interval: float) -> None:
    """Set STOP once the sweep asks the trial to stop (Ctrl-C or SIGTERM), looking every
    `interval` seconds from a thread until the trial ends. A signal reaches a job only in the
    sweep's process group on its machine: not Ray's workers, nor a job on another machine."""

    def watch() -> None:
        while not STOP.wait(interval):
            try:
                trial = storage.get_trial(trial_id)
            except Exception as error:  # a missed look must not end the run
                log.debug("cannot read trial %d: %s", trial_id, error)
                continue
            if STOP_ATTR in trial.system_attrs:
                request_stop(int(trial.system_attrs[STOP_ATTR]))
            elif trial.state.is_finished():
                return

    threading.Thread(target=watch, name=f"stop-watch-{trial_id}", daemon=True).start()
