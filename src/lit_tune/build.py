"""From the composed config to the parts of a run: datamodule, module, logger, callbacks, Trainer.

Each part is `hydra.utils.instantiate` of its config node, under the trusted whitelist
(lit_tune/trust.py). Two conventions on the way (README, "Tune your own model"):

- **Sizes.** A `???` in `module` or `model` is filled from the datamodule's attribute of the same
  name (`input_shape`, `num_classes`, `num_outputs`, `num_features`, `target_mean`, ...), so a
  size is never typed twice. The filled values are what MLflow records.
- **Factories.** Every `_partial_: true` node under `module` (an optimizer, a schedule, a
  metric) reaches the module as a `Factory`: one that pickles (DDP spawn pickles the module to
  each process; Hydra 1.4's partials refuse to be pickled) and that a checkpoint stores as its
  config, so that checkpoints load with `weights_only=True`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

import lightning as L
from hydra.errors import InstantiationException
from hydra.utils import execution_whitelist, instantiate
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, ListConfig, OmegaConf

from lit_tune.config import ConfigError, first_line
from lit_tune.trust import HOW_TO_TRUST, trusted_targets

# The attributes a datamodule may give for `???` (any other attribute works too; these are the
# ones an error lists as what a datamodule gave).
SIZES = (
    "input_shape",
    "num_features",
    "num_classes",
    "num_outputs",
    "num_targets",
    "target_mean",
    "target_std",
    "class_names",
    "task",
)


class Factory:
    """A `_partial_: true` config node (resolved) that pickles: a call instantiates it under the
    trusted whitelist and calls the result with the call's arguments."""

    def __init__(self, node: dict[str, Any]) -> None:
        self.node = node

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with execution_whitelist(trusted_targets()):
            return instantiate(self.node, _convert_="all")(*args, **kwargs)

    def __repr__(self) -> str:
        return f"Factory({self.node.get('_target_')})"


@contextmanager
def config_errors(key: str) -> Iterator[None]:
    """A constructor that rejects its arguments is a config error, named by the key Hydra says
    it was building (an interpolated net is `model`, not `module.net`)."""
    try:
        yield
    except ConfigError:
        raise  # names its own key
    except (InstantiationException, TypeError, ValueError, MisconfigurationException) as error:
        notes = [*getattr(error, "__notes__", []), *str(error).splitlines()]
        found = [n.split(":", 1)[1].strip() for n in notes if n.startswith("full_key:")]
        where = found[0] if found and re.fullmatch(r"[\w.]+", found[0]) else key
        message = first_line(error.__cause__ or error)
        if "execution whitelist" in str(error):
            target = re.search(r"Target '([\w.]+)'", str(error))
            package = target[1].split(".")[0] if target else "yourpackage"
            message = f"{message.rstrip('.')}: " + HOW_TO_TRUST.format(package=package)
        raise ConfigError(f"{where}: {message}") from error


def build(cfg: DictConfig, key: str, **kwargs: Any) -> Any:
    """instantiate(cfg.<key>, **kwargs) under the trusted whitelist; errors name the key."""
    with execution_whitelist(trusted_targets()), config_errors(key):
        return instantiate(OmegaConf.select(cfg, key), **kwargs)


def loggers(cfg: DictConfig) -> list[Logger]:
    """The Lightning loggers of `logger`, one for each named entry (`logger=[mlflow,tensorboard]`
    gives `logger.mlflow` and `logger.tensorboard`), in that order; none for `logger=none`."""
    return [build(cfg, f"logger.{name}") for name in cfg.logger or {}]


def datamodule(cfg: DictConfig) -> L.LightningDataModule:
    """The datamodule, its data prepared: a missing data set fails here, before any run is
    recorded."""
    data = build(cfg, "data")
    with config_errors("data"):
        data.prepare_data()
    return cast(L.LightningDataModule, data)


def _missing(node: Any, prefix: str) -> Iterator[str]:
    """The keys under `node` whose value is `???` (not following interpolations)."""
    if isinstance(node, DictConfig):
        for key in map(str, node):
            if OmegaConf.is_missing(node, key):
                yield f"{prefix}{key}"
            elif not OmegaConf.is_interpolation(node, key):
                yield from _missing(node[key], f"{prefix}{key}.")
    elif isinstance(node, ListConfig):
        for i in range(len(node)):
            if not OmegaConf.is_interpolation(node, i):
                yield from _missing(node[i], f"{prefix}{i}.")


_ABSENT = object()


def fill_sizes(cfg: DictConfig, data: L.LightningDataModule) -> dict[str, Any]:
    """Set every `???` under `module` and `model` from the datamodule's attribute of the same
    name (after `setup("fit")` if it has none before); return {key: value} of what was set."""
    keys = [k for top in ("module", "model") if top in cfg for k in _missing(cfg[top], f"{top}.")]
    filled: dict[str, Any] = {}
    set_up = False
    for key in keys:
        name = key.rsplit(".", 1)[-1]
        value = getattr(data, name, _ABSENT)
        if value is _ABSENT and not set_up:
            with config_errors("data"):
                data.setup("fit")  # a datamodule may know its sizes only once it has its data
            set_up = True
            value = getattr(data, name, _ABSENT)
        if value is _ABSENT or value is None:
            raise ConfigError(_no_size(key, name, data))
        value = _plain(value)
        OmegaConf.update(cfg, key, value, merge=False)
        filled[key] = value
    return filled


def _no_size(key: str, name: str, data: L.LightningDataModule) -> str:
    given = [s for s in SIZES if getattr(data, s, None) is not None]
    kind = type(data).__qualname__
    task = getattr(data, "task", None)
    about = f"{kind}, task {task}" if isinstance(task, str) else kind
    has = f"it gives {', '.join(given)}" if given else "it gives none of " + ", ".join(SIZES)
    return (
        f"{key}: ??? is filled from the datamodule's `{name}`, and the datamodule ({about}) has "
        f"none; {has}. Set {key}=... or give the datamodule a `{name}` attribute"
    )


def _plain(value: Any) -> Any:
    """A datamodule's size as OmegaConf stores it: tuples and tensors as lists."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def _factories(node: Any, key: str, made: dict[str, Factory]) -> Any:
    """`node` (at `key`) as instantiate's kwargs, each `_partial_: true` node below it a
    Factory, which `made` collects by key."""
    if isinstance(node, DictConfig):
        if node.get("_partial_") is True:
            made[key] = Factory(cast(dict, OmegaConf.to_container(node, resolve=True)))
            return made[key]
        return {str(k): _factories(node[k], f"{key}.{k}", made) for k in map(str, node)}
    if isinstance(node, ListConfig):
        return [_factories(v, f"{key}.{i}", made) for i, v in enumerate(node)]
    return node


def _has_partial(node: Any) -> bool:
    if isinstance(node, DictConfig):
        return node.get("_partial_") is True or any(_has_partial(node[k]) for k in node)
    if isinstance(node, ListConfig):
        return any(_has_partial(v) for v in node)
    return False


def module(cfg: DictConfig) -> tuple[L.LightningModule, dict[str, Factory]]:
    """The LightningModule of `module`, and its Factories by config key (`refresh` brings them
    up to date with the config)."""
    node = cfg.module
    made: dict[str, Factory] = {}
    kwargs = {
        str(k): _factories(node[k], f"module.{k}", made) for k in node if _has_partial(node[k])
    }
    built = build(cfg, "module", **kwargs)
    if not isinstance(built, L.LightningModule):
        raise ConfigError(
            f"module._target_={node.get('_target_')}: builds a {type(built).__name__}, not a "
            "LightningModule; a plain nn.Module goes in `model` (the net of module=classifier "
            "or module=regressor)"
        )
    return built, made


def refresh(cfg: DictConfig, factories: dict[str, Factory]) -> None:
    """Re-read each Factory's node from the config (after a finder changed it): the module
    holds the same objects, so its next optimizer and schedule follow."""
    for key, factory in factories.items():
        factory.node = cast(dict, OmegaConf.to_container(OmegaConf.select(cfg, key), resolve=True))


def optimizer_node(cfg: DictConfig) -> str | None:
    """The key of the optimizer partial the module is built with (`optimizer` for the
    built-in modules, whose `module.optimizer` is `${optimizer}`), or None."""
    node = OmegaConf.select(cfg, "module.optimizer", default=None)
    if not (isinstance(node, DictConfig) and node.get("_partial_") is True):
        return None
    if OmegaConf.is_interpolation(cfg.module, "optimizer"):
        reference = str(cast(dict, OmegaConf.to_container(cfg.module, resolve=False))["optimizer"])
        return reference.removeprefix("${").removesuffix("}")
    return "module.optimizer"
