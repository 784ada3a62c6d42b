"""lit_tune: tune a PyTorch Lightning model from the command line (README).

`lit_tune.main` is the entry point of `lit-tune` and of a train.py of your own; importing this
package imports nothing heavy until it is used.
"""

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "main":
        from lit_tune.cli import main

        return main
    raise AttributeError(f"module 'lit_tune' has no attribute {name!r}")
