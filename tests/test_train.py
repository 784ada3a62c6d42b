"""Real training through the CLI, read back from MLflow."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import objectives, run_cli
from mlflow import MlflowClient

EPOCHS = 10


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    cwd = tmp_path_factory.mktemp("digits")
    result = run_cli(
        "model=mlp",
        "optimizer=adam",
        f"trainer.max_epochs={EPOCHS}",
        "callbacks.early_stopping.patience=100",
        "experiment_name=digits",
        cwd=cwd,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return cwd, result.stdout


@pytest.mark.slow
def test_ten_epochs_on_digits_reach_95_percent(digits_run):
    _, stdout = digits_run
    (objective,) = objectives(stdout)
    assert objective >= 0.95


@pytest.mark.slow
def test_the_mlflow_run_holds_params_metrics_and_artifacts(digits_run):
    cwd, stdout = digits_run
    client = MlflowClient(f"sqlite:///{cwd}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name("digits")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"

    params = run.data.params
    assert params["optimizer._target_"] == "torch.optim.Adam"
    assert params["model.width"] == "256"
    assert params["trainer.max_epochs"] == str(EPOCHS)
    assert int(params["num_parameters"]) == 64 * 256 + 256 + 256 * 256 + 256 + 256 * 10 + 10
    assert "trainer.max_epochs=10" in run.data.tags["hydra.overrides"]

    for key in ["train/loss", "val/loss", "val/acc", "val/acc_best", "lr", "epoch_time"]:
        assert len(client.get_metric_history(run.info.run_id, key)) == EPOCHS, key
    assert run.data.metrics["val/acc_best"] == pytest.approx(objectives(stdout)[0], abs=1e-6)
    assert run.data.metrics["test/acc"] >= 0.9
    assert "test/loss" in run.data.metrics

    artifacts = set()
    folders = [""]
    while folders:
        for item in client.list_artifacts(run.info.run_id, folders.pop()):
            (folders.append if item.is_dir else artifacts.add)(item.path)
    assert {"config.yaml", "plots/learning_curves.png", "plots/confusion_matrix.png"} <= artifacts
    assert "best/best.ckpt" in artifacts

    local = Path(client.download_artifacts(run.info.run_id, "best/best.ckpt", str(cwd)))
    checkpoint = torch.load(local, weights_only=True)
    assert checkpoint["epoch"] < EPOCHS
    config = Path(client.download_artifacts(run.info.run_id, "config.yaml", str(cwd)))
    assert "_target_: lit_tune.models.MLP" in config.read_text()


def test_compile_runs_and_keeps_checkpoint_keys(tmp_path: Path):
    result = run_cli("compile=true", "trainer.max_epochs=1", "logger=none", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert 0.0 < objectives(result.stdout)[0] <= 1.0
    [checkpoint] = tmp_path.glob("outputs/*/*/checkpoints/best.ckpt")
    keys = torch.load(checkpoint, weights_only=True)["state_dict"].keys()
    assert keys and not any("_orig_mod" in key for key in keys)  # loads into an uncompiled net
