"""Every option of every config group composes and runs, through the real CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import CONF_DIR, group_options, objectives, run_cli
from mlflow import MlflowClient

# logger and callbacks: fast_dev_run switches loggers off, so they get a real epoch below.
GROUPS = ["data", "model", "optimizer", "scheduler", "trainer"]
# Options needing what this machine may lack; each runs in a test of its own below.
# (The regression set and the other image sets: tests/test_tasks.py.)
ELSEWHERE = {
    "data": {"mnist", "fashion_mnist", "cifar10", "image_folder", "diabetes"},
    "trainer": {"gpu", "ddp"},
}


@pytest.mark.parametrize("group", sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir()))
def test_every_option_of_every_group_composes(group: str, compose_cfg):
    for option in group_options(group):
        assert compose_cfg(f"{group}={option}").hydra.runtime.choices[group] == option


@pytest.mark.cli
@pytest.mark.parametrize("group", GROUPS)
def test_each_option_runs_under_fast_dev_run(group: str, tmp_path: Path):
    options = [o for o in group_options(group) if o not in ELSEWHERE.get(group, set())]
    assert options
    result = run_cli(
        "-m", f"{group}={','.join(options)}", "trainer.fast_dev_run=true", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(objectives(result.stdout)) == len(options)


@pytest.mark.cli
def test_every_logger_and_callbacks_pair_records_a_real_epoch(tmp_path: Path):
    result = run_cli(
        "-m",
        # Two at once, MLflow not the first: its run still gets its outcome.
        "logger=mlflow,csv,none,[tensorboard,mlflow]",
        "callbacks=default,sweep,none",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=3",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(objectives(result.stdout)) == 12
    assert len(list(tmp_path.glob("multirun/*/*/*/csv/version_0/metrics.csv"))) == 3
    assert len(list(tmp_path.glob("multirun/*/*/*/tensorboard/events.out.tfevents.*"))) >= 3

    def count(name: str) -> int:
        return len(list(tmp_path.glob(f"multirun/*/*/*/checkpoints/{name}")))

    assert (count("best.ckpt"), count("last.ckpt")) == (8, 4)  # `sweep` keeps no last.ckpt
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [run.data.tags.get("outcome") for run in runs] == ["COMPLETE"] * 6


@pytest.mark.cli
def test_the_dataloader_path_runs_with_worker_processes(tmp_path: Path):
    result = run_cli(
        "data.loader=dataloader",
        "data.num_workers=2",
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=4",
        "logger=none",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert 0.0 < objectives(result.stdout)[0] <= 1.0


@pytest.mark.cli
def test_mnist_and_fashion_mnist_run(tmp_path: Path, mnist_dir: Path, fashion_dir: Path):
    for data, root in [("mnist", mnist_dir), ("fashion_mnist", fashion_dir)]:
        result = run_cli(
            f"data={data}", f"data.data_dir={root}", "trainer.fast_dev_run=true", cwd=tmp_path
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert len(objectives(result.stdout)) == 1


@pytest.mark.cli
def test_ddp_runs_two_cpu_processes(tmp_path: Path):
    result = run_cli(
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.precision=32-true",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=4",
        "logger=csv",
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "distributed_backend=gloo" in result.stderr + result.stdout
    assert "All distributed processes registered. Starting with 2 processes" in (
        result.stderr + result.stdout
    )


def test_gpu_trainer_composes_for_bf16_on_one_gpu(compose_cfg):
    cfg = compose_cfg("trainer=gpu")
    assert (cfg.trainer.accelerator, cfg.trainer.devices) == ("gpu", 1)
    assert cfg.trainer.precision == "bf16-mixed"


def test_default_trainer_picks_bf16_only_where_a_gpu_has_it(compose_cfg):
    expected = "bf16-mixed" if torch.cuda.is_available() else "32-true"
    assert compose_cfg().trainer.precision == expected


@pytest.mark.cli
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_trainer_runs(tmp_path: Path):
    result = run_cli("trainer=gpu", "trainer.fast_dev_run=true", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.cli
def test_the_cnn_trains_on_shifted_batches(tmp_path: Path):
    result = run_cli(
        "model=cnn",
        "data.shift=2",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=4",
        "logger=none",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert 0.0 < objectives(result.stdout)[0] <= 1.0
