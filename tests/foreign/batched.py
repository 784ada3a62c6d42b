"""`python batched.py [APP.py] ARGS`: a Hydra app (app.py beside this file unless given)
under a sweeper patched to run its trials in batches, as a sweeper with a batch barrier does:
each new trial waits until every running one has ended. The no-barrier tests in
tests/test_foreign_app.py and tests/test_sweeper.py must fail with it."""

import concurrent.futures
import runpy
import sys
from pathlib import Path

from hydra_plugins.lit_tune_sweeper import _core


def wait_for_all(futures, timeout=None, return_when=None):
    return concurrent.futures.wait(futures)


_core.wait = wait_for_all
given = len(sys.argv) > 1 and sys.argv[1].endswith(".py")
sys.argv[0] = sys.argv.pop(1) if given else str(Path(__file__).with_name("app.py"))
runpy.run_path(sys.argv[0], run_name="__main__")
