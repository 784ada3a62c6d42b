"""Entry point: `python train.py [overrides]` trains once, `python train.py -m ...` sweeps."""

from lit_tune.cli import main

# Hydra's shell completion completes `python FILE` only where FILE mentions @hydra.main; the
# app is lit_tune.cli._hydra_main.

if __name__ == "__main__":
    main()
