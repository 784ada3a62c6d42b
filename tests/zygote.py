"""Start `python SCRIPT ARGS` commands by forking a process that has imported lit_tune's run
already: what the suite spends most of its time on is Python importing Lightning, MLflow and
torch again for every command (8 s of CPU each, measured 2026-12-06; the command itself often
takes less). The forked process is a real process of its own (its own pid, session, signals,
stdio, cwd and environment); it runs the script as `python SCRIPT` would, through runpy, and
ends as Python ends it (threads joined, exit handlers run, stdio flushed, the same status and
traceback) but without tearing its modules down, which in a fork copies the server's heap page
by page: 2 s a command. What is left open unflushed by the script itself is lost, as under
os._exit.

Not for what happens before a script runs: `-c` and `-m`, commands whose environment differs
from the server's in what Python or torch read at start-up (`STARTUP`), and a PYTHONPATH that
shadows a module the server has imported start fresh, as does every command with
LIT_TUNE_TEST_FRESH=1. Console scripts of this Python are served.

Run as a script, this is the server: `python tests/zygote.py SOCKET`.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

# What Python or torch read once, at start-up: a command whose value differs starts fresh.
# PYTHONPATH is done as Python does it (sitecustomize included), unless a folder on it holds a
# module the server has imported already (a stand-in for torch, say): that starts fresh.
STARTUP = ("PYTHONWARNINGS", "PYTHONHASHSEED", "OMP_NUM_THREADS", "PYTHONSAFEPATH", "PYTHONHOME")
FRESH = "LIT_TUNE_TEST_FRESH"  # set: every command starts a Python of its own
PRELOAD = ("lit_tune.cli", "lit_tune.train", "mlflow", "optuna", "hydra_plugins.lit_tune_sweeper")


# -- the server -------------------------------------------------------------------------------


def serve(path: str) -> dict[str, Any]:
    """Answer requests on the socket `path` until stdin closes (the client's end of a pipe):
    fork one child per request and report its exit status. Returns only in a child: its
    request, with the stdio descriptors it was sent."""
    for name in PRELOAD:
        __import__(name)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)
    listener.listen(64)
    print("ready", flush=True)
    waiting: dict[int, socket.socket] = {}  # pid -> the connection that asked for it
    while True:
        readable, _, _ = select.select([listener, sys.stdin], [], [], 0.05)
        if sys.stdin in readable and not sys.stdin.buffer.read1(1):
            for pid in waiting:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            os._exit(0)
        if listener in readable:
            conn, _ = listener.accept()
            message, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
            request = json.loads(message)
            if shadowed(request):
                conn.send(b"fresh")
                conn.close()
                for fd in fds:
                    os.close(fd)
                continue
            sys.stdout.flush()
            sys.stderr.flush()
            started, go = os.pipe()
            pid = os.fork()
            if pid == 0:
                listener.close()
                conn.close()
                for other in waiting.values():
                    other.close()
                if request["new_session"]:
                    os.setsid()  # before the client learns the pid, as with Popen
                os.close(started)
                os.close(go)
                return {**request, "fds": fds}
            os.close(go)
            os.read(started, 1)  # EOF: the child has its session
            os.close(started)
            for fd in fds:
                os.close(fd)
            conn.send(str(pid).encode())
            waiting[pid] = conn
        while waiting:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            conn = waiting.pop(pid)
            with contextlib.suppress(OSError):
                conn.send(str(os.waitstatus_to_exitcode(status)).encode())
            conn.close()


def python_path(request: dict[str, Any]) -> list[str]:
    return [p for p in request["env"].get("PYTHONPATH", "").split(os.pathsep) if p]


def shadowed(request: dict[str, Any]) -> bool:
    """Whether a folder on the command's PYTHONPATH holds a module imported already."""
    for folder in map(Path, python_path(request)):
        names = {p.stem for p in folder.glob("*.py")} | {
            p.parent.name for p in folder.glob("*/__init__.py")
        }
        if names & set(sys.modules):
            return True
    return False


def become(request: dict[str, Any]) -> str:
    """Turn this forked child into the process `python SCRIPT ARGS` (or the console script
    SCRIPT ARGS) would be; returns SCRIPT."""
    for target, fd in enumerate(request["fds"]):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    argv = request["argv"]
    sys.argv = argv[1:] if argv[0] == sys.executable else argv
    script = sys.argv[0]
    added = python_path(request)
    sys.path[:] = [str(Path(script).resolve().parent), *added, *sys.path[1:]]
    if added and "sitecustomize" not in sys.modules:  # site imports it at start-up
        with contextlib.suppress(ModuleNotFoundError):
            __import__("sitecustomize")
    return script


# -- the client -------------------------------------------------------------------------------


class Forked:
    """The part of subprocess.Popen the tests use, for a command the server forked."""

    def __init__(self, argv: list[str], pid: int, conn: socket.socket, pipes: dict[str, IO]):
        self.args = argv
        self.pid = pid
        self.returncode: int | None = None
        self.stdout = pipes.get("stdout")
        self.stderr = pipes.get("stderr")
        self._conn = conn

    def poll(self) -> int | None:
        return self.wait(0) if self.returncode is None and self._ready(0) else self.returncode

    def _ready(self, timeout: float | None) -> bool:
        return bool(select.select([self._conn], [], [], timeout)[0])

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            if not self._ready(timeout):
                raise subprocess.TimeoutExpired(self.args, timeout or 0)
            answer = self._conn.recv(64)
            assert answer, f"the zygote died before {self.args} ended"
            self.returncode = int(answer)
            self._conn.close()
        return self.returncode

    def communicate(self, timeout: float | None = None) -> tuple[str | None, str | None]:
        """Read stdout and stderr to their end (in threads, as Popen does), then wait."""
        out: dict[str, str] = {}
        readers = [
            threading.Thread(target=lambda k=k, f=f: out.__setitem__(k, f.read()), daemon=True)
            for k, f in (("stdout", self.stdout), ("stderr", self.stderr))
            if f is not None
        ]
        for reader in readers:
            reader.start()
        deadline = None if timeout is None else time.monotonic() + timeout
        for reader in readers:
            reader.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if reader.is_alive():
                raise subprocess.TimeoutExpired(self.args, timeout or 0)
        self.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return out.get("stdout"), out.get("stderr")

    def send_signal(self, signum: int) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)


class Zygote:
    """The client of one server, started on first use; one per test process."""

    def __init__(self, env: dict[str, str], directory: Path):
        self.env = env
        self.path = str(directory / "zygote.sock")
        self.server: subprocess.Popen[bytes] | None = None

    def serves(self, argv: list[str], env: dict[str, str]) -> bool:
        """Whether `argv` is `python SCRIPT.py ...` or a console script of this Python, in an
        environment the same as the server's in what is read at start-up."""
        if os.environ.get(FRESH) or any(env.get(k) != self.env.get(k) for k in STARTUP):
            return False
        if len(argv) >= 2 and argv[0] == sys.executable:
            return argv[1].endswith(".py")
        with contextlib.suppress(OSError), open(argv[0], "rb") as script:
            return script.readline().strip() == f"#!{sys.executable}".encode()
        return False

    def _start(self) -> None:
        self.server = subprocess.Popen(
            [sys.executable, __file__, self.path],
            env=self.env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=Path(__file__).parents[1],
        )
        assert self.server.stdout is not None
        assert self.server.stdout.readline() == b"ready\n", "the zygote did not start"

    def popen(
        self,
        argv: list[str],
        cwd: Path | str,
        env: dict[str, str],
        stdout: int | IO | None = None,
        stderr: int | IO | None = None,
        start_new_session: bool = False,
        text: bool = True,
    ) -> Forked | None:
        """Like subprocess.Popen(argv, ...) for stdout/stderr each None, DEVNULL, PIPE, STDOUT
        (stderr only) or an open file; stdin is /dev/null. None: the command must start fresh
        (`shadowed`)."""
        if self.server is None or self.server.poll() is not None:
            self._start()
        fds: list[int] = []
        close: list[int] = []
        pipes: dict[str, IO] = {}
        devnull = os.open(os.devnull, os.O_RDWR)
        close.append(devnull)
        fds.append(devnull)
        for name, target, default in (("stdout", stdout, 1), ("stderr", stderr, 2)):
            if target is None:
                fds.append(default)
            elif target == subprocess.DEVNULL:
                fds.append(devnull)
            elif target == subprocess.STDOUT:
                fds.append(fds[1])
            elif target == subprocess.PIPE:
                read, write = os.pipe()
                pipes[name] = open(read, "r" if text else "rb")  # noqa: SIM115 (the caller's)
                fds.append(write)
                close.append(write)
            else:
                fds.append(target.fileno())  # type: ignore[union-attr]
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            conn.connect(self.path)
            request = {"argv": argv, "cwd": str(cwd), "env": env, "new_session": start_new_session}
            socket.send_fds(conn, [json.dumps(request).encode()], fds)
            answer = conn.recv(64)
        finally:
            for fd in close:
                os.close(fd)
        if answer == b"fresh":
            conn.close()
            for pipe in pipes.values():
                pipe.close()
            return None
        return Forked(argv, int(answer), conn, pipes)

    def close(self) -> None:
        if self.server is not None and self.server.poll() is None:
            assert self.server.stdin is not None
            self.server.stdin.close()
            self.server.wait(30)


def exit_status(error: BaseException) -> int | str:
    """The exit status Python gives a script that ended with `error`; "SIGINT" for Ctrl-C,
    which Python turns into death by SIGINT."""
    if isinstance(error, SystemExit):
        return 0 if error.code is None else error.code if isinstance(error.code, int) else 1
    return "SIGINT" if isinstance(error, KeyboardInterrupt) else 1


if __name__ == "__main__":
    import atexit
    import runpy

    status: list[int | str] = []

    def leave() -> None:
        """The last exit handler (registered before any other): exit without tearing down the
        modules. A forked child that does so touches the server's whole heap, its pages
        copied one by one: 2 s of a no-op command's 2.1 s (measured 2026-12-06). What a
        script's exit does before this is done as Python does it: its non-daemon threads
        joined, then every other exit handler (logging's, MLflow's), then stdio flushed."""
        if not status:  # the server
            return
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        if status[0] == "SIGINT":
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        os._exit(int(status[0]))

    atexit.register(leave)
    script = become(serve(sys.argv[1]))
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as stop:
        status.append(exit_status(stop))
        raise  # Python prints a message given, then runs the exit handlers
    except BaseException as error:  # reported as Python would: from the script's frame on
        status.append(exit_status(error))
        tb = error.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename != script:
            tb = tb.tb_next
        tb = tb or error.__traceback__
        sys.excepthook(type(error), error.with_traceback(tb), tb)
        sys.exit(1)
    status.append(0)
