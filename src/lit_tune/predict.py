"""`lit-tune predict MODEL INPUT [-o OUTPUT]`: a logged model's answers for a file or a folder.

MODEL is an MLflow model (lit_tune/export.py): `models:/name@champion`, `models:/name/3`,
`runs:/<run id>` (its model `model`) or a model folder. INPUT is a CSV file (one example a
row: the model's input columns by name, for a table; else the example's values in order), an
NPY array of examples, or a folder of images (each resized to the model's input size, its
pixels scaled to the data's raw range). OUTPUT (default predictions.csv) gets a row per
example: the class name (or index) for a classifier, with each class's probability under
`--probabilities`; the values for a regressor. An OUTPUT ending in .npy gets the raw array.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import numpy as np

from lit_tune.config import ConfigError, first_line
from lit_tune.evaluate import tracking_uri
from lit_tune.export import MODEL_NAME

IMAGES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def load(uri: str) -> Any:
    """The pyfunc model at `uri` (`runs:/<id>` means its model `model`)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    if uri.startswith("runs:/") and uri.count("/") == 1:
        uri = f"{uri}/{MODEL_NAME}"
    mlflow.set_tracking_uri(tracking_uri())
    try:
        return mlflow.pyfunc.load_model(uri)
    except (MlflowException, OSError) as error:
        raise ConfigError(f"{uri}: no MLflow model there ({first_line(error)})") from None


def _input_shape(model: Any) -> tuple[int, ...]:
    """One example's shape, from the model's signature."""
    spec = model.metadata.get_input_schema().inputs[0]
    return tuple(int(s) for s in spec.shape[1:])


def read_input(path: Path, model: Any) -> tuple[np.ndarray, list[str] | None]:
    """The examples in `path` as float32 (N, *input shape), and their file names for a
    folder of images; ConfigError naming what does not fit."""
    shape = _input_shape(model)
    meta = model.metadata.metadata or {}
    names = None
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGES)
        if not files:
            raise ConfigError(f"{path}: no images there ({', '.join(sorted(IMAGES))})")
        if len(shape) != 3 or meta.get("pixel_max") is None:
            raise ConfigError(f"{path}: a folder of images, but the model takes {shape}")
        x = np.stack([_image(f, shape, float(meta["pixel_max"])) for f in files])
        names = [f.name for f in files]
    elif path.suffix.lower() == ".npy":
        x = np.load(path, allow_pickle=False)
    elif path.suffix.lower() == ".csv":
        x = _table(path, meta.get("feature_names"))
    else:
        raise ConfigError(f"{path}: not a .csv or .npy file nor a folder of images")
    x = np.asarray(x, dtype=np.float32)
    if x.shape[1:] != shape:
        if x.ndim >= 2 and int(np.prod(x.shape[1:])) == int(np.prod(shape)):
            x = x.reshape(len(x), *shape)
        else:
            raise ConfigError(f"{path}: examples of shape {x.shape[1:]}; the model takes {shape}")
    return x, names


def _table(path: Path, columns: list[str] | None) -> np.ndarray:
    """A CSV's rows; with the model's input `columns`, those by name (text columns one-hot,
    as in training)."""
    import pandas as pd

    frame = pd.read_csv(path)
    if columns is None:
        return frame.to_numpy(dtype=np.float32)
    encoded = pd.get_dummies(frame, dtype="float32")
    text = [str(c) for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c])]
    missing = [
        c
        for c in columns
        if c not in encoded.columns and not any(c.startswith(f"{t}_") for t in text)
    ]
    if missing:
        raise ConfigError(
            f"{path}: no column {', '.join(missing)}; the model takes {', '.join(columns)}"
        )
    return encoded.reindex(columns=columns, fill_value=0.0).to_numpy(dtype=np.float32)


def _image(path: Path, shape: tuple[int, ...], pixel_max: float) -> np.ndarray:
    from PIL import Image

    channels, height, width = shape
    with Image.open(path) as opened:
        image = opened.convert("L" if channels == 1 else "RGB").resize((width, height))
    pixels = np.asarray(image, dtype=np.float32) / 255.0 * pixel_max
    return pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)


def write_output(
    path: Path,
    answers: np.ndarray,
    meta: dict[str, Any],
    names: list[str] | None,
    probabilities: bool,
) -> None:
    """The answers as `path` (.npy: as they are; else a CSV, see this module's docstring)."""
    import pandas as pd

    if path.suffix.lower() == ".npy":
        np.save(path, answers)
        return
    frame = pd.DataFrame({"file": names}) if names else pd.DataFrame(index=range(len(answers)))
    if meta.get("outputs") == "probabilities":
        classes = [str(c) for c in meta.get("class_names") or range(answers.shape[1])]
        frame["prediction"] = [classes[i] for i in answers.argmax(1)]
        if probabilities:
            for i, name in enumerate(classes):
                frame[f"p_{name}"] = answers[:, i]
    else:
        values = answers.reshape(len(answers), -1)
        target = meta.get("target")
        heads = [str(target)] if values.shape[1] == 1 and isinstance(target, str) else None
        for i in range(values.shape[1]):
            frame[
                heads[i] if heads else f"prediction_{i}" if values.shape[1] > 1 else "prediction"
            ] = values[:, i]
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)


def main(argv: list[str], program: str) -> None:
    """Write a logged model's predictions for a file or a folder (this module's docstring)."""
    parser = argparse.ArgumentParser(
        prog=f"{program} predict",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "model", help="models:/NAME@ALIAS, models:/NAME/VERSION, runs:/ID, a folder"
    )
    parser.add_argument("input", type=Path, help="a .csv or .npy file, or a folder of images")
    parser.add_argument("-o", "--output", type=Path, default=Path("predictions.csv"))
    parser.add_argument("--probabilities", action="store_true", help="each class's probability")
    args = parser.parse_args(argv)
    if not args.input.exists():
        raise ConfigError(f"{args.input}: no such file or folder")
    model = load(args.model)
    x, names = read_input(args.input, model)
    answers = np.asarray(model.predict(x))
    write_output(args.output, answers, model.metadata.metadata or {}, names, args.probabilities)
    print(f"{len(answers)} predictions written to {os.fspath(args.output)}")
