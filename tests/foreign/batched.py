"""app.py under a sweeper patched to run its trials in batches, as a sweeper with a batch
barrier does: each new trial waits until every running one has ended. The no-barrier test
in tests/test_foreign_app.py must fail with it."""

import concurrent.futures
import runpy
import sys
from pathlib import Path

from hydra_plugins.lit_tune_sweeper import _core


def wait_for_all(futures, timeout=None, return_when=None):
    return concurrent.futures.wait(futures)


_core.wait = wait_for_all
sys.argv[0] = str(Path(__file__).with_name("app.py"))
runpy.run_path(sys.argv[0], run_name="__main__")
