"""Use the winner: the best checkpoint as an MLflow model (loaded without lit_tune), the sweep's
registered model and its `champion` alias, `eval`, `predict`, `make serve` and `best`, all
through the real commands; and their bad input, one line each."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import requests
from conftest import ROOT, cli, cli_env, make_server, run_cli
from conftest import run as run_command
from mlflow import MlflowClient

from hydra_plugins.lit_tune_sweeper.storage import open_storage
from lit_tune.data import Digits

# One worker runs them all, so that the module's sweep runs once (pyproject: --dist loadfile).
pytestmark = pytest.mark.slow
SHORT = ["trainer.max_epochs=3", "callbacks.progress_bar.refresh_rate=0"]
MID, BAD, GOOD = 1e-4, 1e-6, 0.01  # learning rates of Adam on digits, worst to best: BAD, MID, GOOD
SWEEP = [
    "-m",
    "hydra/sweeper=lit_tune",
    "hydra/sweeper/sampler=random",
    f"optimizer.lr=choice({GOOD},{MID},{BAD})",
    "hydra.sweeper.study_name=win",
    "callbacks=sweep",
    *SHORT,
]


def client(cwd: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{cwd}/mlruns/mlflow.db")


def env(cwd: Path) -> dict[str, str]:
    return {**cli_env(), "MLFLOW_TRACKING_URI": f"sqlite:///{cwd}/mlruns/mlflow.db"}


def run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`python train.py ARGS` in `cwd`, MLflow URIs resolved in its store."""
    return run_command(cli(*args), cwd, env(cwd))


def trial_run(cwd: Path, number: int):
    (found,) = client(cwd).search_runs(
        [e.experiment_id for e in client(cwd).search_experiments()],
        filter_string=(
            f"tags.`optuna.study_name` = 'win' and tags.`optuna.trial_number` = '{number}'"
        ),
    )
    return found


def has_model(cwd: Path, run_id: str) -> bool:
    experiments = [e.experiment_id for e in client(cwd).search_experiments()]
    found = client(cwd).search_logged_models(experiments, f"source_run_id = '{run_id}'")
    return len(found) == 1


def digits_test_split() -> tuple[np.ndarray, np.ndarray]:
    """The raw test images and labels of data=digits (its defaults)."""
    data = Digits(batch_size=64, val_fraction=0.15, test_fraction=0.15, seed=42)
    x, y = data._raw()[0]["test"]
    return x.float().numpy(), y.numpy()


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sweep of two trials (MID, then BAD), then resumed for one more (GOOD)."""
    cwd = tmp_path_factory.mktemp("winner")
    storage = open_storage(f"sqlite:///{cwd}/mlruns/optuna.db")
    study = optuna.create_study(study_name="win", storage=storage, direction="maximize")
    for lr in (MID, BAD):
        study.enqueue_trial({"optimizer.lr": lr})
    first = run_cli(*SWEEP, "hydra.sweeper.n_trials=2", cwd=cwd)
    assert first.returncode == 0, first.stderr[-3000:]
    version = client(cwd).get_model_version_by_alias("win", "champion")
    (cwd / "first_champion.json").write_text(json.dumps([version.version, version.run_id]))
    study.enqueue_trial({"optimizer.lr": GOOD})
    again = run_cli(*SWEEP, "hydra.sweeper.n_trials=3", cwd=cwd)
    assert again.returncode == 0, again.stderr[-3000:]
    return cwd


def test_the_best_trial_is_registered_and_champion_moves_to_a_better_one(swept: Path):
    runs = [trial_run(swept, n) for n in range(3)]
    # mlflow_model=best: trial 0 was the best so far, trial 1 (BAD) was not, trial 2 is.
    assert [has_model(swept, r.info.run_id) for r in runs] == [True, False, True]
    first_version, first_run = json.loads((swept / "first_champion.json").read_text())
    assert first_run == runs[0].info.run_id
    champion = client(swept).get_model_version_by_alias("win", "champion")
    assert champion.run_id == runs[2].info.run_id
    assert int(champion.version) == int(first_version) + 1
    assert champion.source.startswith("models:/m-")


def test_the_model_loads_without_lit_tune_and_scores_the_test_accuracy(swept: Path):
    # In a fresh interpreter where importing lit_tune or the sweeper fails.
    x, y = digits_test_split()
    np.save(swept / "test_x.npy", x)
    script = f"""
import sys, json, numpy as np
sys.modules["lit_tune"] = None
sys.modules["hydra_plugins"] = None
import mlflow
model = mlflow.pyfunc.load_model("models:/win@champion")
meta = model.metadata
p = model.predict(np.load({str(swept / "test_x.npy")!r}))
print(json.dumps({{"p": p.tolist(), "example": meta.saved_input_example_info is not None,
    "inputs": meta.get_input_schema().inputs[0].shape, "meta": meta.metadata}}))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], env=env(swept), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    probabilities = np.array(answer["p"])
    assert probabilities.shape == (len(y), 10)
    np.testing.assert_allclose(probabilities.sum(1), 1, atol=1e-5)
    assert answer["example"] and answer["inputs"] == [-1, 1, 8, 8]
    assert answer["meta"]["outputs"] == "probabilities" and answer["meta"]["pixel_max"] == 16
    # Raw images in, the run's own test accuracy out: the normalisation is inside the model.
    accuracy = float((probabilities.argmax(1) == y).mean())
    best = trial_run(swept, 2)
    assert accuracy == pytest.approx(best.data.metrics["test/acc"], abs=1e-6)


def test_eval_of_the_champion_repeats_its_test_and_is_recorded(swept: Path):
    done = run(swept, "eval", "models:/win@champion")
    assert done.returncode == 0, done.stderr[-3000:]
    best = trial_run(swept, 2)
    (evaluation,) = client(swept).search_runs(
        [best.info.experiment_id], filter_string="tags.`lit_tune.evaluates` != ''"
    )
    assert evaluation.data.tags["lit_tune.evaluates"] == best.info.run_id
    assert evaluation.info.status == "FINISHED"
    assert evaluation.data.params["optimizer.lr"] == str(GOOD)
    assert evaluation.data.metrics["test/acc"] == best.data.metrics["test/acc"]


def test_best_prints_a_command_that_retrains_the_trial_to_the_same_metrics(swept: Path):
    done = run(swept, "best", "win")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "best trial 2 of 3 completed" in done.stdout
    assert f"optimizer.lr = {GOOD}" in done.stdout
    (line,) = [x for x in done.stdout.splitlines() if x.startswith("retrain: ")]
    words = line.removeprefix("retrain: ").split()
    assert words[:2] == ["python", str(ROOT / "train.py")]
    retrained = run(swept, *words[2:])
    assert retrained.returncode == 0, retrained.stderr[-3000:]
    best = trial_run(swept, 2)
    experiment = best.info.experiment_id
    (single,) = client(swept).search_runs(
        [experiment], filter_string="attributes.run_name LIKE 'run-%'"
    )
    for metric in ("val/acc_best", "test/acc", "test/loss"):
        assert single.data.metrics[metric] == best.data.metrics[metric], metric

    # --save: the same config as experiment=win_best, in the project's own config folder.
    project = swept / "project"
    (project / "conf").mkdir(parents=True)
    (project / "pyproject.toml").write_text('[tool.lit_tune]\nconfig_dir = "conf"\n')
    (project / "mlruns").symlink_to(swept / "mlruns")
    saved = run(project, "best", "win", "--save", "win_best")
    assert saved.returncode == 0, saved.stderr[-3000:]
    text = (project / "conf" / "experiment" / "win_best.yaml").read_text()
    assert f"lr: {GOOD}" in text and "override /callbacks: sweep" in text
    composed = run(project, "--cfg", "job", "experiment=win_best")
    assert composed.returncode == 0, composed.stderr[-2000:]
    assert f"lr: {GOOD}" in composed.stdout and "max_epochs: 3" in composed.stdout


def test_make_serve_answers_as_the_model_does_in_process_and_refuses_bad_input(
    swept: Path, tmp_path: Path
):
    import mlflow

    x, _ = digits_test_split()
    mlflow.set_tracking_uri(f"sqlite:///{swept}/mlruns/mlflow.db")
    expected = mlflow.pyfunc.load_model("models:/win@champion").predict(x[:6])
    with make_server(
        "serve", tmp_path / "serve.log", MODEL="models:/win@champion", MLRUNS=str(swept / "mlruns")
    ) as url:
        assert url.startswith("http://127.0.0.1:")
        answer = requests.post(f"{url}/invocations", json={"inputs": x[:6].tolist()}, timeout=60)
        assert answer.status_code == 200, answer.text
        np.testing.assert_allclose(np.array(answer.json()["predictions"]), expected, atol=1e-6)
        flat = requests.post(f"{url}/invocations", json={"inputs": [[1.0, 2.0]]}, timeout=60)
        assert flat.status_code == 400 and "does not match expected shape" in flat.text
        words = requests.post(f"{url}/invocations", json={"inputs": [[["a"]]]}, timeout=60)
        assert words.status_code == 400 and "could not convert string to float" in words.text


def test_predict_writes_class_names_or_probabilities_for_files_and_folders(swept: Path):
    from PIL import Image

    x, y = digits_test_split()
    np.save(swept / "some.npy", x[:20])
    done = run(
        swept, "predict", "models:/win@champion", "some.npy", "-o", "p.csv", "--probabilities"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    table = pd.read_csv(swept / "p.csv")
    assert list(table.columns) == ["prediction", *(f"p_{i}" for i in range(10))]
    probabilities = table[[f"p_{i}" for i in range(10)]].to_numpy()
    assert (table["prediction"].to_numpy() == probabilities.argmax(1)).all()
    assert (table["prediction"].to_numpy() == y[:20]).mean() > 0.8
    # The same images as PNG files (grey 0..16 scaled to 0..255): the same answers.
    folder = swept / "images"
    folder.mkdir()
    for i in range(20):
        Image.fromarray((x[i, 0] * 255 / 16).round().astype(np.uint8)).save(folder / f"{i:02}.png")
    done = run(swept, "predict", "models:/win@champion", "images", "-o", "f.csv")
    assert done.returncode == 0, done.stderr[-3000:]
    files = pd.read_csv(swept / "f.csv")
    assert list(files.columns) == ["file", "prediction"]
    assert (files["prediction"].to_numpy() == table["prediction"].to_numpy()).all()


def test_a_table_model_predicts_class_names_and_a_regressor_values(tmp_path: Path):
    from sklearn.datasets import load_breast_cancer, load_diabetes

    done = run_cli("data=breast_cancer", *SHORT, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    bunch = load_breast_cancer(as_frame=True)
    frame = bunch.frame.copy()
    frame["target"] = bunch.target_names[bunch.target.to_numpy()]
    frame.sample(frac=1, random_state=0).iloc[:300].to_csv(tmp_path / "cancer.csv", index=False)
    (trained,) = client(tmp_path).search_runs(
        [e.experiment_id for e in client(tmp_path).search_experiments()]
    )
    uri = f"runs:/{trained.info.run_id}"
    done = run(tmp_path, "predict", uri, "cancer.csv", "-o", "cancer_p.csv")
    assert done.returncode == 0, done.stderr[-3000:]
    answers = pd.read_csv(tmp_path / "cancer_p.csv")
    truth = pd.read_csv(tmp_path / "cancer.csv")["target"]
    assert set(answers["prediction"]) <= {"benign", "malignant"}
    assert (answers["prediction"] == truth).mean() > 0.85
    # eval on another datamodule: the same model, tested on a CSV of ours.
    done = run(
        tmp_path,
        "eval",
        uri,
        "data=tabular",
        "data.dataset=null",
        "data.path=cancer.csv",
        "data.target=target",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (evaluation,) = client(tmp_path).search_runs(
        [trained.info.experiment_id], filter_string="tags.`lit_tune.evaluates` != ''"
    )
    assert evaluation.data.params["data.path"] == "cancer.csv"
    assert evaluation.data.metrics["test/acc"] > 0.85

    regression = tmp_path / "regression"
    regression.mkdir()
    done = run_cli("data=diabetes", "module=regressor", *SHORT, cwd=regression)
    assert done.returncode == 0, done.stderr[-3000:]
    diabetes = load_diabetes(as_frame=True).frame
    diabetes.to_csv(regression / "d.csv", index=False)
    (trained,) = client(regression).search_runs(
        [e.experiment_id for e in client(regression).search_experiments()]
    )
    done = run(regression, "predict", f"runs:/{trained.info.run_id}", "d.csv", "-o", "d_p.csv")
    assert done.returncode == 0, done.stderr[-3000:]
    values = pd.read_csv(regression / "d_p.csv")
    assert list(values.columns) == ["target"]
    # In the target's units (a standardised answer would be off by its mean, about 150).
    error = (values["target"] - diabetes["target"]).abs().mean()
    assert error < diabetes["target"].std()


def test_bad_input_to_the_winners_commands_fails_in_one_line(swept: Path, tmp_path: Path):
    checkpoint = next((swept / "multirun").glob("*/*/2/checkpoints/best.ckpt"))
    storage = open_storage(f"sqlite:///{swept}/mlruns/optuna.db")
    empty = optuna.create_study(study_name="empty", storage=storage)
    empty.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))
    cases = {
        ("eval", "models:/win@nobody"): "models:/win@nobody: in sqlite",
        ("eval", "models:/nothing/1"): "models:/nothing/1: in sqlite",
        ("predict", "models:/win@nobody", "some.npy"): "models:/win@nobody: no MLflow model",
        ("eval", str(checkpoint), "model.width=32"): "its weights do not fit the configured module",
        ("best", "empty"): "study empty: no trial has completed (1 FAIL)",
        (
            "best",
            "nosuch",
        ): "study nosuch: not in sqlite:///mlruns/optuna.db; studies there: empty, win",
        (
            "mlflow_model=sometimes",
            "trainer.max_epochs=1",
        ): "mlflow_model=sometimes: must be one of best, every, none",
    }
    before = len(
        client(swept).search_runs([e.experiment_id for e in client(swept).search_experiments()])
    )
    np.save(swept / "some.npy", np.zeros((2, 1, 8, 8), dtype=np.float32))
    for args, expected in cases.items():
        done = run(swept, *args)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2, (args, done.stderr[-2000:])
        assert lines[-1].startswith("Error: ") and expected in lines[-1], (args, lines[-3:])
    after = client(swept).search_runs([e.experiment_id for e in client(swept).search_experiments()])
    assert len(after) == before  # none of them made an MLflow run


def test_which_runs_log_their_model():
    from types import SimpleNamespace

    from lit_tune.export import wanted

    study = optuna.create_study(direction="maximize")
    trial = SimpleNamespace(optuna=SimpleNamespace(study=study))
    assert wanted("best", 0.1, None) and wanted("every", 0.1, None)
    assert not wanted("none", 0.1, None)
    assert wanted("best", 0.1, trial)  # the first trial to end is the best so far
    study.add_trial(optuna.trial.create_trial(value=0.5))
    assert wanted("best", 0.6, trial) and not wanted("best", 0.5, trial)
    assert not wanted("best", 0.4, trial) and wanted("every", 0.4, trial)
    assert not wanted("none", 0.9, trial)
    pareto = optuna.create_study(directions=["maximize", "minimize"])
    assert not wanted("best", 0.9, SimpleNamespace(optuna=SimpleNamespace(study=pareto)))
