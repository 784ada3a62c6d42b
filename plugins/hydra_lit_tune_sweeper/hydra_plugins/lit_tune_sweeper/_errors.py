"""The sweeper's errors: bad input is one line on stderr and a non-zero exit, not a traceback."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager


class ConfigError(ValueError):
    """Bad input; the message is one line that names the key and what it allows."""


class SweepError(RuntimeError):
    """A sweep that cannot go on (too many failed trials); the message is one line."""


def first_line(error: BaseException) -> str:
    """The first line of an error's message (its type's name when it has none)."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


@contextmanager
def one_line_errors() -> Iterator[None]:
    """A ConfigError becomes `Error: <message>` on stderr and exit status 2; a SweepError the
    same with exit status 1."""
    try:
        yield
    except (ConfigError, SweepError) as error:
        print(f"Error: {error}", file=sys.stderr)
        sys.exit(2 if isinstance(error, ConfigError) else 1)
