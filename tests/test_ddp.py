"""DDP inside a sweep trial, on CPU: `ddp_spawn` over two gloo processes reports once per
epoch and is pruned on every rank at once; plain `ddp` is refused in a sweep."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest
from conftest import run_cli
from mlflow import MlflowClient
from optuna.trial import TrialState

from hydra_plugins.lit_tune_sweeper.storage import open_storage
from lit_tune.data import Digits

pytestmark = pytest.mark.slow
EPOCHS = 2
SHORT = [
    "hparams_search=grid",
    "hydra/launcher=basic",
    "hydra.sweeper.n_trials=2",
    "optimizer=adam",
    f"trainer.max_epochs={EPOCHS}",
    "trainer.limit_train_batches=3",
    "callbacks.progress_bar.refresh_rate=0",
]
DDP = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true"]
GOOD, USELESS = 0.03, 1e-9  # learning rates: one learns in an epoch, one cannot


def test_ddp_spawn_trials_report_once_per_epoch_and_prune_every_rank(tmp_path: Path):
    # Trial 0 learns, trial 1 cannot: the median pruner, judging from trial 1 on, prunes it
    # after its first epoch. The study is made here so that the trials come in that order.
    storage = open_storage(f"sqlite:///{tmp_path}/mlruns/optuna.db")
    study = optuna.create_study(study_name="ddp", storage=storage, direction="maximize")
    for lr in (GOOD, USELESS):
        study.enqueue_trial({"optimizer.lr": lr})
    result = run_cli(
        "-m",
        *SHORT,
        f"optimizer.lr=choice({GOOD},{USELESS})",
        "hydra/sweeper/sampler=random",
        "hydra/sweeper/pruner=median",
        "hydra.sweeper.pruner.n_startup_trials=1",
        "hydra.sweeper.study_name=ddp",
        *DDP,
        "trainer.strategy=ddp_spawn",
        cwd=tmp_path,
        timeout=400,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    # Two processes for trial 0's fit and its test, and for trial 1's fit (pruned: no test).
    assert output.count("All distributed processes registered. Starting with 2 processes") == 3

    complete, pruned = optuna.load_study(study_name="ddp", storage=storage).trials
    assert complete.state == TrialState.COMPLETE and pruned.state == TrialState.PRUNED
    assert (complete.params["optimizer.lr"], pruned.params["optimizer.lr"]) == (GOOD, USELESS)
    # One report per epoch, at steps 1..E, from rank 0 only.
    assert sorted(complete.intermediate_values) == list(range(1, EPOCHS + 1))
    assert sorted(pruned.intermediate_values) == [1]

    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    # The sweep's and one per trial: the main process made it, rank 0 logged to it, rank 1
    # made none.
    assert len(runs) == 3
    (parent,) = [r for r in runs if r.data.tags.get("lit_tune.role") == "sweep"]
    trial_runs = [r for r in runs if r is not parent]
    assert sorted(int(r.data.tags["optuna.trial_number"]) for r in trial_runs) == [0, 1]
    n_val = validation_size()
    for run in trial_runs:
        trial = complete if run.data.tags["optuna.trial_number"] == "0" else pruned
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["outcome"] == trial.state.name
        history = client.get_metric_history(run.info.run_id, "val/acc")
        # Once per epoch, each epoch once: the epochs this trial trained on every rank (a
        # rank left training after the others stopped would hang the sweep).
        assert len(history) == len({m.step for m in history}) == len(trial.intermediate_values)
        for metric in history:
            # Reduced over both ranks: right answers out of the whole validation set.
            assert metric.value * n_val == pytest.approx(round(metric.value * n_val), abs=1e-3)
            assert 0 < metric.value < 1
    completed_run = next(r for r in trial_runs if r.data.tags["optuna.trial_number"] == "0")
    assert completed_run.info.status == "FINISHED"
    assert complete.value == pytest.approx(completed_run.data.metrics["val/acc_best"])
    assert complete.value == pytest.approx(max(complete.intermediate_values.values()))
    pruned_run = next(r for r in trial_runs if r is not completed_run)
    assert pruned_run.info.status == "KILLED"
    # What rank 0 held in its child process reached the run too.
    plots = {a.path for a in client.list_artifacts(completed_run.info.run_id, "plots")}
    expected = {"learning_curves", "lr_schedule", "confusion_matrix"}
    assert plots == {f"plots/{name}.png" for name in expected}


def validation_size() -> int:
    """The digits validation set's size. It shares no factor with the size of rank 0's half
    (every other example): a count of right answers out of one never equals a count out of
    the other, but for 0 and all."""
    data = Digits(batch_size=64, val_fraction=0.15, test_fraction=0.15, seed=42)
    data.setup("fit")
    size = sum(len(y) for _, y in data.val_dataloader())
    assert math.gcd(size, len(range(0, size, 2))) == 1
    return size


def test_plain_ddp_is_refused_in_a_sweep(tmp_path: Path):
    # Its other ranks would re-run `python train.py -m ...`: each a sweep of its own.
    result = run_cli(
        "-m", *SHORT, "hydra.sweeper.study_name=plain", *DDP, "trainer.strategy=ddp", cwd=tmp_path
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    refusal = (
        "ConfigError: trainer.strategy=ddp in a sweep (-m): Lightning starts each other rank "
        "by re-running this command, which starts a whole new sweep; use "
        "trainer.strategy=ddp_spawn"
    )
    assert refusal in output
    assert "Initializing distributed" not in output
    storage = open_storage(f"sqlite:///{tmp_path}/mlruns/optuna.db")
    assert [s.study_name for s in optuna.get_all_study_summaries(storage)] == ["plain"]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    # Nothing trained: each trial's run is the sweeper's record of its failure, no metrics.
    trial_runs = [r for r in runs if "optuna.trial_number" in r.data.tags]
    assert trial_runs
    for run in trial_runs:
        assert run.info.status == "FAILED" and not run.data.metrics
        assert run.data.tags["fail_reason"].startswith("ConfigError: trainer.strategy=ddp")
