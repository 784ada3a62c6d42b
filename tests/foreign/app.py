"""A Hydra app that knows nothing of lit_tune: it returns (x - 1)², NaN below x = -4.5 and
raises above x = 4.5. Only its config's sweeper line names lit_tune (tests/test_foreign_app.py)."""

import math
import time

import hydra
from omegaconf import DictConfig


@hydra.main(config_path="conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> float:
    time.sleep(cfg.sleep)
    if cfg.x > 4.5:
        raise ValueError(f"x={cfg.x} is out of range")
    if cfg.x < -4.5:
        return math.nan
    return (cfg.x - 1) ** 2


if __name__ == "__main__":
    main()
