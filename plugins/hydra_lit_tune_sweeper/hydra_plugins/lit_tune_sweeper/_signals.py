"""Ctrl-C and SIGTERM in a sweep: the running trials stop at their next step, are failed and
queued again, and the sweep exits with 128 + the signal's number (130 for Ctrl-C, 143 for
SIGTERM), as a shell reports it."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

# Set once the sweep is asked to stop: trials in this process (and, through the study, in
# others: see _trial) stop at their next step.
STOP = threading.Event()
_received: list[int] = []  # the signal that set STOP


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


@contextmanager
def interrupt_on_sigterm() -> Iterator[None]:
    """For a sweep's main thread: SIGTERM raises KeyboardInterrupt, as Ctrl-C does, and is
    passed on to the worker processes (which `kill PID` does not reach; Ctrl-C reaches the
    whole process group). Later SIGTERMs are ignored while the sweep closes its trials."""

    def on_sigterm(signum: int, frame: Any) -> None:
        if _received:
            return
        _received.append(signum)
        for child in multiprocessing.active_children():  # the launcher's worker processes
            if child.pid is not None:
                with suppress(ProcessLookupError):
                    os.kill(child.pid, signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
