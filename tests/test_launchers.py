"""Hydra's Ray and submitit launchers under the lit_tune sweeper, through the real CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import (
    assert_optuna_and_mlflow_agree,
    cli,
    cli_env,
    mlflow_runs,
    popen,
    run_cli,
)
from hydra._internal.callbacks import Callbacks
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.plugins import Plugins
from hydra.types import HydraContext
from mlflow import MlflowClient
from omegaconf import DictConfig
from optuna.trial import TrialState

from hydra_plugins.lit_tune_sweeper._errors import ConfigError
from hydra_plugins.lit_tune_sweeper._resources import gpu_override, gpus_to_share
from hydra_plugins.lit_tune_sweeper._study import counts
from hydra_plugins.lit_tune_sweeper.storage import sqlite_lock

# A local Ray head for this sweep only, light: two CPUs, no dashboard, the trials' output in
# their job folders (train.log) instead of echoed by the driver.
RAY = [
    "hydra/launcher=ray",
    "+hydra.launcher.ray.init.num_cpus=2",
    "+hydra.launcher.ray.init.include_dashboard=false",
    "+hydra.launcher.ray.init.log_to_driver=false",
]
EPOCHS = 3


@pytest.mark.slow
@pytest.mark.parametrize(
    "launcher", [RAY, ["hydra/launcher=submitit_local"]], ids=["ray", "submitit_local"]
)
def test_a_launched_sweep_prunes_and_records_every_trial(launcher: list[str], tmp_path: Path):
    result = run_cli(
        "-m",
        "hparams_search=mlp",
        *launcher,
        "hydra.sweeper.n_trials=4",
        "hydra.sweeper.n_jobs=2",
        f"trainer.max_epochs={EPOCHS}",
        "callbacks.progress_bar.refresh_rate=0",
        # Hyperband judges a trial after its first epoch; the first two trials to get there
        # are pruned whatever their value, so pruning happens whichever worker is first.
        "hydra/sweeper/pruner=hyperband",
        "hydra.sweeper.pruner.bootstrap_count=2",
        "hydra.sweeper.study_name=launched",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    study = assert_optuna_and_mlflow_agree(tmp_path, "launched")
    assert len(study.trials) == 4 and all(counts(t) for t in study.trials)
    assert sum(t.state == TrialState.PRUNED for t in study.trials) >= 2

    _, children = mlflow_runs(tmp_path, "launched")
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    for trial in study.trials:
        (run,) = children[trial.number]
        history = sorted(
            client.get_metric_history(run.info.run_id, "val/acc_best"), key=lambda m: m.step
        )
        # The job reported to Optuna after every epoch: what the pruner judged is what MLflow
        # recorded, and the value Optuna keeps is the run's val/acc_best.
        assert [trial.intermediate_values[s] for s in sorted(trial.intermediate_values)] == (
            pytest.approx([m.value for m in history])
        )
        assert sorted(trial.intermediate_values) == list(range(1, len(history) + 1))
        assert len(history) == (1 if trial.state == TrialState.PRUNED else EPOCHS)
        assert trial.value == pytest.approx(run.data.metrics["val/acc_best"])

    # Two at a time: some trial started while another ran.
    assert any(
        o.datetime_start < t.datetime_start < o.datetime_complete
        for t in study.trials
        for o in study.trials
    )
    # Every job, and submitit's folders, under the one sweep dir.
    (sweep_dir,) = tmp_path.glob("multirun/*/*")
    jobs = {p.name for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith(".")}
    assert jobs == {"0", "1", "2", "3"}
    if "submitit" in launcher[0]:
        assert len(list((sweep_dir / ".submitit").glob("*/*_result.pkl"))) == 4


@pytest.mark.slow
def test_ctrl_c_stops_the_trials_in_ray_workers(tmp_path: Path):
    # Ray's workers are not in the terminal's process group: no Ctrl-C reaches them, the
    # sweep asks them through the study.
    sweep = popen(
        cli(
            "-m",
            "hparams_search=mlp",
            *RAY,
            "hydra.sweeper.n_trials=3",
            "hydra.sweeper.n_jobs=2",
            "trainer.max_epochs=100000",  # only Ctrl-C ends them
            "callbacks.early_stopping.patience=100000",
            "callbacks.progress_bar.refresh_rate=0",
            "hydra/sweeper/pruner=none",
            "hydra.sweeper.study_name=ctrlc",
        ),
        cwd=tmp_path,
        env=cli_env(),
        start_new_session=True,  # a process group, as a terminal makes one
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _wait_for_running_trials(tmp_path, "ctrlc", 2, sweep)
        started = time.monotonic()
        os.killpg(sweep.pid, signal.SIGINT)
        output, _ = sweep.communicate(timeout=90)  # 100000 epochs take hours
    finally:
        if sweep.poll() is None:
            os.killpg(sweep.pid, signal.SIGKILL)
            sweep.wait()
    assert sweep.returncode == 130, output[-3000:]
    assert time.monotonic() - started < 60  # the trials stopped, they did not run to the end
    assert "Traceback" not in output
    study = assert_optuna_and_mlflow_agree(tmp_path, "ctrlc")  # their runs KILLED
    stopped = [t for t in study.trials if t.user_attrs.get("interrupted") == "Ctrl-C"]
    assert len(stopped) == 2 and all(t.state == TrialState.FAIL for t in stopped)
    assert sum(t.state == TrialState.WAITING for t in study.trials) == 2  # queued again


def _wait_for_running_trials(cwd: Path, name: str, n: int, sweep: subprocess.Popen) -> None:
    """Until `n` trials of study `name` are training (their MLflow runs RUNNING), and a bit."""
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline:
        time.sleep(1.0)
        assert sweep.poll() is None, sweep.communicate()[0][-3000:]
        if not (cwd / "mlruns" / "mlflow.db").exists():
            continue
        with sqlite_lock(f"sqlite:///{cwd}/mlruns/mlflow.db"):  # made while we look?
            _, children = mlflow_runs(cwd, name)
        if sum(r.info.status == "RUNNING" for runs in children.values() for r in runs) == n:
            time.sleep(3.0)
            return
    pytest.fail(f"{n} trials were not running after 150 s")


@pytest.mark.parametrize("launcher", ["ray", "submitit_local", "submitit_slurm"])
def test_each_launcher_composes_with_the_sweeper(launcher: str, compose_cfg):
    cfg = compose_cfg("hparams_search=mlp", f"hydra/launcher={launcher}", "hydra.sweeper.n_jobs=4")
    sweeper = built_sweeper(cfg)
    assert type(sweeper.launcher).__name__ != "BasicLauncher"  # so n_jobs trials at a time
    if launcher.startswith("submitit"):  # its job folders in the sweep dir, not one beside it
        folder = sweeper.launcher.params["submitit_folder"]
        assert folder == f"{cfg.hydra.sweep.dir}/.submitit/%j"


@pytest.mark.parametrize(
    "overrides, shared",
    [
        (["hydra/launcher=joblib"], 3),  # the default trainer: one device, the GPU if any
        (["hydra/launcher=joblib", "trainer=gpu"], 3),
        (["hydra/launcher=joblib", "trainer=cpu"], 0),
        (["hydra/launcher=joblib", "trainer=ddp"], 0),  # every GPU to each trial
        (["hydra/launcher=ray"], 0),  # Ray hands out GPUs itself (ray.remote.num_gpus)
    ],
)
def test_local_worker_processes_take_a_gpu_each(
    overrides: list[str], shared: int, compose_cfg, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    cfg = compose_cfg("hparams_search=mlp", "hydra.sweeper.n_jobs=4", *overrides)
    sweeper = built_sweeper(cfg)
    assert gpus_to_share(sweeper.launcher, sweeper.gpu_override, 4, "auto") == shared
    # Four trial slots on three GPUs: the fourth takes turns with the first.
    template = "trainer.devices=[{gpu}]"
    assert [gpu_override(slot, 3, template) for slot in range(4)] == [
        [f"trainer.devices=[{gpu}]"] for gpu in (0, 1, 2, 0)
    ]
    # One GPU or none: nothing to share; no template (another app): nothing to override.
    assert gpu_override(0, 1, template) == gpu_override(2, 0, template) == []
    assert gpu_override(1, 3, None) == []


@pytest.mark.parametrize(
    "n_jobs, per_gpu, spread",
    [(4, "auto", 3), (4, 2, 2), (4, 4, 1), (2, 1, 2), (1, "auto", 3)],
)
def test_trials_per_gpu_packs_the_slots_on_as_few_gpus_as_it_needs(
    n_jobs: int, per_gpu: object, spread: int, compose_cfg, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    cfg = compose_cfg(
        "hparams_search=mlp", "hydra/launcher=joblib", f"hydra.sweeper.n_jobs={n_jobs}"
    )
    sweeper = built_sweeper(cfg)
    gpus = gpus_to_share(sweeper.launcher, sweeper.gpu_override, n_jobs, per_gpu)
    assert gpus == spread
    placed = [gpu_override(slot, gpus, sweeper.gpu_override) for slot in range(n_jobs)]
    if spread == 1:  # one GPU: each trial takes the first, as with no override
        assert placed == [[]] * n_jobs
    else:
        on = [int(o[0].removeprefix("trainer.devices=[").removesuffix("]")) for o in placed]
        assert max(on.count(g) for g in set(on)) == -(-n_jobs // spread)  # ceil


def test_more_trials_than_the_gpus_hold_are_refused(compose_cfg, monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    cfg = compose_cfg("hparams_search=mlp", "hydra/launcher=joblib", "hydra.sweeper.n_jobs=8")
    sweeper = built_sweeper(cfg)
    with pytest.raises(ConfigError, match=r"trials_per_gpu=2: n_jobs=8 .* need 4 GPUs, .* has 3"):
        gpus_to_share(sweeper.launcher, sweeper.gpu_override, 8, 2)


def built_sweeper(cfg: DictConfig) -> Any:
    """Our sweeper, set up from `cfg` as Hydra does before a sweep (its launcher built)."""
    context = HydraContext(
        config_loader=GlobalHydra.instance().config_loader(), callbacks=Callbacks()
    )
    HydraConfig.instance().set_config(cfg)  # as Hydra has before it builds the sweeper
    wrapper = Plugins.instance().instantiate_sweeper(
        hydra_context=context, task_function=lambda cfg: 0.0, config=cfg
    )
    return wrapper.sweeper  # type: ignore[attr-defined]
