"""Fault injection for the CLI under test; Python imports it at start-up when this folder is on
PYTHONPATH. LIT_TUNE_FAULT=POINT:SIGNAL:N sends SIGNAL the N-th time this process reaches
POINT, and nothing is changed without it.

Points: `batch` (a training batch as Lightning counts them, inside a trial), `tell` (a trial
has ended, its MLflow run closed, and the sweeper is about to tell Optuna its result),
`between` (just after the sweeper told Optuna a trial's result), `checkpoint` (while a
checkpoint file is written: with KILL the process dies with half the file written), `mlflow`
(while MLflow writes metrics: after its SQL insert, before the commit). SIGINT goes to the
process group, as Ctrl-C does; TERM to this process, as `kill PID` does; KILL to the group.
"""

from __future__ import annotations

import io
import os
import signal

_FAULT = os.environ.get("LIT_TUNE_FAULT")


def _install(point: str, name: str, nth: int) -> None:
    signum = signal.Signals[f"SIG{name}"]
    seen = [0]

    def due() -> bool:
        seen[0] += 1
        return seen[0] == nth

    def fire() -> None:
        print(f"fault injected: {point} SIG{name}", flush=True)
        if signum == signal.SIGTERM:
            os.kill(os.getpid(), signum)
        else:
            os.killpg(os.getpgrp(), signum)

    if point == "batch":
        from lightning.pytorch.loops.training_epoch_loop import _TrainingEpochLoop

        advance = _TrainingEpochLoop.advance

        def advance_then_fire(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            advance(self, *args, **kwargs)
            if due():
                fire()

        _TrainingEpochLoop.advance = advance_then_fire  # type: ignore[method-assign]
    elif point == "tell":
        import optuna

        tell = optuna.study.Study.tell

        def fire_then_tell(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            if due():
                fire()
            return tell(self, *args, **kwargs)

        optuna.study.Study.tell = fire_then_tell  # type: ignore[method-assign]
    elif point == "between":
        import optuna

        tell = optuna.study.Study.tell

        def tell_then_fire(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            result = tell(self, *args, **kwargs)
            if due():
                fire()
            return result

        optuna.study.Study.tell = tell_then_fire  # type: ignore[method-assign]
    elif point == "checkpoint":
        import torch

        save = torch.save

        def save_with_fault(obj, f, *args, **kwargs):  # type: ignore[no-untyped-def]
            if not str(getattr(f, "name", "")).endswith(".partial") or not due():
                return save(obj, f, *args, **kwargs)
            if signum != signal.SIGKILL:
                fire()  # the handler runs while the file is written
                return save(obj, f, *args, **kwargs)
            whole = io.BytesIO()
            save(obj, whole, *args, **kwargs)
            f.write(whole.getvalue()[: len(whole.getvalue()) // 2])
            f.flush()
            os.fsync(f.fileno())
            fire()

        torch.save = save_with_fault
    elif point == "mlflow":
        from sqlalchemy import event
        from sqlalchemy.orm import Session

        def after_flush(session, context):  # type: ignore[no-untyped-def]
            if any(type(o).__name__ == "SqlMetric" for o in session.new) and due():
                fire()  # inside the transaction: the insert is flushed, not committed

        event.listen(Session, "after_flush", after_flush)
    else:
        raise ValueError(f"LIT_TUNE_FAULT={_FAULT}: unknown point {point}")


if _FAULT:
    _point, _name, _nth = _FAULT.split(":")
    _install(_point, _name, int(_nth))
