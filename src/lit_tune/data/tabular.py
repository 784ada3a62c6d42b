"""Tabular data: a CSV or Parquet file, or one of scikit-learn's bundled sets."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from lit_tune.config import ConfigError
from lit_tune.data.memory import InMemoryData, Task, split_off_test

# scikit-learn's bundled sets (no download): its loader and the task it poses.
BUNDLED: dict[str, Task] = {
    "breast_cancer": "binary",
    "wine": "multiclass",
    "iris": "multiclass",
    "diabetes": "regression",
}


class Tabular(InMemoryData):
    """One row per example: the feature columns (text columns one-hot encoded), standardised
    per feature with the training split's mean and std, and a target column: class labels
    (classification) or numbers (regression). Exactly one of `dataset` (a bundled set, as
    named in BUNDLED) and `path` (a .csv or .parquet file) says where the rows come from.

    `task: auto` reads a floating-point target as regression and any other as class labels
    (sorted; `class_names` keeps them). For regression it gives the module the training
    split's `target_mean` and `target_std`. Missing values are refused: fill or drop them first.
    """

    pixel_max = None  # a table, not images

    def __init__(
        self,
        batch_size: int,
        val_fraction: float,
        test_fraction: float,
        seed: int,
        dataset: str | None = None,
        path: str | None = None,
        target: str | None = None,
        features: list[str] | None = None,
        task: Literal["auto", "binary", "multiclass", "regression"] = "auto",
        **serve: Any,
    ) -> None:
        super().__init__(batch_size, val_fraction, seed, **serve)
        if (dataset is None) == (path is None):
            raise ConfigError(
                f"data.dataset={dataset}, data.path={path}: give exactly one, a bundled set "
                f"({', '.join(BUNDLED)}) or a .csv or .parquet file"
            )
        if dataset is not None and dataset not in BUNDLED:
            raise ConfigError(f"data.dataset={dataset}: one of {', '.join(BUNDLED)}")
        if path is not None and Path(path).suffix not in (".csv", ".parquet"):
            raise ConfigError(f"data.path={path}: a .csv or .parquet file")
        if task not in ("auto", "binary", "multiclass", "regression"):
            raise ConfigError(f"data.task={task}: one of auto, binary, multiclass, regression")
        self.test_fraction = test_fraction
        self.dataset, self.path, self.target = dataset, path, target
        self.features, self.wanted_task = features, task
        self._names: list[str] = []
        self._columns: list[str] = []

    def key(self) -> tuple[Any, ...]:
        where = Path(self.path).resolve() if self.path else None
        stamp = where.stat().st_mtime_ns if where and where.exists() else None
        features = tuple(self.features or ())
        return (self.dataset, str(where), stamp, self.target, features, self.wanted_task)

    def prepare_data(self) -> None:
        if self.path is not None and not Path(self.path).is_file():
            raise ConfigError(f"data.path={self.path}: no such file")

    def _frame(self) -> Any:
        """The rows as a pandas DataFrame whose column `target` is the target."""
        import pandas as pd

        if self.dataset is not None:
            from sklearn import datasets

            bunch = getattr(datasets, f"load_{self.dataset}")(as_frame=True)
            frame = bunch.frame
            self.target = "target"
            if BUNDLED[self.dataset] != "regression":  # labels by name, as a file would hold
                frame["target"] = bunch.target_names[bunch.target.to_numpy()]
            return frame
        path = Path(str(self.path))
        frame = pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)
        if self.target not in frame.columns:
            raise ConfigError(
                f"data.target={self.target}: name the target column of {path}; it has "
                f"{', '.join(map(str, frame.columns))}"
            )
        return frame

    def load(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        import pandas as pd

        frame = self._frame()
        where = f"data.dataset={self.dataset}" if self.dataset else f"data.path={self.path}"
        features = self.features or [c for c in frame.columns if c != self.target]
        unknown = [c for c in features if c not in frame.columns]
        if unknown:
            raise ConfigError(f"data.features: {where} has no column {', '.join(unknown)}")
        table = frame[[*features, self.target]]
        if table.isna().any().any():
            gaps = ", ".join(str(c) for c in table.columns[table.isna().any()])
            raise ConfigError(f"{where}: missing values in {gaps}; fill or drop them first")
        x = pd.get_dummies(table[features], dtype="float32")  # text columns one-hot
        labels = table[self.target]
        task = self.wanted_task
        if task == "auto":
            floating = pd.api.types.is_float_dtype(labels)
            task = "regression" if floating else "binary" if labels.nunique() == 2 else "multiclass"
        self._task: Task = task
        self._columns = [str(c) for c in x.columns]
        if task == "regression":
            y = torch.tensor(labels.to_numpy(dtype="float32"))
        else:
            self._names = sorted(labels.astype(str).unique())
            codes = labels.astype(str).map({name: i for i, name in enumerate(self._names)})
            y = torch.tensor(codes.to_numpy(dtype="int64"))
        features_tensor = torch.tensor(x.to_numpy(dtype="float32"))
        return split_off_test(features_tensor, y, self.test_fraction, self.seed)

    def found_while_loading(self) -> dict[str, Any]:
        return {"_task": self._task, "_names": self._names, "_columns": self._columns}

    @property
    def task(self) -> Task:  # type: ignore[override]
        self._raw()
        return self._task

    @property
    def feature_names(self) -> list[str]:
        """The input columns, in order (a text column as one 0/1 column per value)."""
        self._raw()
        return self._columns

    @property
    def class_names(self) -> list[str]:
        self._raw()
        return self._names

    @property
    def num_classes(self) -> int:  # type: ignore[override]
        if self.task == "regression":
            raise AttributeError("a regression data set has no classes")
        return len(self.class_names)

    @property
    def target_mean(self) -> float:
        self._regression_only("target_mean")
        return float(self._raw()[0]["train"][1].mean())

    @property
    def target_std(self) -> float:
        self._regression_only("target_std")
        return float(self._raw()[0]["train"][1].std())

    def _regression_only(self, name: str) -> None:
        if self.task != "regression":
            raise AttributeError(f"{name}: a classification data set has none")
