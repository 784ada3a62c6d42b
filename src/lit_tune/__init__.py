"""lit_tune: tune PyTorch Lightning models with Hydra, Optuna and MLflow."""
