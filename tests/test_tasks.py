"""Tasks beyond 10-class images: regression, binary and multiclass tables (bundled, CSV,
Parquet), a folder of colour images, CIFAR-10; metrics from torchmetrics by config."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
from conftest import objectives, run_cli
from mlflow import MlflowClient
from PIL import Image

from lit_tune.config import ConfigError
from lit_tune.data import CIFAR10, ImageFolder, Tabular, memory

QUIET = ["callbacks.progress_bar.refresh_rate=0"]


def only_run(cwd: Path):
    client = MlflowClient(f"sqlite:///{cwd}/mlruns/mlflow.db")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return client, run


@pytest.mark.slow
def test_regression_on_diabetes_minimises_rmse_and_beats_the_mean(tmp_path: Path):
    result = run_cli(
        "data=diabetes", "module=regressor", "trainer.max_epochs=40", *QUIET, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    client, run = only_run(tmp_path)
    rmse = [m.value for m in client.get_metric_history(run.info.run_id, "val/rmse")]
    (objective,) = objectives(result.stdout)
    assert "objective val/rmse_best" in result.stdout
    assert objective == pytest.approx(min(rmse))  # minimised: the best is the smallest
    assert "val/r2" in run.data.metrics and "test/r2" in run.data.metrics
    # Predicting the training mean for every test patient: RMSE = that prediction's error.
    data = Tabular(
        batch_size=64, val_fraction=0.15, test_fraction=0.15, seed=42, dataset="diabetes"
    )
    (_, y_train), (_, y_test) = (data._raw()[0][s] for s in ("train", "test"))
    mean_rmse = float(((y_test - y_train.mean()) ** 2).mean().sqrt())
    assert run.data.metrics["test/rmse"] < 0.85 * mean_rmse
    assert run.data.metrics["test/r2"] > 0.2
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert "plots/confusion_matrix.png" not in plots and "plots/learning_curves.png" in plots


def test_a_regression_search_minimises(compose_cfg):
    cfg = compose_cfg("module=regressor", "data=diabetes", "hparams_search=mlp")
    assert cfg.objective.mode == "min"
    assert cfg.hydra.sweeper.direction == "minimize"
    assert cfg.callbacks.early_stopping.mode == cfg.callbacks.model_checkpoint.mode == "min"
    assert compose_cfg("objective.metric=val/r2_best", "module=regressor").objective.mode == "max"


@pytest.mark.slow
def test_binary_classification_on_breast_cancer_reaches_95_percent(tmp_path: Path):
    result = run_cli(
        "data=breast_cancer",
        "trainer.max_epochs=30",
        "+module.metrics.auroc={_target_:torchmetrics.AUROC,_partial_:true}",
        *QUIET,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    _, run = only_run(tmp_path)
    assert run.data.metrics["test/acc"] >= 0.95
    assert run.data.metrics["test/auroc"] >= 0.97
    assert "val/auroc_best" in run.data.metrics


@pytest.mark.slow
def test_the_objective_is_any_logged_metric_its_direction_its_own(tmp_path: Path):
    """Wine (3 classes) with F1 added by config, and F1 as the objective: maximised, since
    torchmetrics says higher is better."""
    result = run_cli(
        "data=wine",
        "+module.metrics.f1={_target_:torchmetrics.F1Score,_partial_:true,average:macro}",
        "objective.metric=val/f1_best",
        "trainer.max_epochs=15",
        *QUIET,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    client, run = only_run(tmp_path)
    f1 = [m.value for m in client.get_metric_history(run.info.run_id, "val/f1")]
    assert objectives(result.stdout) == [pytest.approx(max(f1))]
    assert run.data.params["callbacks.early_stopping.mode"] == "max"
    assert run.data.metrics["test/f1"] > 0.8


def test_a_csv_file_with_text_columns_and_text_labels(tmp_path: Path):
    rng = np.random.default_rng(0)
    n = 300
    frame = pd.DataFrame(
        {
            "size": rng.normal(10, 3, n),
            "colour": rng.choice(["red", "green", "blue"], n),
            "kind": np.where(rng.random(n) < 0.5, "cat", "dog"),
        }
    )
    path = tmp_path / "pets.csv"
    frame.to_csv(path, index=False)
    data = Tabular(64, 0.2, 0.2, seed=0, path=str(path), target="kind")
    assert data.task == "binary" and data.class_names == ["cat", "dog"]
    assert data.input_shape == (4,)  # size and three one-hot colours
    assert data.num_classes == data.num_outputs == 2
    data.setup()
    x = data.splits["train"][0]
    assert torch.allclose(x.mean(0), torch.zeros(4), atol=1e-5)  # standardised per feature
    assert torch.allclose(x.std(0), torch.ones(4), atol=1e-5)
    with pytest.raises(AttributeError):
        data.target_mean  # noqa: B018  (a classification set has no target statistics)


@pytest.mark.slow
def test_a_parquet_file_trains_a_regression(tmp_path: Path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 3))
    frame = pd.DataFrame(x, columns=["a", "b", "c"])
    frame["price"] = 100 + 30 * x[:, 0] - 20 * x[:, 1] + rng.normal(0, 1, 400)
    frame.to_parquet(tmp_path / "houses.parquet")
    result = run_cli(
        "data=tabular",
        "data.dataset=null",
        "data.path=houses.parquet",
        "data.target=price",
        "module=regressor",
        "trainer.max_epochs=30",
        "logger=csv",
        *QUIET,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # A linear target with noise 1 around a spread of 36: an RMSE near the noise.
    assert objectives(result.stdout)[0] < 6.0


def test_a_missing_value_is_refused_in_one_line(tmp_path: Path):
    path = tmp_path / "gaps.csv"
    pd.DataFrame({"a": [1.0, None, 3.0], "y": [0, 1, 0]}).to_csv(path, index=False)
    with pytest.raises(ConfigError, match=r"missing values in a; fill or drop them first"):
        Tabular(8, 0.2, 0.2, seed=0, path=str(path), target="y").setup()
    with pytest.raises(ConfigError, match=r"data.target=z: name the target column .* it has a, y"):
        Tabular(8, 0.2, 0.2, seed=0, path=str(path), target="z").setup()


def image_folder(root: Path, per_class: int = 24) -> Path:
    """Three classes of 12x10 RGB images, each class a colour (with noise), one of them red."""
    rng = np.random.default_rng(0)
    colours = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200)}
    for name, colour in colours.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.clip(rng.normal(colour, 40, (10, 12, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def test_an_image_folder_is_normalised_per_channel(tmp_path: Path):
    root = image_folder(tmp_path / "colours")
    data = ImageFolder(str(root), batch_size=16, seed=0, image_size=(8, 8))
    data.prepare_data()
    assert data.class_names == ["blue", "green", "red"] and data.input_shape == (3, 8, 8)
    data.setup()
    sizes = {name: len(split) for name, split in data.splits.items()}
    assert sizes == {"train": 58, "val": 7, "test": 7}  # 72 images
    x = torch.cat([images for images, _ in data.train_dataloader()])
    assert x.shape[1:] == (3, 8, 8)
    mean, std = x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3))
    assert torch.allclose(mean, torch.zeros(3), atol=1e-3)  # each channel its own statistics
    assert torch.allclose(std, torch.ones(3), atol=1e-2)
    (root / "red" / "note.txt").write_text("not an image")  # ImageFolder skips it
    with pytest.raises(ConfigError, match="no images in class folders"):
        ImageFolder(str(tmp_path / "nowhere"), batch_size=16, seed=0).prepare_data()


@pytest.mark.slow
def test_a_cnn_learns_an_image_folder_with_train_transforms(tmp_path: Path):
    image_folder(tmp_path / "colours")
    result = run_cli(
        "data=image_folder",
        "data.data_dir=colours",
        "data.image_size=[8,8]",
        "data.batch_size=8",  # 58 training images: several steps an epoch
        "data.train_transforms=[{_target_:torchvision.transforms.v2.RandomHorizontalFlip}]",
        "model=cnn",
        "model.channels=8",
        "trainer.max_epochs=6",
        *QUIET,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    _, run = only_run(tmp_path)
    assert run.data.metrics["test/acc"] >= 0.8  # colours: easy, and chance is 1/3
    assert run.data.params["model.input_shape"] == "[3, 8, 8]"


def cifar_files(root: Path, per_batch: int = 20) -> None:
    """CIFAR-10's python files in its layout, with random pixels (not the real ones)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        entry = {
            "data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
            "labels": [int(v) for v in rng.integers(0, 10, per_batch)],
        }
        (folder / name).write_bytes(pickle.dumps(entry))
    names = ["airplane", "automobile", "bird", "cat", "deer"]
    names += ["dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))


def test_cifar10_loads_as_colour_images_normalised_per_channel(tmp_path: Path, monkeypatch):
    cifar_files(tmp_path)
    data = CIFAR10(str(tmp_path), batch_size=8, val_fraction=0.1, seed=0, download=False)
    data.prepare_data()  # the files are there
    with pytest.raises(ConfigError, match="are not the originals"):
        data.setup()  # torchvision checks every file's md5 before unpickling it
    # The test's files pass for the originals: their md5s in torchvision's lists.
    cls = torchvision.datasets.CIFAR10
    folder = tmp_path / cls.base_folder
    md5 = {p.name: torchvision.datasets.utils.calculate_md5(str(p)) for p in folder.iterdir()}
    monkeypatch.setattr(cls, "train_list", [[n, md5[n]] for n, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [[n, md5[n]] for n, _ in cls.test_list])
    monkeypatch.setitem(cls.meta, "md5", md5["batches.meta"])
    monkeypatch.setattr(memory, "_loaded", {})
    data.setup()
    assert data.input_shape == (3, 32, 32) and data.num_classes == 10
    assert {k: len(v[1]) for k, v in data.splits.items()} == {"train": 90, "val": 10, "test": 20}
    x = data.splits["train"][0]
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert data.class_names[0] == "airplane"


@pytest.mark.cli
def test_cifar10_missing_says_which_files_to_put_where(tmp_path: Path):
    result = run_cli("data=cifar10", "data.data_dir=empty", "data.download=false", cwd=tmp_path)
    assert result.returncode == 2
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("Error: ")]
    assert f"no CIFAR10 files in {tmp_path}/empty/cifar-10-batches-py and download is off" in line
    assert "data_batch_1" in line and "test_batch" in line
