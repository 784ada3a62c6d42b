"""Entry point: `python train.py [overrides]` trains once, `python train.py -m ...` sweeps."""

from lit_tune.train import main

if __name__ == "__main__":
    main()
