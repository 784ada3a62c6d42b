"""One training run: composed config -> instantiated parts -> Trainer -> objective for the sweeper."""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path

import hydra
import lightning as L
from hydra.utils import execution_whitelist, instantiate
from omegaconf import DictConfig

from lit_tune import tracking
from lit_tune.config import ConfigError, check
from lit_tune.module import Classifier, count_parameters

CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")
log = logging.getLogger(__name__)
# What a config's `_target_` may name. A new home for models or data is added here, in
# code, so that a config file alone can never run arbitrary Python.
TRUSTED_TARGETS = ["lit_tune.*", "torch.optim.*", "lightning.pytorch.*"]


def train(cfg: DictConfig) -> float:
    """Train, test the best checkpoint, record the run; return the value of `objective.metric`."""
    with execution_whitelist(TRUSTED_TARGETS):
        return _train(cfg)


def _train(cfg: DictConfig) -> float:
    check(cfg)
    L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()  # a missing data set fails here, before any run is recorded
    net = instantiate(
        cfg.model, input_shape=datamodule.input_shape, num_classes=datamodule.num_classes
    )
    module = Classifier(
        net,
        num_classes=datamodule.num_classes,
        optimizer=instantiate(cfg.optimizer, _convert_="all"),
        scheduler=instantiate(cfg.scheduler),
    )
    callbacks = [instantiate(c) for c in (cfg.callbacks or {}).values()]
    logger = instantiate(cfg.logger) if cfg.logger else False
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=logger)
    try:
        for each in trainer.loggers:  # under fast_dev_run, Lightning's no-op logger
            each.log_hyperparams({**tracking.flatten(cfg), "num_parameters": count_parameters(net)})
        trainer.fit(module, datamodule=datamodule)
        objective = _objective(trainer, cfg.objective.metric)
        best = trainer.checkpoint_callback
        ckpt_path = "best" if best is not None and getattr(best, "best_model_path", "") else None
        trainer.test(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        tracking.log_results(trainer.loggers, cfg, module.confusion)
    except BaseException:
        for each in trainer.loggers:
            each.finalize("failed")
        raise
    for each in trainer.loggers:
        each.finalize("success")
    log.info("objective %s = %.6f", cfg.objective.metric, objective)
    return objective


def _objective(trainer: L.Trainer, metric: str) -> float:
    if metric not in trainer.callback_metrics:
        logged = ", ".join(sorted(trainer.callback_metrics)) or "none"
        raise ConfigError(f"objective.metric={metric!r} was never logged; logged metrics: {logged}")
    value = float(trainer.callback_metrics[metric])
    if not math.isfinite(value):
        log.warning("objective %s is %s", metric, value)
    return value


@hydra.main(config_path=CONF_DIR, config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float:
    """`python train.py [overrides]`, `python train.py -m [sweep overrides]`."""
    try:
        return train(cfg)
    except ConfigError as error:
        print(f"Error: {error}", file=sys.stderr)
        sys.exit(2)
