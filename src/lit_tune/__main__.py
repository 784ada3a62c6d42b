"""`python -m lit_tune [overrides]`: the same as `lit-tune`."""

from lit_tune.cli import main

main()
