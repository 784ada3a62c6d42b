"""`lit-tune eval MODEL [overrides]`: test a trained model again, recorded as an MLflow run.

MODEL is a checkpoint file or an MLflow URI (`models:/name@champion`, `models:/name/3`,
`models:/m-<id>`, `runs:/<run id>`). A URI stands for the run that logged it: its best
checkpoint (artifact `best/best.ckpt`) and its command line (tag `hydra.overrides`). A
checkpoint file stands for itself and the command line in `.hydra/overrides.yaml` of the run
folder it lies in, when there is one. The config is composed from that command line, then
the overrides given here (`data=...` tests on another datamodule), and the module is built
from it and given the checkpoint's weights (`weights_only=True`).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from hydra_plugins.lit_tune_sweeper.storage import mask
from lit_tune import build, tracking
from lit_tune.config import ConfigError, check, first_line

DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"  # conf/logger/mlflow.yaml, from here
BEST_ARTIFACT = "best/best.ckpt"


@dataclass
class Source:
    """What MODEL stands for: a checkpoint file, the command line it was trained with, and
    the MLflow run that logged it (None for a checkpoint file)."""

    given: str
    checkpoint: Path
    overrides: list[str]
    run_id: str | None = None


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI)


def source_run(uri: str) -> str:
    """The id of the MLflow run that logged the model at `uri`; ConfigError if none does."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri())
    where = f"{uri}: in {mask(tracking_uri())}"
    try:
        if uri.startswith("runs:/"):
            run_id = uri.removeprefix("runs:/").split("/")[0]
            client.get_run(run_id)
            return run_id
        if not uri.startswith("models:/"):
            raise ConfigError(f"{uri}: not a checkpoint file nor a models:/ or runs:/ URI")
        name = uri.removeprefix("models:/")
        if "@" in name:
            model, alias = name.split("@", 1)
            return str(client.get_model_version_by_alias(model, alias).run_id)
        if "/" in name:
            model, version = name.rsplit("/", 1)
            return str(client.get_model_version(model, version).run_id)
        return str(client.get_logged_model(name).source_run_id)
    except MlflowException as error:
        known = ", ".join(m.name for m in client.search_registered_models()) or "none"
        raise ConfigError(f"{where}, {first_line(error)} (registered models: {known})") from None


def resolve(given: str) -> Source:
    """MODEL as a checkpoint and the command line it was trained with (see the docstring
    of this module)."""
    path = Path(given)
    if path.is_file():
        recorded = path.resolve().parent.parent / ".hydra" / "overrides.yaml"
        overrides = yaml.safe_load(recorded.read_text()) if recorded.is_file() else []
        return Source(given, path, [str(o) for o in overrides or []])
    if "://" not in given and ":/" not in given:
        raise ConfigError(f"{given}: no such checkpoint file, and not an MLflow URI")
    from mlflow import MlflowClient

    run_id = source_run(given)
    client = MlflowClient(tracking_uri())
    run = client.get_run(run_id)
    folder = Path(tempfile.mkdtemp(prefix="lit_tune-eval-"))
    try:
        checkpoint = Path(client.download_artifacts(run_id, BEST_ARTIFACT, str(folder)))
    except Exception as error:  # MLflow raises several kinds for a missing artifact
        raise ConfigError(
            f"{given}: its run {run_id} has no {BEST_ARTIFACT} ({first_line(error)})"
        ) from None
    tag = run.data.tags.get("hydra.overrides", "(none)")
    overrides = [] if tag == "(none)" else tag.split(" ")
    return Source(given, checkpoint, overrides, run_id)


def merged(recorded: list[str], given: list[str]) -> list[str]:
    """`recorded` with every key or group that `given` sets replaced by `given`'s value."""
    parser = OverridesParser.create()
    keys = {o.key_or_group for o in parser.parse_overrides(given)}
    pairs = zip(recorded, parser.parse_overrides(recorded), strict=True)
    return [*(r for r, o in pairs if o.key_or_group not in keys), *given]


def load_weights(module: L.LightningModule, source: Source) -> None:
    """The checkpoint's weights into `module`; ConfigError when they do not fit it."""
    state = torch.load(source.checkpoint, map_location="cpu", weights_only=True)
    try:
        module.load_state_dict(state["state_dict"])
    except (RuntimeError, KeyError) as error:
        detail = " ".join(str(error).split())[:300]
        raise ConfigError(
            f"{source.given}: its weights do not fit the configured module (a checkpoint of "
            f"another model config?): {detail}"
        ) from None


def evaluate(cfg: DictConfig, source: Source) -> dict[str, Any]:
    """Test the checkpoint on the datamodule's test split; record it as an MLflow run
    tagged `lit_tune.evaluates` (the source run or file). Return the test metrics."""
    check(cfg)
    L.seed_everything(cfg.seed, workers=True)
    datamodule = build.datamodule(cfg)
    build.fill_sizes(cfg, datamodule)
    module, _ = build.module(cfg)
    load_weights(module, source)  # before any MLflow run exists
    if OmegaConf.select(cfg, "logger.mlflow") is not None:  # the other loggers name no runs
        cfg.logger.mlflow.run_name = f"eval-{datetime.now():%Y-%m-%d_%H-%M-%S}"
    loggers = build.loggers(cfg)
    trainer: L.Trainer = build.build(cfg, "trainer", callbacks=[], logger=loggers or False)
    try:
        for each in trainer.loggers:
            evaluates = source.run_id or source.given
            each.log_hyperparams({**tracking.flatten(cfg), "evaluates": evaluates})
        results = trainer.test(module, datamodule=datamodule, weights_only=True)
    except BaseException as error:
        tracking.finish(trainer.loggers, "FAIL", f"{type(error).__name__}: {error}")
        raise
    for client, run_id in tracking.mlflow_runs(trainer.loggers):
        client.set_tag(run_id, "lit_tune.evaluates", source.run_id or str(source.checkpoint))
    tracking.finish(trainer.loggers, "COMPLETE")
    return dict(results[0]) if results else {}
