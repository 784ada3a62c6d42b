"""A Hydra app whose objective is the number of threads torch gives its trial, with torch
imported before the job runs, as most apps import it (tests/test_resources.py)."""

import hydra
import torch
from omegaconf import DictConfig


@hydra.main(config_path="conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> float:
    return float(torch.get_num_threads())


if __name__ == "__main__":
    main()
