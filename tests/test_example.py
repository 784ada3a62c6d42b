"""The example project (examples/friedman), run as its README tells a user: its `pip install`
lines into a new virtual environment, then its `lit-tune` lines in its own folder (shortened
by overrides appended), with lit_tune installed from a copy of this repository."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT, assert_optuna_and_mlflow_agree, cli_env, objectives

pytestmark = pytest.mark.slow
EXAMPLE = ROOT / "examples" / "friedman"
# What the README's runs get appended: a few epochs and trials on fewer rows.
SHORT = ["data.samples=600", "trainer.max_epochs=4", "callbacks.progress_bar.refresh_rate=0"]
SHORT_SWEEP = [*SHORT, "hydra.sweeper.n_trials=3"]
# Where the new environment imports lit_tune and the sweeper from.
WHERE = (
    "import friedman, lit_tune, hydra_plugins.lit_tune_sweeper as s; "
    "print(lit_tune.__file__, s.__file__)"
)


def readme_commands(readme: Path) -> list[str]:
    """The lines of the README's first bash block, comments dropped."""
    text = readme.read_text()
    block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    lines = [line.split("  #", 1)[0].strip() for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def copy_repository(to: Path) -> Path:
    """What a clone holds of lit_tune (its package, configs, pyproject), its sweeper and the
    example."""
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "mlruns", "outputs", "multirun")
    to.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, to / name)
    for name in ("src", "conf", "plugins", "examples"):
        shutil.copytree(ROOT / name, to / name, symlinks=True, ignore=ignore)
    return to / "examples" / "friedman"


def new_venv(at: Path) -> Path:
    """A virtual environment that sees this one's packages (torch, Lightning, ...) but not its
    lit_tune: the README's `pip install` lines put lit_tune and the example there."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(at)], check=True)
    ours = Path(sysconfig.get_paths()["purelib"])
    # A path line: the folder joins sys.path, and its own .pth files (our editable lit_tune)
    # are not read.
    (at / "lib" / ours.parent.name / "site-packages" / "ours.pth").write_text(f"{ours}\n")
    return at / "bin"


def test_the_example_runs_by_its_readme(tmp_path: Path):
    example = copy_repository(tmp_path / "repo")
    bin_dir = new_venv(tmp_path / "venv")
    env = {**cli_env(), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)
    commands = readme_commands(example / "README.md")
    assert [c.split()[0] for c in commands] == ["pip", "pip", "lit-tune", "lit-tune", "mlflow"]
    outputs = []
    for command in commands[:4]:
        program, *args = command.split()
        if program == "pip":
            line = [str(bin_dir / "python"), "-m", "pip", "--quiet", *args]
        else:
            line = [str(bin_dir / "lit-tune"), *args, *(SHORT_SWEEP if "-m" in args else SHORT)]
        done = subprocess.run(line, cwd=example, env=env, capture_output=True, text=True)
        assert done.returncode == 0, f"{command}\n{done.stderr[-3000:]}"
        outputs.append(done.stdout)

    where = subprocess.run(
        [str(bin_dir / "python"), "-c", WHERE],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    ours, sweeper = where.stdout.split()
    assert ours.startswith(str(tmp_path / "repo" / "src")), where.stderr  # the copy's
    assert sweeper.startswith(str(tmp_path / "repo" / "plugins" / "hydra_lit_tune_sweeper"))

    # The one run and the sweep wrote to the example's mlruns/: a parent and three trials.
    assert len(objectives(outputs[2])) == 1  # a sweep prints the sweeper's line per trial:
    assert len(re.findall(r"trial \d+ \(\d/3 done\)", outputs[3])) == 3
    study = assert_optuna_and_mlflow_agree(example, "friedman")
    assert study.direction.name == "MINIMIZE" and len(study.trials) == 3
    assert not (ROOT / "examples" / "friedman" / "mlruns").exists()


def test_wheels_hold_the_configs_and_the_sweeper_apart(tmp_path: Path):
    """A non-editable install has conf/ inside the package (src/lit_tune/conf is a link); the
    sweeper is a wheel of its own, which holds no lit_tune."""
    repo = copy_repository(tmp_path / "repo").parents[1]
    for project in (repo, repo / "plugins" / "hydra_lit_tune_sweeper"):
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), project],
            check=True,
            env=cli_env(),
        )
    (wheel,) = tmp_path.glob("lit_tune-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "lit_tune/conf/train.yaml" in names
    expected = {f"lit_tune/{p.relative_to(ROOT)}" for p in (ROOT / "conf").rglob("*.yaml")}
    assert expected <= names
    assert not [n for n in names if n.startswith("hydra_plugins/")]
    (wheel,) = tmp_path.glob("hydra_lit_tune_sweeper-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "hydra_plugins/lit_tune_sweeper/__init__.py" in names
    assert not [n for n in names if n.startswith(("lit_tune/", "hydra_plugins/__init__"))]
