"""Entry point: `python train.py [overrides]` trains once, `python train.py -m ...` sweeps."""

from lit_tune.train import main

# Hydra's shell completion completes `python FILE` only where FILE mentions @hydra.main; the
# app is lit_tune.train._hydra_main.

if __name__ == "__main__":
    main()
