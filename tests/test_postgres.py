"""Sweeps on several processes sharing one study in PostgreSQL, as `make postgres` sets it up
(installed with apt and started when missing: CI runs just `make test`)."""

from __future__ import annotations

import os
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import optuna
import psycopg
import pytest
from conftest import cli, cli_env, make_command
from mlflow import MlflowClient
from optuna.trial import TrialState

from hydra_plugins.lit_tune_sweeper._study import counts
from hydra_plugins.lit_tune_sweeper.storage import open_storage
from lit_tune.tracking import RUN_STATUS

pytestmark = pytest.mark.slow
# `make test PG_PORT=... PG_PASSWORD=...` reaches us through the environment (the Makefile
# exports them); the defaults are the Makefile's.
PORT = os.environ.get("PG_PORT", "5432")
USER = os.environ.get("PG_USER", "lit_tune")
PASSWORD = os.environ.get("PG_PASSWORD", "lit_tune")


def make_postgres(**variables: str) -> str:
    result = subprocess.run(
        make_command("postgres", PG_PORT=PORT, PG_USER=USER, PG_PASSWORD=PASSWORD, **variables),
        capture_output=True,
        text=True,
        timeout=900,  # apt-get install on a fresh machine
    )
    if result.returncode != 0:
        pytest.fail(f"make postgres failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    return result.stdout


def query(sql: str) -> list[tuple]:
    """Run `sql` as our role on database `postgres`, outside a transaction (DROP DATABASE)."""
    with psycopg.connect(
        host="127.0.0.1",
        port=PORT,
        user=USER,
        password=PASSWORD,
        dbname="postgres",
        autocommit=True,
    ) as connection:
        cursor = connection.execute(sql)  # type: ignore[arg-type]
        return cursor.fetchall() if cursor.description else []


@pytest.fixture(scope="module")
def databases() -> Iterator[dict[str, str]]:
    """URLs of two new databases of this run's own, `optuna` and `mlflow`: new, so that the
    workers create the tables together as on a fresh server. Dropped afterwards."""
    printed = make_postgres()  # the default databases; installs and starts it if need be
    assert f"storage=postgresql://{USER}:***@127.0.0.1:{PORT}/optuna" in printed
    started = "SELECT pg_postmaster_start_time()"
    before = query(started)
    names = {kind: f"test_{uuid.uuid4().hex[:12]}_{kind}" for kind in ("optuna", "mlflow")}
    make_postgres(PG_DATABASES=" ".join(names.values()))  # again: it adds them, no restart
    assert query(started) == before
    base = f"postgresql://{USER}:{quote(PASSWORD, safe='')}@127.0.0.1:{PORT}"
    yield {kind: f"{base}/{name}" for kind, name in names.items()}
    for name in names.values():
        query(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


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
                subprocess.Popen(
                    cli(*args, f"hydra.sweeper.sampler.seed={seed}"),
                    cwd=tmp_path,
                    env=cli_env(),
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
