"""Which `_target_`s a config may name: Hydra's execution whitelist, and how a project extends it.

The threat model (README, "Trust"): a config file is data. It may come from a colleague, a
paper's repository or a search space someone mailed you, and a config file alone must never run
arbitrary Python (Hydra 1.4 warns, Hydra 1.5 refuses). Code is trusted: lit_tune's own, the
project's own Python, and the project's `pyproject.toml` (which `pip install` runs the build of
anyway). So the whitelist is extended only from there:

- `[tool.lit_tune] trusted = ["myproj.*"]` in the pyproject.toml of the folder `lit-tune` runs
  in (or the nearest one above it);
- `lit_tune.main(trusted=["myproj.*"])` in the project's own train.py.

`main()` hands the extension on to the processes a run starts (joblib workers, DDP ranks)
through LIT_TUNE_TRUSTED, which those read here. Hydra's own blacklist (os.system, eval, ...)
holds whatever is trusted.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from lit_tune.config import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# What the ecosystem needs, and nothing that runs code it is handed: nets, optimizers and
# schedules, metrics, torchvision's models and transforms, Lightning's own parts. Not all of
# `lightning.pytorch.*`: its LightningCLI instantiates any class a string names.
DEFAULT_TRUSTED = (
    "lit_tune.*",
    "torch.nn.*",
    "torch.optim.*",
    "torchmetrics.*",
    "torchvision.models.*",
    "torchvision.transforms.*",
    "lightning.pytorch.Trainer",
    "lightning.pytorch.callbacks.*",
    "lightning.pytorch.loggers.*",
    "lightning.pytorch.profilers.*",
    "lightning.pytorch.strategies.*",
    "lightning.pytorch.plugins.*",
)
ENV = "LIT_TUNE_TRUSTED"  # comma-separated patterns: how main() tells the processes it starts
HOW_TO_TRUST = (
    'trust it in your pyproject.toml ([tool.lit_tune] trusted = ["{package}.*"]) or with '
    'lit_tune.main(trusted=["{package}.*"])'
)


def project_settings(start: Path | None = None) -> tuple[Path | None, dict[str, Any]]:
    """The nearest pyproject.toml at or above `start` (the working directory) and its
    `[tool.lit_tune]` table ({} when it has none)."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        path = folder / "pyproject.toml"
        if path.is_file():
            try:
                settings = tomllib.loads(path.read_text()).get("tool", {}).get("lit_tune", {})
            except tomllib.TOMLDecodeError as error:
                raise ConfigError(f"{path}: not valid TOML ({error})") from None
            return path, settings
    return None, {}


def trusted_targets() -> list[str]:
    """The whitelist for this process: the defaults, the project's pyproject.toml and what
    main() was given (through LIT_TUNE_TRUSTED)."""
    path, settings = project_settings()
    patterns = settings.get("trusted", [])
    if not (isinstance(patterns, list) and all(isinstance(p, str) for p in patterns)):
        raise ConfigError(f"{path}: [tool.lit_tune] trusted must be a list of strings")
    from_main = [p for p in os.environ.get(ENV, "").split(",") if p]
    return [*DEFAULT_TRUSTED, *patterns, *from_main]


def is_trusted(target: str, patterns: Iterable[str]) -> bool:
    """Hydra's rule: `pkg.*` allows every target below pkg; anything else names one target."""
    return any(target.startswith(p[:-1]) if p.endswith(".*") else target == p for p in patterns)


def targets(node: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    """(key, target) of every `_target_` in a config, interpolations resolved."""
    if isinstance(node, DictConfig):
        target = node.get("_target_")
        if isinstance(target, str):
            yield f"{prefix}_target_", target
        for key in map(str, node):
            if key != "_target_" and not OmegaConf.is_missing(node, key):
                yield from targets(node[key], f"{prefix}{key}.")  # resolved
    elif isinstance(node, ListConfig):
        for i, item in enumerate(node):
            yield from targets(item, f"{prefix}{i}.")


def check_trusted(cfg: DictConfig, patterns: list[str]) -> None:
    """Raise ConfigError naming the first `_target_` of the run's config (not Hydra's own,
    whose sweeper and launcher are chosen by installed plugins) that is not trusted."""
    for key in map(str, cfg):
        if key == "hydra" or OmegaConf.is_missing(cfg, key):
            continue
        for where, target in targets(cfg[key], f"{key}."):
            if not is_trusted(target, patterns):
                package = target.split(".")[0]
                raise ConfigError(
                    f"{where}={target}: not trusted (a config file alone may not run code); "
                    + HOW_TO_TRUST.format(package=package)
                )
