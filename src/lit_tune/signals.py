"""Ctrl-C and SIGTERM: stop cleanly, close what is open, say how to resume.

A run stops at its next batch and closes its MLflow run KILLED (in a sweep, the sweeper also
fails the running trials and queues their parameters again). SIGTERM (what `kill`, systemd,
Docker and SLURM send before SIGKILL) is handled as Ctrl-C is; the exit status is 128 + the
signal's number (130 for Ctrl-C, 143 for SIGTERM), as a shell reports it.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

# Set on the first signal: every run in this process stops at its next batch.
STOP = threading.Event()
_received: list[int] = []  # the signal that set STOP


class Interrupted(RuntimeError):
    """A run stopped by Ctrl-C or SIGTERM (its MLflow run closed KILLED)."""


def request_stop(signum: int) -> None:
    if not _received:
        _received.append(signum)
    STOP.set()


def stop_signal() -> int:
    """The signal that stopped this process (SIGINT when none did: Ctrl-C is the default)."""
    return _received[0] if _received else signal.SIGINT


def stopped_by() -> str:
    """What stopped this process: "Ctrl-C" or "SIGTERM"."""
    signum = stop_signal()
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name


def exit_status() -> int:
    return 128 + stop_signal()


@contextmanager
def stop_on_signal() -> Iterator[None]:
    """For a run in the main thread: a first Ctrl-C or SIGTERM sets STOP. A second Ctrl-C
    interrupts at once; a second SIGTERM changes nothing (SIGKILL is what comes next).
    Lightning's own handling would exit the process from inside `fit`, which a sweep's worker
    must not do; Lightning still sees SIGTERM (it chains to this handler during `fit`).
    A run in a sweep's thread gets STOP from the sweeper: signals reach the main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_signal(signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and STOP.is_set():
            raise KeyboardInterrupt
        request_stop(signum)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
