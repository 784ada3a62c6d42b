"""What Lightning and Hydra users expect, through the real CLI: `debug=` runs, `--help`,
`--cfg`, shell completion, the LR and batch-size finders (`tune.*`), `experiment=` presets."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml
from conftest import cli, cli_env, group_options, objectives, run, run_cli, write_idx
from lightning.pytorch.tuner.lr_finder import _LRFinder
from mlflow import MlflowClient
from mlflow.entities import Run

from lit_tune.tuning import steepest_descent


def only_run(cwd: Path, experiment: str) -> tuple[MlflowClient, Run]:
    """The one MLflow run of `experiment` in cwd's store (and no run anywhere else)."""
    client = MlflowClient(f"sqlite:///{cwd}/mlruns/mlflow.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1
    assert client.get_experiment(runs[0].info.experiment_id).name == experiment
    return client, runs[0]


def steps(client: MlflowClient, run: Run, key: str) -> list[int]:
    return [m.step for m in client.get_metric_history(run.info.run_id, key)]


@pytest.mark.cli
def test_fast_dev_run_runs_one_batch_and_keeps_nothing(tmp_path: Path):
    result = run_cli("debug=fast_dev_run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "Running in `fast_dev_run` mode: will run the requested loop using 1 batch(es)" in output
    assert "`Trainer.fit` stopped: `max_steps=1` reached." in output
    assert len(objectives(result.stdout)) == 1
    assert not list(tmp_path.glob("outputs/**/*.ckpt"))
    assert not (tmp_path / "mlruns").exists()  # no MLflow store, so no run


@pytest.mark.cli
def test_limit_batches_runs_three_short_epochs_in_the_debug_experiment(tmp_path: Path):
    # debug= comes last: it shortens an experiment's 15 epochs and takes its MLflow experiment.
    result = run_cli("experiment=digits_cnn", "debug=limit_batches", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    client, run = only_run(tmp_path, "debug")  # not the main experiment
    assert run.info.status == "FINISHED"
    assert run.data.params["model._target_"] == "lit_tune.models.CNN"
    assert steps(client, run, "train/loss") == [4, 9, 14]  # 3 epochs of 5 batches
    # 2 batches of 64 validation and test examples: accuracies in 128ths (of 229 and 270
    # examples otherwise).
    for key in ["val/acc", "test/acc"]:
        correct = run.data.metrics[key] * 128
        assert correct == pytest.approx(round(correct), abs=1e-4), key


@pytest.mark.slow
def test_overfit_batches_drives_the_loss_of_two_fixed_batches_to_zero(tmp_path: Path):
    result = run_cli("debug=overfit_batches", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    client, run = only_run(tmp_path, "debug")
    assert steps(client, run, "train/loss") == list(range(1, 100, 2))  # 50 epochs of 2 batches
    # The same two batches each epoch; reshuffled ones end near 0.05 after 50 epochs.
    assert run.data.metrics["train/loss"] < 0.01
    assert not list(tmp_path.glob("outputs/**/*.ckpt"))


@pytest.mark.cli
def test_profiler_writes_its_report_to_the_output_folder(tmp_path: Path):
    result = run_cli("debug=profiler", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (output,) = tmp_path.glob("outputs/*/*")
    report = (output / "fit-profile.txt").read_text()
    assert report.startswith("FIT Profiler Report")
    # One epoch of digits: 1,298 training examples in 21 steps of 64, which Lightning sees
    # as 3 batches of up to 8 steps (module.steps_per_execution).
    assert re.search(r"\|\s+run_training_batch\s+\|\s+[\d.]+\s+\|\s+3\s+\|", report)
    assert (output / "test-profile.txt").is_file()


@pytest.mark.cli
def test_cfg_job_prints_the_composed_experiment_and_runs_nothing(tmp_path: Path):
    result = run_cli("--cfg", "job", "--resolve", "experiment=mnist_mlp", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    cfg = yaml.safe_load(result.stdout)
    assert cfg["data"]["_target_"] == "lit_tune.data.images.MNIST"
    assert cfg["data"]["data_dir"] == str(tmp_path / "data")  # resolved; need not exist
    assert (cfg["model"]["_target_"], cfg["model"]["hidden_layers"]) == ("lit_tune.models.MLP", 2)
    assert cfg["experiment_name"] == "mnist_mlp"
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize(
    ("experiment", "searched"),
    [
        ("mnist_mlp", {"optimizer.lr", "model.width", "data.batch_size"}),
        ("digits_cnn", {"optimizer.lr", "model.channels", "model.dropout"}),
    ],
)
def test_each_experiment_brings_its_own_search(experiment: str, searched: set[str], compose_cfg):
    cfg = compose_cfg(f"experiment={experiment}")
    assert set(cfg.hydra.sweeper.params) == searched
    assert cfg.hydra.sweeper.sampler._target_.endswith("TPESampler")
    assert cfg.experiment_name == experiment


@pytest.mark.slow
def test_mnist_mlp_tunes_lr_width_and_batch_size(tmp_path: Path):
    raw = tmp_path / "MNIST" / "raw"  # a small MNIST in the real IDX layout
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in [("train", 600), ("t10k", 100)]:
        write_idx(raw / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(raw / f"{split}-labels-idx1-ubyte", np.arange(n) % 10)
    result = run_cli(
        "-m",
        "experiment=mnist_mlp",
        f"data.data_dir={tmp_path}",
        "hydra.sweeper.n_trials=2",
        "trainer.max_epochs=1",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    storage = f"sqlite:///{tmp_path}/mlruns/optuna.db"
    (summary,) = optuna.get_all_study_summaries(storage)
    trials = optuna.load_study(study_name=summary.study_name, storage=storage).trials
    assert len(trials) == 2
    for trial in trials:
        assert trial.state.name in ("COMPLETE", "PRUNED")
        assert set(trial.params) == {"optimizer.lr", "model.width", "data.batch_size"}
        assert 1e-4 <= trial.params["optimizer.lr"] <= 0.1
        assert 32 <= trial.params["model.width"] <= 1024
        assert trial.params["data.batch_size"] in (32, 64, 128, 256)


@pytest.mark.cli
def test_help_lists_every_config_group_with_its_options(tmp_path: Path):
    result = run_cli("--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    for group in ["debug", "experiment", "data", "model", "hparams_search"]:
        assert f"\n{group}: {', '.join(group_options(group))}\n" in result.stdout
    assert "tune:\n  scale_batch_size: false" in result.stdout  # and the config itself


@pytest.mark.cli
def test_shell_completion_offers_the_debug_options(tmp_path: Path):
    line = "python train.py debug=o"
    env = {**cli_env(), "COMP_LINE": line, "COMP_POINT": str(len(line))}
    args = cli("--shell-completion", "query=bash")
    result = run(args, tmp_path, env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["debug=overfit_batches"]


@pytest.mark.cli
def test_the_lr_finder_sets_the_rate_the_optimizer_trains_with(tmp_path: Path):
    args = ["optimizer=sgd", "optimizer.lr=1e-5", "tune.lr_find=true", "trainer.max_epochs=1"]
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (said,) = re.findall(r"Tuner: optimizer.lr 1e-05 -> (\S+)", result.stdout)
    lr = float(said)
    assert 1e-3 < lr < 1.0  # plain SGD from 1e-5: the finder raises it by orders of magnitude
    client, run = only_run(tmp_path, "lit_tune")
    assert float(run.data.params["optimizer.lr"]) == lr
    assert run.data.tags["tuned.optimizer.lr"] == f"1e-05 -> {said}"
    # What the LearningRateMonitor read from the optimizer at the first epoch.
    assert client.get_metric_history(run.info.run_id, "lr")[0].value == pytest.approx(lr)
    plots = [a.path for a in client.list_artifacts(run.info.run_id, "plots")]
    assert "plots/lr_find.png" in plots


@pytest.mark.cli
def test_the_batch_size_finder_sets_the_batch_size_the_run_trains_with(tmp_path: Path):
    result = run_cli(
        "tune.scale_batch_size=true",
        "tune.scale_batch_size_args.max_val=256",  # a CPU never runs out of memory
        "trainer.max_epochs=2",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Tuner: data.batch_size 64 -> 256" in result.stdout
    client, run = only_run(tmp_path, "lit_tune")
    assert run.data.params["data.batch_size"] == "256"
    assert run.data.tags["tuned.data.batch_size"] == "64 -> 256"
    # MLflow's step counts Lightning's batches: 1,298 examples are 6 steps of 256, one batch
    # of up to 8 steps (module.steps_per_execution) per epoch; with 64, 21 steps in 3 batches.
    assert steps(client, run, "train/loss") == [0, 1]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["-m", "experiment=mnist_mlp", "tune.lr_find=true"],
            "tune.lr_find=true: not in a sweep that searches optimizer.lr",
        ),
        (
            ["-m", "data.batch_size=32,64", "tune.scale_batch_size=true"],
            "tune.scale_batch_size=true: not in a sweep that searches data.batch_size",
        ),
        (["tune.lr_find=yes"], "tune.lr_find='yes': must be true or false"),
        (
            ["tune.scale_batch_size_args.mode=big"],
            "tune.scale_batch_size_args.mode='big': must be one of power, binsearch",
        ),
        (["tune.lr_find=true", "ckpt_path=last.ckpt"], "tune.lr_find=true: not with ckpt_path"),
    ],
    ids=["lr in a sweep", "batch size in a sweep", "not a boolean", "bad mode", "resume"],
)
@pytest.mark.cli
def test_a_finder_that_makes_no_sense_fails_in_one_line(args, expected: str, tmp_path: Path):
    (tmp_path / "last.ckpt").write_bytes(b"")
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and expected in errors[0], result.stderr[-3000:]
    assert "Traceback" not in result.stderr


def test_the_lr_suggestion_is_the_steepest_descent_against_log_lr():
    log_lr = np.linspace(-8, 0, 100)
    # Flat with a small wiggle, then a descent centred on lr = 1e-2, then a blow-up.
    losses = 3 - np.tanh(2 * (log_lr + 2)) + 0.01 * np.sin(40 * log_lr)
    losses += np.where(log_lr > -0.5, 10 * (log_lr + 0.5), 0)
    lrs, losses = (10**log_lr).tolist(), losses.tolist()
    lr = steepest_descent(lrs, losses)
    assert lr is not None and 0.007 < lr < 0.014
    # Lightning's own suggestion, against lr itself, takes a wiggle at the smallest rates. When
    # this fails, Lightning has fixed #21141: use finder.suggestion() and drop steepest_descent.
    lightning = _LRFinder("exponential", 1e-8, 1.0, 100)
    lightning.results = {"lr": lrs, "loss": losses}
    assert lightning.suggestion() < 1e-6
    assert steepest_descent([1e-3] * 12, [float("nan")] * 12) is None
