"""The MLflow UI in a real browser: a sweep's parent run, its trials nested under it, compared.

Playwright drives Debian's Chromium headless (`make install` provides both; no browser is
downloaded). LIT_TUNE_SCREENSHOTS=docs/img refreshes the README's screenshots; without it they
go to the test's tmp_path.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT, make_server, run_cli
from mlflow import MlflowClient
from mlflow.entities import Run
from playwright.sync_api import Locator, Page, expect, sync_playwright

pytestmark = pytest.mark.slow
STUDY = "digits-mlp"
TIMEOUT_MS = 60_000  # two cores that also train: MLflow's first page takes seconds
VIEWPORT = {"width": 1400, "height": 900}
# The runs table's columns to flip. Off: three that stay empty here. On: the metric, the trial
# and a parameter the sweep varies.
COLUMNS = [
    "Dataset",
    "Source",
    "Models",
    "val/acc",
    "val/acc_best",
    "optuna.trial_number",
    "optimizer.lr",
]
# What MLflow 3's UI stores once a user has closed its assistant panel and telemetry notice;
# without these they cover a third of every screenshot. Keys it does not know are harmless.
QUIET_UI = """
try {
  localStorage.setItem("mlflow.assistant.fab.autoOpenedOnFirstLoad_v1", "true");
  localStorage.setItem("mlflow.assistant.panelOpen_v1", "false");
  localStorage.setItem("mlflow.telemetry.info.alert.dismissed_v1", "true");
} catch (e) {}  // about:blank has no localStorage
"""


@pytest.fixture
def sweep_dir(tmp_path: Path) -> Path:
    """A folder whose mlruns/ holds a small sweep: 3 trials of 5 epochs on digits (in a region
    that trains, so that the screenshots show learning)."""
    result = run_cli(
        "-m",
        "hparams_search=mlp",
        "hydra/launcher=basic",
        "trainer.max_epochs=5",
        "optimizer=choice(adam, adamw)",
        "optimizer.lr=tag(log, interval(0.001, 0.01))",
        "hydra.sweeper.n_trials=3",
        f"hydra.sweeper.study_name={STUDY}",
        "callbacks.progress_bar.refresh_rate=0",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp_path


@pytest.fixture
def ui_url(sweep_dir: Path) -> Iterator[str]:
    """`make ui` serving the sweep's store on a free port; stopped with all its processes."""
    with make_server("ui", sweep_dir / "ui.log", MLRUNS=str(sweep_dir / "mlruns")) as url:
        yield url


@pytest.fixture
def page() -> Iterator[Page]:
    """A tab of Debian's Chromium, headless, 1400x900."""
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is missing; `make install` installs it"
    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True)
        try:
            context = browser.new_context(viewport=VIEWPORT)
            context.add_init_script(QUIET_UI)
            tab = context.new_page()
            tab.set_default_timeout(TIMEOUT_MS)
            yield tab
        finally:
            browser.close()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    """Where screenshots go: $LIT_TUNE_SCREENSHOTS (relative to the repository) or tmp_path."""
    folder = ROOT / os.environ.get("LIT_TUNE_SCREENSHOTS", tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def sweep_runs(mlruns: Path) -> tuple[Run, list[Run]]:
    """The sweep's parent run and its trial runs (by trial number), as MLflow's client has them."""
    client = MlflowClient(f"sqlite:///{mlruns}/mlflow.db")
    experiment = client.get_experiment_by_name("lit_tune")
    assert experiment is not None
    runs = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`optuna.study_name` = '{STUDY}'"
    )
    (parent,) = [r for r in runs if r.data.tags.get("lit_tune.role") == "sweep"]
    children = [r for r in runs if "optuna.trial_number" in r.data.tags]
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in children)
    return parent, sorted(children, key=lambda r: int(r.data.tags["optuna.trial_number"]))


def run_link(page: Page, run: Run) -> Locator:
    # Trials share a run name, so a run is found by the link to its own page.
    return page.locator(f'a[href$="/runs/{run.info.run_id}"]')


def runs_table_cell(page: Page, run: Run, column: str) -> str:
    """The text in the runs table at (run, column), by the grid's ARIA row and column indices."""
    # The table is an ag-grid: the run-name part of a row and its metric part are separate
    # elements that share an aria-rowindex.
    row = page.get_by_role("row").filter(has=run_link(page, run))
    header = page.get_by_role("columnheader", name=column, exact=True).first
    row_index, col_index = row.get_attribute("aria-rowindex"), header.get_attribute("aria-colindex")
    cell = page.locator(
        f'[role="row"][aria-rowindex="{row_index}"] [role="gridcell"][aria-colindex="{col_index}"]'
    )
    return cell.inner_text().strip()


def toggle_columns(page: Page, names: list[str]) -> None:
    """(Un)tick columns in the runs table's picker; it lists 100+ keys, so search each first."""
    page.get_by_role("button", name="Columns").click()
    tree = page.get_by_test_id("column-selector-tree")
    for name in names:
        page.get_by_placeholder("Search columns").fill(name)
        # The node whose whole text is the key: searching "val/acc" also lists "val/acc_best".
        node = tree.locator(".du-bois-light-tree-treenode")
        node.filter(has_text=re.compile(f"^{re.escape(name)}$")).click()
    page.keyboard.press("Escape")


def compare_metrics(page: Page) -> dict[str, list[float]]:
    """The compare view's metric table: name -> values, one per run column."""
    # Two scrolling grids side by side: metric names (links to charts), then their values.
    names_grid, values_grid = page.get_by_role("grid").all()
    names = names_grid.get_by_role("link").all_inner_texts()
    values = [float(v) for v in values_grid.inner_text().split()]
    per_row = len(values) // len(names)
    assert per_row * len(names) == len(values), (names, values)
    return {name: values[i * per_row : (i + 1) * per_row] for i, name in enumerate(names)}


def test_the_ui_lists_a_sweep_with_nested_trials_and_compares_them(
    sweep_dir: Path, ui_url: str, page: Page, shots: Path
):
    parent, children = sweep_runs(sweep_dir / "mlruns")
    assert len(children) == 3
    page.goto(ui_url)
    page.get_by_role("button", name="Model training").click()
    page.get_by_role("link", name="lit_tune", exact=True).first.click()
    check_runs_table(page, parent, children)
    page.screenshot(path=shots / "mlflow-runs.png")
    page.get_by_role("button", name="Compare").click()
    check_comparison(page, children)
    page.set_viewport_size({**VIEWPORT, "height": 1560})  # down to the last metric
    page.screenshot(path=shots / "mlflow-compare.png")
    page.set_viewport_size(VIEWPORT)
    page.get_by_role("link", name="val/acc", exact=True).click()
    check_val_acc_chart(page, children)
    page.screenshot(path=shots / "mlflow-val-acc.png")


def check_runs_table(page: Page, parent: Run, children: list[Run]) -> None:
    """The sweep is one run named after the study; its trials are nested under it, hidden until
    it is expanded, each with its val/acc and trial number. Leaves the trials selected."""
    expect(run_link(page, parent)).to_have_text(STUDY)
    for child in children:
        expect(run_link(page, child)).to_be_hidden()
    page.get_by_role("row").filter(has=run_link(page, parent)).get_by_role("button").click()
    toggle_columns(page, COLUMNS)
    for child in children:
        expect(run_link(page, child)).to_be_visible()
        shown = float(runs_table_cell(page, child, "val/acc"))
        assert round(shown, 4) == round(child.data.metrics["val/acc"], 4)
        trial = runs_table_cell(page, child, "optuna.trial_number")
        assert trial == child.data.tags["optuna.trial_number"]
        page.get_by_role("row").filter(has=run_link(page, child)).get_by_role("checkbox").check()
    assert runs_table_cell(page, parent, "val/acc") == "-"  # the sweep itself trains nothing
    page.evaluate("document.activeElement.blur()")  # no focus ring in the screenshot


def check_comparison(page: Page, children: list[Run]) -> None:
    """One column per trial (the parent is not one), with its optimizer.lr and val/acc."""
    expect(page.get_by_text("Comparing 3 Runs from 1 Experiment")).to_be_visible()
    links = page.get_by_role("row").filter(has_text="Run ID:").get_by_role("link")
    expect(links).to_have_count(len(children))
    by_id = {r.info.run_id: r for r in children}
    columns = [by_id[str(link.get_attribute("href")).rsplit("/", 1)[1]] for link in links.all()]
    lr_row = page.get_by_role("row").filter(
        has=page.get_by_role("rowheader", name="optimizer.lr", exact=True)
    )
    expect(lr_row.get_by_role("cell")).to_have_text(
        [r.data.params["optimizer.lr"] for r in columns]
    )
    expect(page.get_by_role("link", name="val/acc", exact=True)).to_be_visible()
    shown = compare_metrics(page)["val/acc"]  # rounded to 3 decimals
    assert shown == pytest.approx([r.data.metrics["val/acc"] for r in columns], abs=5e-4)
    for table in ["Parameters", "Metrics"]:
        page.get_by_role("switch", name=f"{table} - Show diff only").click()
    page.get_by_role("button", name="Visualizations").click()  # fold the plots: tables first


def check_val_acc_chart(page: Page, children: list[Run]) -> None:
    """val/acc over training: a line per trial; its latest value and its max (val/acc_best)."""
    expect(page.get_by_text(re.compile(r"\(val/acc\)$"))).to_have_count(len(children))  # the legend
    for child in children:
        cells = page.get_by_role("row").filter(has=run_link(page, child)).get_by_role("cell")
        latest, maximum = cells.nth(1).inner_text(), cells.nth(3).inner_text()  # "0.46 (step=11)"
        assert float(latest.split()[0]) == pytest.approx(child.data.metrics["val/acc"])
        assert float(maximum.split()[0]) == pytest.approx(child.data.metrics["val/acc_best"])
