"""The forked commands (tests/zygote.py) are the processes `python SCRIPT` would be: what the
script sees matches a fresh Python's, for the things the other tests rely on."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import cli_env, popen, run
from zygote import FRESH, Forked

pytestmark = pytest.mark.cli

PROBE = """
import json, os, signal, sys
import helper
print(json.dumps({
    "argv": sys.argv, "cwd": os.getcwd(), "path0": sys.path[0], "helper": helper.WHERE,
    "marker": os.environ.get("PROBE"), "session": os.getsid(0) == os.getpid(),
    "sigint": signal.getsignal(signal.SIGINT) is signal.default_int_handler,
    "sigterm": signal.getsignal(signal.SIGTERM) == signal.SIG_DFL,
    "main": __name__,
}))
print("to stderr", file=sys.stderr)
sys.exit(int(sys.argv[1]))
"""


def probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh: bool) -> dict:
    (tmp_path / "app").mkdir(exist_ok=True)
    (tmp_path / "app" / "probe.py").write_text(PROBE)
    (tmp_path / "app" / "helper.py").write_text("WHERE = 'beside the script'\n")
    (tmp_path / "lib").mkdir(exist_ok=True)
    (tmp_path / "lib" / "sitecustomize.py").write_text(
        "import os\nos.environ['PROBE'] = os.environ['PROBE'] + ' + sitecustomize'\n"
    )
    env = {**cli_env(), "PROBE": "from the caller", "PYTHONPATH": str(tmp_path / "lib")}
    with monkeypatch.context() as patched:
        if fresh:
            patched.setenv(FRESH, "1")
        argv = [sys.executable, str(tmp_path / "app" / "probe.py"), "3"]
        done = run(argv, tmp_path, env, start_new_session=True)
    assert done.returncode == 3, done.stderr
    assert done.stderr.strip() == "to stderr"
    return json.loads(done.stdout)


def test_a_forked_command_sees_what_a_fresh_python_sees(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    fresh = probe(tmp_path, monkeypatch, fresh=True)
    forked = probe(tmp_path, monkeypatch, fresh=False)
    assert forked == fresh
    assert forked["marker"] == "from the caller + sitecustomize"
    assert forked["session"] and forked["sigint"] and forked["sigterm"]
    assert forked["main"] == "__main__" and forked["path0"] == str(tmp_path / "app")


def test_a_forked_command_is_a_process_that_signals_reach(tmp_path: Path):
    script = tmp_path / "wait.py"
    script.write_text("import time\nprint('up', flush=True)\ntime.sleep(60)\n")
    process = popen(
        [sys.executable, str(script)],
        tmp_path,
        cli_env(),
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    assert isinstance(process, Forked)
    assert process.stdout is not None and process.stdout.readline() == "up\n"
    with pytest.raises(subprocess.TimeoutExpired):
        process.wait(0.2)
    start = time.monotonic()
    os.killpg(process.pid, signal.SIGTERM)
    assert process.wait(10) == -signal.SIGTERM
    assert time.monotonic() - start < 5


def test_a_module_the_server_has_imported_shadowed_on_pythonpath_starts_fresh(tmp_path: Path):
    (tmp_path / "stand_in" / "torch").mkdir(parents=True)
    (tmp_path / "stand_in" / "torch" / "__init__.py").write_text("WHICH = 'stand-in'\n")
    script = tmp_path / "which.py"
    script.write_text("import os, torch\nprint(torch.WHICH, os.getppid())\n")
    env = {**cli_env(), "PYTHONPATH": str(tmp_path / "stand_in")}
    process = popen([sys.executable, str(script)], tmp_path, env, stdout=subprocess.PIPE)
    assert isinstance(process, subprocess.Popen)
    out, _ = process.communicate(timeout=60)
    assert out.split() == ["stand-in", str(os.getpid())]


ENDINGS = {
    "returns": "print('done', end='')",  # unflushed at the end: flushed on the way out
    "exits 7": "import sys; sys.exit(7)",
    "exits with a message": "import sys; sys.exit('stopped: a message')",
    "raises": "raise ValueError('bad')",
    "ctrl-c": "raise KeyboardInterrupt",
    "exit handler and thread": (
        "import atexit, threading, time\n"
        "atexit.register(lambda: print('handler ran', flush=True))\n"
        "threading.Thread(target=lambda: (time.sleep(0.5), print('thread ended'))).start()"
    ),
}


@pytest.mark.parametrize("ending", ENDINGS)
def test_a_forked_command_ends_as_a_fresh_python_does(
    ending: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    # Status, output, traceback: a forked command leaves without tearing its modules down
    # (tests/zygote.py, `leave`), after what Python does first on the way out.
    script = tmp_path / "end.py"
    script.write_text(ENDINGS[ending] + "\n")
    ended = []
    for fresh in (True, False):
        with monkeypatch.context() as patched:
            if fresh:
                patched.setenv(FRESH, "1")
            done = run([sys.executable, str(script)], tmp_path, cli_env())
        ended.append((done.returncode, done.stdout, done.stderr))
    assert ended[1] == ended[0]
