"""A run's best checkpoint as an MLflow model, ready to load, evaluate, predict and serve.

The model is MLflow's pytorch flavour saved as a torch.export graph (`pt2`): loading it
(`mlflow.pytorch.load_model`, `mlflow.pyfunc.load_model`, `mlflow models serve`) needs torch
and MLflow, not lit_tune nor the code of a user's module, and unpickles no code. It takes raw
examples (the datamodule's `input_transform`, the normalisation, is part of the graph) and
returns what a user wants back: class probabilities for lit_tune's classifier, values in the
targets' units for its regressor, a module of yours' forward output otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor, nn

from hydra_plugins.lit_tune_sweeper import Trial
from lit_tune.config import ConfigError, first_line
from lit_tune.module import Classifier, TaskModule

log = logging.getLogger(__name__)

# The logged model's name in its run; the sweep registers the best trial's (conf/hydra/
# sweeper/lit_tune.yaml, `mlflow.register`).
MODEL_NAME = "model"
SETTINGS = ("best", "every", "none")
EXAMPLES = 5  # rows of the input example logged with the model


class Served(nn.Module):
    """Raw examples -> the answer: `transform` (the datamodule's normalisation), the module,
    then the built-in modules' `answer` (probabilities, or values in the targets' units)."""

    def __init__(self, module: L.LightningModule, transform: nn.Module | None) -> None:
        super().__init__()
        self.transform = transform or nn.Identity()
        self.module = module

    def forward(self, x: Tensor) -> Tensor:
        output = self.module(self.transform(x))
        return self.module.answer(output) if isinstance(self.module, TaskModule) else output


def check_setting(value: Any) -> None:
    """Raise ConfigError unless `mlflow_model` is one of SETTINGS."""
    if value not in SETTINGS:
        raise ConfigError(f"mlflow_model={value}: must be one of {', '.join(SETTINGS)}")


def wanted(setting: str, value: float, sweep: Trial | None) -> bool:
    """Whether a run that scored `value` logs its model: `every` run; with `best`, a single
    run, and a sweep's trial that beats every trial its study has completed (so the study's
    best trial always has one; single-objective studies only)."""
    if setting != "best" or sweep is None:
        return setting != "none"
    study = sweep.optuna.study
    if len(study.directions) > 1:
        return False
    try:
        best = study.best_value
    except ValueError:  # no trial completed yet
        return True
    return value > best if study.direction.name == "MAXIMIZE" else value < best


@rank_zero_only
def log_best(
    trainer: L.Trainer, module: L.LightningModule, datamodule: L.LightningDataModule
) -> str | None:
    """Log the module with its best checkpoint's weights (read with `weights_only=True`) as
    the MLflow model `model` of the run's MLflow logger; return its URI (None: no MLflow run)."""
    logger = next((x for x in trainer.loggers if isinstance(x, MLFlowLogger)), None)
    if logger is None or logger.run_id is None:
        return None
    best = trainer.checkpoint_callback
    if isinstance(best, ModelCheckpoint) and best.best_model_path:
        checkpoint = torch.load(best.best_model_path, map_location="cpu", weights_only=True)
        module.load_state_dict(checkpoint["state_dict"])
    try:
        served = Served(module.cpu(), _transform(datamodule)).eval()
        example = _example(datamodule)
        with torch.no_grad():
            output = served(example)
        info = _log(served, example, output, _metadata(datamodule, module), logger)
    except Exception as error:  # a module with no forward, or one torch.export cannot trace:
        # the run stands, with its checkpoints, and says why it has no model
        reason = f"{type(error).__name__}: {first_line(error)}"
        log.warning("No MLflow model for run %s: %s", logger.run_id, reason)
        logger.experiment.set_tag(logger.run_id, "mlflow_model_error", reason[:5000])
        return None
    log.info("MLflow model %s (run %s)", info.model_uri, logger.run_id)
    return str(info.model_uri)


def _log(
    served: Served, example: Tensor, output: Tensor, metadata: dict[str, Any], logger: MLFlowLogger
) -> Any:
    import mlflow
    from mlflow.models import infer_signature

    with _fluent_run(logger):
        return mlflow.pytorch.log_model(
            served,
            name=MODEL_NAME,
            serialization_format="pt2",  # a graph: loads without lit_tune, unpickles no code
            input_example=example.numpy(),
            signature=infer_signature(example.numpy(), output.numpy()),
            # Named, not inferred: MLflow's inference imports the model in a subprocess.
            pip_requirements=[
                f"torch=={torch.__version__.split('+')[0]}",
                f"mlflow=={mlflow.__version__}",
            ],
            metadata=metadata,
        )


@contextmanager
def _fluent_run(logger: MLFlowLogger) -> Iterator[None]:
    """The logger's run as MLflow's active run (log_model has no run_id argument), on the
    logger's store; both as they were afterwards."""
    import mlflow

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(logger.experiment.tracking_uri)
    try:
        with mlflow.start_run(run_id=logger.run_id):
            yield
    finally:
        mlflow.set_tracking_uri(previous)


def _transform(datamodule: L.LightningDataModule) -> nn.Module | None:
    make = getattr(datamodule, "input_transform", None)
    return make() if callable(make) else None


def _example(datamodule: L.LightningDataModule) -> Tensor:
    """A few raw examples: the datamodule's `raw_examples`, else the first inputs its test
    (or validation) loader serves."""
    raw = getattr(datamodule, "raw_examples", None)
    if callable(raw):
        return raw(EXAMPLES).float().cpu()
    for attempt in (1, 2):
        for split in ("test", "val"):
            try:
                batch = next(iter(getattr(datamodule, f"{split}_dataloader")()))
            except Exception:  # no such loader, an empty one, or one not set up
                continue
            x = batch[0] if isinstance(batch, list | tuple) else batch
            return torch.as_tensor(x)[:EXAMPLES].float().cpu()
        if attempt == 1:  # under ddp_spawn, this process never set the datamodule up
            datamodule.setup("test")
    raise ValueError("the datamodule serves no test or validation batch to trace")


def _metadata(datamodule: L.LightningDataModule, module: L.LightningModule) -> dict[str, Any]:
    """What a caller needs to read the answer and build the input: the task, the classes,
    the input columns and the largest raw pixel value, where the data has them."""
    outputs = "probabilities" if isinstance(module, Classifier) else "values"
    found: dict[str, Any] = {"outputs": outputs if isinstance(module, TaskModule) else "forward"}
    for name in ("task", "class_names", "feature_names", "target", "pixel_max"):
        try:
            value = getattr(datamodule, name, None)
        except AttributeError:  # a property that does not apply (a regression's classes)
            value = None
        if isinstance(value, str | int | float | list | tuple) and not isinstance(value, bool):
            found[name] = list(map(str, value)) if isinstance(value, list | tuple) else value
    return found
