"""Sweeps on several processes sharing one study in PostgreSQL, on a throwaway cluster of the
test's own: `initdb` in a temporary folder, loopback only, a free port, stopped and removed at
the end. The binaries are PostgreSQL's own, from the `pgserver` wheel of the dev extra (or
PG_BIN); the tests install nothing with apt and never touch a system cluster. `make postgres`
(a persistent server for users) is not what the tests run."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna
import psycopg
import pytest
from conftest import cli, cli_env, free_port, popen
from mlflow import MlflowClient
from optuna.trial import TrialState

from hydra_plugins.lit_tune_sweeper._study import counts
from hydra_plugins.lit_tune_sweeper.storage import open_storage
from lit_tune.tracking import RUN_STATUS

# Three sweeps of 12 trials on 2 cores: up to 900 s (the workers' own deadline).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]
USER = "lit_tune"
PASSWORD = "s3cret pg"  # a space and a word that must never reach a log


def binaries() -> Path:
    """PG_BIN, else the PostgreSQL binaries bundled in the pgserver wheel."""
    if "PG_BIN" in os.environ:
        return Path(os.environ["PG_BIN"])
    spec = importlib.util.find_spec("pgserver")
    assert spec and spec.submodule_search_locations, "pgserver (the dev extra) is not installed"
    return Path(spec.submodule_search_locations[0]) / "pginstall" / "bin"


def as_owner(command: list[str], owner: str | None) -> list[str]:
    # PostgreSQL refuses to run as root: CI is root, so the cluster belongs to `nobody`.
    return ["runuser", "-u", owner, "--", *command] if owner else command


@dataclass
class Cluster:
    url: str  # postgresql://USER:PASSWORD@127.0.0.1:port, no database
    folder: Path
    pid: int  # the postmaster's


@contextlib.contextmanager
def throwaway_cluster(*databases: str) -> Iterator[Cluster]:
    """A PostgreSQL server on 127.0.0.1 at a free port with `databases` owned by USER.
    Stopped and its folder removed on exit."""
    bin_dir = binaries()
    owner = "nobody" if os.geteuid() == 0 else None
    folder = Path(tempfile.mkdtemp(prefix="lit_tune-pg-"))
    if owner:
        shutil.chown(folder, owner)
    data, port = folder / "data", free_port()
    (folder / "pw").write_text(PASSWORD)
    if owner:
        shutil.chown(folder / "pw", owner)
    run = {"check": True, "capture_output": True, "text": True, "timeout": 120}
    try:
        subprocess.run(
            as_owner(
                [
                    str(bin_dir / "initdb"),
                    "-D",
                    str(data),
                    "-U",
                    USER,
                    f"--pwfile={folder}/pw",
                    "--auth=scram-sha-256",
                    "-E",
                    "UTF8",
                    "--no-instructions",
                ],
                owner,
            ),
            **run,
        )
        options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1"
        subprocess.run(
            as_owner(
                [
                    str(bin_dir / "pg_ctl"),
                    "-D",
                    str(data),
                    "-o",
                    options,
                    "-l",
                    str(folder / "server.log"),
                    "-w",
                    "start",
                ],
                owner,
            ),
            **run,
        )
        base = f"postgresql://{USER}:{PASSWORD.replace(' ', '%20')}@127.0.0.1:{port}"
        with psycopg.connect(f"{base}/postgres", autocommit=True) as connection:
            for name in databases:
                connection.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]
        pid = int((data / "postmaster.pid").read_text().split()[0])
        yield Cluster(base, folder, pid)
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(
                as_owner(
                    [str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"], owner
                ),
                **run,
            )
        shutil.rmtree(folder, ignore_errors=True)


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie waiting for its reaper does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def postgres_processes() -> set[int]:
    found = subprocess.run(["pgrep", "-x", "postgres"], capture_output=True, text=True)
    return {int(pid) for pid in found.stdout.split() if alive(int(pid))}


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except FileNotFoundError:
        return ""


def tree(folder: Path) -> dict[str, str]:
    """Every file under `folder` with a hash of its content (empty when there is no folder)."""
    return {
        str(path): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_the_throwaway_cluster_leaves_the_host_as_it_was():
    """Nothing under /etc/postgresql changes, and no server of ours is left running."""
    etc, before = Path("/etc/postgresql"), postgres_processes()
    config = tree(etc)
    with throwaway_cluster("probe") as cluster:
        with psycopg.connect(f"{cluster.url}/probe") as connection:
            assert connection.execute("SELECT 1").fetchone() == (1,)
        assert cluster.pid in postgres_processes() - before  # or the checks below prove nothing
    # pg_ctl's -w returns once the server has removed its pid file, a moment before it exits
    deadline = time.monotonic() + 5
    while alive(cluster.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(cluster.pid)
    assert not [pid for pid in postgres_processes() - before if str(cluster.folder) in cmdline(pid)]
    assert not cluster.folder.exists()
    assert tree(etc) == config


@pytest.fixture(scope="module")
def databases() -> Iterator[dict[str, str]]:
    """URLs of two new databases, `optuna` and `mlflow`: new, so that the workers create the
    tables together as on a fresh server."""
    with throwaway_cluster("optuna", "mlflow") as cluster:
        yield {kind: f"{cluster.url}/{kind}" for kind in ("optuna", "mlflow")}


def test_three_workers_share_one_study_in_postgresql(databases: dict[str, str], tmp_path: Path):
    """Three sweeps started at once, each its own process and seed, on one study whose
    runs go to the `mlflow` database: 12 trials, none lost or run twice, all under one
    MLflow parent run."""
    name = "pg"
    args = [
        "-m",
        "hparams_search=mlp",
        "trainer.max_epochs=2",
        "callbacks.progress_bar.refresh_rate=0",
        "hydra.sweeper.n_trials=12",
        f"hydra.sweeper.study_name={name}",
        f"hydra.sweeper.storage={databases['optuna']}",
        f"logger.mlflow.tracking_uri={databases['mlflow']}",
        # A space where no trial diverges: any FAIL would be the store's fault.
        "optimizer=adam",
        "optimizer.lr=tag(log, interval(0.0001, 0.01))",
    ]
    logs = [tmp_path / f"worker{seed}.log" for seed in range(3)]
    workers = []
    for seed, log in enumerate(logs):
        with log.open("w") as out:
            workers.append(
                popen(
                    cli(*args, f"hydra.sweeper.sampler.seed={seed}"),
                    tmp_path,
                    cli_env(),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )
    deadline = time.monotonic() + 900
    try:
        for worker in workers:
            worker.wait(timeout=max(deadline - time.monotonic(), 1))
    finally:
        for worker in workers:
            worker.kill()  # those still running, after a timeout
    for worker, log in zip(workers, logs, strict=True):
        output = log.read_text()
        assert worker.wait() == 0, output[-3000:]
        assert "Traceback" not in output, output[-3000:]
        assert PASSWORD not in output and PASSWORD.replace(" ", "%20") not in output

    study = optuna.load_study(study_name=name, storage=open_storage(databases["optuna"]))
    counted = [t for t in study.trials if counts(t)]
    assert sorted(t.number for t in counted) == list(range(12))
    assert {t.state for t in counted} <= {TrialState.COMPLETE, TrialState.PRUNED}
    assert not [t for t in study.trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    others = [t for t in study.trials if not counts(t)]
    assert all(t.user_attrs.get("skipped") for t in others)  # asked beyond the budget
    # Who ran what: each worker logs the trials it told Optuna of.
    told = [
        {int(n) for n in re.findall(r"trial (\d+) \(\d+/12 done\)", log.read_text())}
        for log in logs
    ]
    print("trials per worker:", [sorted(numbers) for numbers in told])
    assert sum(map(len, told)) == 12 and set().union(*told) == set(range(12))
    assert sum(bool(numbers) for numbers in told) >= 2  # shared, not one worker's alone

    client = MlflowClient(databases["mlflow"])
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string=f"tags.`optuna.study_name` = '{name}'",
    )
    (parent,) = [r for r in runs if r.data.tags.get("lit_tune.role") == "sweep"]
    assert parent.info.status == "FINISHED"
    children = [r for r in runs if "optuna.trial_number" in r.data.tags]
    assert sorted(int(r.data.tags["optuna.trial_number"]) for r in children) == list(range(12))
    for run in children:
        trial = study.trials[int(run.data.tags["optuna.trial_number"])]
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.info.run_name == f"{name}-{trial.number}"
        assert run.data.tags["outcome"] == trial.state.name
        assert run.info.status == RUN_STATUS[trial.state.name]
