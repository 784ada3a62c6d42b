"""MLflow: the logger of `conf/logger/mlflow.yaml` and what a run records beyond metrics."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: no display on servers and in sweeps
import matplotlib.pyplot as plt
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import Logger, MLFlowLogger
from lightning.pytorch.utilities import rank_zero_only
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from mlflow import MlflowClient
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from hydra_plugins.lit_tune_sweeper import current_trial
from hydra_plugins.lit_tune_sweeper.storage import SQLITE, mask
from lit_tune.config import ConfigError
from lit_tune.module import Classifier


def mlflow_logger(
    experiment_name: str,
    tracking_uri: str,
    artifact_location: str,
    run_name: str | None = None,
    log_model: bool = True,
) -> MLFlowLogger:
    """Lightning's MLFlowLogger on our store, the run tagged with the Hydra overrides. A trial's
    run is named `<study>-<trial number>`, a single run by its start time. (MLflow's random
    names come from Python's `random`, which the run's seed has fixed: all would be alike.)"""
    _make_store(tracking_uri)
    tags = {}
    if HydraConfig.initialized():
        hydra = HydraConfig.get()
        tags["hydra.overrides"] = mask(" ".join(hydra.overrides.task)) or "(none)"
    if current_trial() is None:  # a trial's run is named by the sweeper: <study>-<number>
        run_name = run_name or f"run-{datetime.now():%Y-%m-%d_%H-%M-%S}"
    return MLFlowLogger(
        experiment_name=experiment_name,
        tracking_uri=tracking_uri,
        artifact_location=_artifact_location(tracking_uri, artifact_location),
        run_name=run_name,
        tags=tags,
        log_model=log_model,
    )


def _make_store(tracking_uri: str) -> None:
    """Make a SQLite store's folder; check that a tracking server answers. MLflow would retry
    an unreachable server for minutes, then fail with a traceback."""
    if tracking_uri.startswith(SQLITE):
        Path(tracking_uri.removeprefix(SQLITE)).parent.mkdir(parents=True, exist_ok=True)
    elif tracking_uri.startswith(("http://", "https://")):
        import requests

        try:
            requests.get(f"{tracking_uri.rstrip('/')}/health", timeout=10)
        except requests.RequestException as error:
            raise ConfigError(
                f"logger.mlflow.tracking_uri={mask(tracking_uri)}: no MLflow server answers there "
                f"({type(error).__name__}); start one (mlflow server) or fix the URL"
            ) from None


def _artifact_location(tracking_uri: str, artifact_location: str) -> str | None:
    """A local store keeps artifacts under `artifact_location`; a tracking server keeps them
    where it was told to (`mlflow server --artifacts-destination`), so that trials on other
    machines can write them."""
    if tracking_uri.startswith(("http://", "https://")):
        return None
    return Path(artifact_location).resolve().as_uri()


# How each outcome ends an MLflow run; Optuna records the same outcome for the trial.
RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "KILLED": "KILLED", "FAIL": "FAILED"}


@rank_zero_only
def finish(loggers: list[Logger], outcome: str, reason: str | None = None) -> None:
    """Close every logger's run; an MLflow run gets the tag `outcome` (COMPLETE, PRUNED,
    KILLED or FAIL) and `pruned`, `killed` or `fail_reason` saying why."""
    for logger in loggers:
        if isinstance(logger, MLFlowLogger) and logger.run_id is not None:
            logger.experiment.set_tag(logger.run_id, "outcome", outcome)
            if reason:
                key = {"FAIL": "fail_reason", "PRUNED": "pruned", "KILLED": "killed"}[outcome]
                logger.experiment.set_tag(logger.run_id, key, reason[:5000])
            logger.finalize(RUN_STATUS[outcome])
        else:
            logger.finalize("success" if outcome == "COMPLETE" else "failed")


def flatten(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as {"model.width": 256, ...}, the keys as Hydra overrides spell them;
    passwords in URLs masked. A node that only points at another (`module.net: ${model}`) is
    recorded once, under the key it points at."""
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, DictConfig) and len(node):
            for key in map(str, node):
                if OmegaConf.is_missing(node, key):
                    flat[f"{prefix}{key}"] = "???"
                elif OmegaConf.is_interpolation(node, key) and OmegaConf.is_config(node[key]):
                    continue  # an alias of a node recorded under its own key
                else:
                    walk(node[key], f"{prefix}{key}.")
        else:
            value = (
                OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
            )
            flat[prefix.rstrip(".")] = mask(value) if isinstance(value, str) else value

    walk(cfg, "")
    return flat


@rank_zero_only  # under DDP, every rank runs train(); one records
def log_results(loggers: list[Logger], cfg: DictConfig) -> None:
    """Add the resolved config and the learning curves to an MLflow run."""
    for client, run_id in mlflow_runs(loggers):
        client.log_text(run_id, mask(OmegaConf.to_yaml(cfg, resolve=True)), "config.yaml")
        figure = learning_curves(client, run_id, cfg.objective.metric)
        client.log_figure(run_id, figure, "plots/learning_curves.png")
        plt.close("all")


class ResultPlots(Callback):
    """Add to an MLflow run the learning rate of every step (after fit; the built-in modules
    keep it) and a classifier's test confusion matrix (after test). A callback, because these
    live in rank 0's module: under ddp_spawn that is a copy in a child process, which the
    caller of fit and test never sees."""

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        history = getattr(pl_module, "lr_history", None)
        if trainer.is_global_zero and history:
            _log_figure(trainer.loggers, lr_schedule(history), "lr_schedule")

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Class by class: only a classifier has one (a regressor or a module of yours: none).
        if not isinstance(pl_module, Classifier) or pl_module.confusion is None:
            return
        if trainer.is_global_zero:
            figure = confusion_matrix(pl_module.confusion)
            _log_figure(trainer.loggers, figure, "confusion_matrix")


def _log_figure(loggers: list[Logger], figure: Figure, name: str) -> None:
    for client, run_id in mlflow_runs(loggers):
        client.log_figure(run_id, figure, f"plots/{name}.png")
    plt.close(figure)


def mlflow_runs(loggers: list[Logger]) -> list[tuple[MlflowClient, str]]:
    """(client, run id) of each MLflow logger whose run exists."""
    return [
        (logger.experiment, logger.run_id)
        for logger in loggers
        if isinstance(logger, MLFlowLogger) and logger.run_id is not None
    ]


def learning_curves(client: MlflowClient, run_id: str, objective: str) -> Figure:
    """Per epoch, read back from MLflow: every loss the module logged once an epoch (left
    axis) and the objective's metric (right axis; `val/acc` for `val/acc_best`), whatever the
    module. Values logged per step (`*_step`) are left out."""
    logged = set(client.get_run(run_id).data.metrics)
    # Lightning logs `epoch` beside every value: it maps a value's step to its epoch.
    epoch_at = {m.step: m.value for m in client.get_metric_history(run_id, "epoch")}
    losses = sorted(
        k for k in logged if "loss" in k and not k.endswith("_step") and not k.startswith("test/")
    )
    base = objective.removesuffix("_best")
    metric = base if base in logged else objective
    fig, loss_ax = plt.subplots(figsize=(6, 4))
    metric_ax = loss_ax.twinx()
    curves = [(key, loss_ax, f"C{i}-") for i, key in enumerate(losses)]
    if metric in logged and "loss" not in metric:
        curves.append((metric, metric_ax, f"C{len(losses)}--"))
    for key, ax, style in curves:
        history = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
        x = [epoch_at.get(m.step, i) + 1 for i, m in enumerate(history)]
        ax.plot(x, [m.value for m in history], style, label=key)
    loss_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("loss")
    metric_ax.set_ylabel(metric)
    fig.legend(loc="upper center", ncol=3)
    return fig


def lr_schedule(lr_history: list[float]) -> Figure:
    """The learning rate of every optimizer step, as the optimizer had it (log scale when it
    spans more than a factor of 10)."""
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.plot(range(1, len(lr_history) + 1), lr_history, "C0-")
    if min(lr_history) > 0 and max(lr_history) > 10 * min(lr_history):
        ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("learning rate")
    fig.tight_layout()
    return fig


def confusion_matrix(counts: Tensor) -> Figure:
    """Test-set confusion matrix: true class by row, predicted class by column."""
    n = counts.shape[0]
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.imshow(counts.numpy(), cmap="Blues")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(int(counts[i, j])), ha="center", va="center", fontsize=7)
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    return fig
