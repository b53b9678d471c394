"""End to end in headless Chromium: the dashboard's single-page app and the HTML report, as a browser renders them."""

from __future__ import annotations

import re

import numpy as np

from autoshrink.cli import main
from autoshrink.search import non_dominated

from .browser import (
    STUDY,
    dump_dom,
    get_json,
    js_number,
    needs_chromium,
    screenshot,
    start_dashboard,
    stop,
    study,  # noqa: F401 (a fixture the tests request by name)
    visible_text,
)

pytestmark = needs_chromium


def test_dashboard_renders_the_study_in_chromium(study, tmp_path) -> None:
    expected = study.load()
    dash = start_dashboard(str(study.db), tmp_path)
    try:
        sid = get_json(f"{dash.base}/api/studies")["study_summaries"][0]["study_id"]
        page = f"{dash.base}/dashboard/studies/{sid}"
        overview = dump_dom(page)
        trials = dump_dom(f"{page}/trials")
        png = screenshot(page, tmp_path / "dashboard_study.png")
    finally:
        stop(dash.proc)

    text = visible_text(overview)
    assert f"{STUDY} (id={sid})" in text  # the app bar's study title
    assert "Pareto Front" in text and "Best Trials" in text
    assert overview.count('class="main-svg"') >= 2  # plotly drew the charts (Pareto front, history, ...)
    done = [t for t in expected.trials if t.state.name == "COMPLETE"]  # the dashboard's front ignores constraints
    front = [t for t, keep in zip(done, non_dominated(np.array([[-t.values[0], t.values[1]] for t in done]))) if keep]
    for t in front:  # the Best Trials cards: number and objective values, as optuna has them
        assert f"Trial {t.number} Objective Values = [{', '.join(js_number(v) for v in t.values)}]" in text

    listed = visible_text(trials)
    assert f"{len(expected.trials)} Trials" in listed  # the trial list's header
    shown = [(str(t.number), t.state.name.capitalize()) for t in expected.trials]  # Complete, or Pruned (screened)
    assert re.findall(r"Trial (\d+) (Complete|Pruned)", listed)[: len(shown)] == shown
    assert ("3", "Pruned") in shown
    first = expected.trials[0]  # the selected trial's detail panel
    assert re.search(r"Trial 0 \(trial_id=\d+\) Complete", listed)
    assert f"Value {', '.join(js_number(v) for v in first.values)}" in listed

    assert png.stat().st_size > 10_000


def _figure(dom: str, key: str) -> str:
    """The rendered markup of the report's figure `fig-<key>` (up to the next figure)."""
    start = dom.index(f'id="fig-{key}"')
    end = dom.find('id="fig-', start + 1)
    return dom[start : end if end > 0 else len(dom)]


def test_report_renders_plots_and_front_in_chromium(study, tmp_path, capsys) -> None:
    expected = study.load()
    path = tmp_path / "report.html"
    assert main(["report", STUDY, "--storage", study.url, "-o", str(path)]) == 0
    assert f"wrote {path}" in capsys.readouterr().out
    dom = dump_dom(path.as_uri())
    png = screenshot(path.as_uri(), tmp_path / "report.png")

    assert f"autoshrink report: {STUDY}" in visible_text(dom)
    complete = [t for t in expected.trials if t.state.name == "COMPLETE"]
    for key in ("pareto-size_bytes", "hypervolume", "policy", "costs"):  # plotly.js ran and drew each figure
        assert 'class="main-svg"' in _figure(dom, key), f"figure {key} was not rendered"
    scatter = _figure(dom, "pareto-size_bytes")
    assert 'class="scatterlayer' in scatter
    assert len(re.findall(r'class="point[ "]', scatter)) >= len(complete)  # every completed trial is a marker
    table = re.search(r'<table id="front-table">(.*?)</table>', dom, flags=re.S).group(1)
    rows = re.findall(r'<tr data-trial="(\d+)"[^>]*><td>(\d+)</td>', table)
    assert all(a == b for a, b in rows)
    assert sorted(int(a) for a, _ in rows) == sorted(t.number for t in expected.best_trials)

    assert png.stat().st_size > 10_000
