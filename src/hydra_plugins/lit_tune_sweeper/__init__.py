"""lit_tune's Optuna sweeper for Hydra: `hydra/sweeper=lit_tune`.

Reads the config language of hydra-optuna-sweeper (params, samplers, direction, storage, ...)
and adds pruning, failure tolerance, resume, parallel trials without batch barriers, and an
MLflow parent run per sweep. Hydra imports every module here at start-up: keep them light.
"""
