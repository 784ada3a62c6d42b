"""The study's storage: opened so that parallel trials and sweeps started at once do not
break it, and refused where it cannot hold (SQLite on a network filesystem).

Public for apps and tools that open a sweep's study themselves; cheap to import (Hydra imports
every public module of a plugin at start-up).
"""

from __future__ import annotations

import fcntl
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._errors import ConfigError, first_line

if TYPE_CHECKING:
    from optuna.storages import RDBStorage

log = logging.getLogger(__name__)

SQLITE = "sqlite:///"


def open_storage(url: str, **kwargs: Any) -> RDBStorage:
    """An Optuna RDB storage; SQLite waits up to a minute for a lock instead of failing.
    A URL that names no database we can open is a ConfigError (password masked)."""
    from optuna.storages import RDBStorage
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
