"""What a trial gets of the machine when several run at once (`hydra.sweeper.resources`):
its thread count read from inside the trial, and the GPU its slot is packed on."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import optuna
import pytest
from conftest import ROOT, cli_env, run

from hydra_plugins.lit_tune_sweeper._resources import cpus
from hydra_plugins.lit_tune_sweeper.storage import open_storage

pytestmark = pytest.mark.cli


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ([], max(1, cpus() // 2)),  # loky's workers: joblib would give them as much
        # Every core to each (joblib alone would give cpu_count // n_jobs); torch caps its
        # threads at the core count, so a larger number reads back as that.
        ([f"hydra.sweeper.resources.threads={cpus()}"], cpus()),
        (["hydra.launcher.backend=multiprocessing"], max(1, cpus() // 2)),  # alone: every core
    ],
    ids=["auto", "every-core", "multiprocessing"],
)
def test_each_of_two_trials_at_once_gets_its_share_of_the_threads(
    overrides: list[str], expected: int, tmp_path: Path
):
    app = shutil.copytree(ROOT / "tests" / "foreign", tmp_path / "foreign")
    env = cli_env()
    env.pop("OMP_NUM_THREADS")  # as a user's shell has it: every core to a lone run
    command = [
        sys.executable,
        str(app / "threads.py"),
        "-m",
        "hydra/launcher=joblib",
        "hydra.sweeper.n_jobs=2",
        "hydra.sweeper.n_trials=4",
        "hydra.sweeper.mlflow.parent_run=false",
        *overrides,
    ]
    done = run(command, app, env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    storage = open_storage(f"sqlite:///{app}/optuna.db")
    study = optuna.load_study(study_name="foreign", storage=storage)
    assert [t.value for t in study.trials] == [expected] * 4
