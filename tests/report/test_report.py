"""The HTML report: the figures' embedded data, an offline page, the 'smaller but slower' flag,
the `autoshrink report` command and the edge cases (empty study, one objective, no feasible trial)."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from html.parser import HTMLParser

import optuna
import pytest
import torch

import autoshrink as ash
from autoshrink.cli import main
from autoshrink.errors import ConfigError
from autoshrink.measure import Measurement
from autoshrink.report import build_report, write_report
from autoshrink.report.figures import hypervolume_history, with_recorded_constraint
from autoshrink.report.html import mask_url
from autoshrink.report.policies import layer_label, policy_heatmaps, policy_summary
from autoshrink.search import SearchResult, load_result
from autoshrink.search.objectives import resolve
from autoshrink.search.study.schema import FORMAT
from autoshrink.zoo import digits_task
from tests.search.conftest import FAST, Tiny

SPACE = (
    "defaults:\n  sparsity: [0.0, 0.5, 0.8, 0.95]\n  bits: [32, 8, 4, 2]\n"
    "distill: [false, true]\nfinetune: {steps: 5}\n"
)
FRONT = "Pareto front (feasible)"
BUNDLE = "* plotly.js v"  # the licence header that opens the inlined plotly.js


# ------------------------------------------------------------------ helpers
def figures_in(page: str) -> dict[str, list[dict]]:
    """The traces of every figure embedded in the page, by div id (parsed from Plotly.newPlot calls)."""
    out = {}
    for m in re.finditer(r'Plotly\.newPlot\(\s*"([^"]+)",\s*', page):
        out[m.group(1)], _ = json.JSONDecoder().raw_decode(page, m.end())
    return out


def trace(traces: list[dict], name: str) -> dict:
    return next(t for t in traces if t.get("name") == name)


def badge_rows(page: str) -> list[int]:
    """Trial numbers of the front table's rows that carry the 'smaller but slower' badge."""
    table = page[page.index('<table id="front-table">') :]
    table = table[: table.index("</table>")]
    rows = re.findall(r'<tr data-trial="(\d+)"(.*?)</tr>', table, flags=re.S)
    return [int(n) for n, body in rows if "smaller but slower" in body]


def table_rows(page: str, table_id: str) -> list[int]:
    table = page[page.index(f'<table id="{table_id}">') :]
    return [int(n) for n in re.findall(r'<tr data-trial="(\d+)"', table[: table.index("</table>")])]


BASE = Measurement(accuracy=0.9, size_bytes=1000, latency_ms=1.0, macs=100, device="cpu", threads=1, batch_size=1)
POLICY = {"layers": {"fc1": {"sparsity": 0.9, "structured": False, "bits": 4, "rank": 1.0}}, "distill": False}


def synthetic(
    rows: list[tuple[float, int, float]],
    objectives: tuple[str, ...] = ("accuracy", "size", "latency"),
    max_drop: float | None = None,
    storage: str | None = None,
    simulated: dict[int, list[str]] | None = None,
) -> SearchResult:
    """A SearchResult over an in-memory study whose trials measured exactly (accuracy, size, latency);
    `simulated`: Measurement.simulated of some trials, by row index."""
    objs = resolve(objectives)
    study = optuna.create_study(directions=[o.direction for o in objs])
    for i, (accuracy, size, latency) in enumerate(rows):
        m = {**BASE.to_dict(), "accuracy": accuracy, "size_bytes": size, "latency_ms": latency}
        m["simulated"] = (simulated or {}).get(i, [])
        study.add_trial(
            optuna.trial.create_trial(
                values=[m[o.field] for o in objs], user_attrs={"measurement": m, "policy": POLICY}
            )
        )
    return SearchResult(study=study, baseline=BASE, objectives=objs, max_accuracy_drop=max_drop, storage=storage)


# A: untouched numbers; B: 4x smaller but 0.8x speed; C: 10x smaller, 2x faster, 5 pp drop;
# D: dominated by B; E: best size and latency but 40 pp below the baseline (infeasible at 10 pp)
ROWS = [(0.90, 1000, 1.0), (0.89, 250, 1.25), (0.85, 100, 0.5), (0.88, 500, 2.0), (0.50, 50, 0.4)]


@pytest.fixture(scope="module")
def searched(tmp_path_factory) -> dict:
    """Two real searches of the tiny MLP into one SQLite file: 3 objectives and 2, 10 trials each."""
    torch.manual_seed(0)
    task = digits_task(device="cpu")
    model = Tiny()
    ash.finetune(model, task, steps=300, lr=3e-3)
    root = tmp_path_factory.mktemp("report")
    (root / "tiny.yaml").write_text(SPACE)
    space = ash.load_space(root / "tiny.yaml")
    url = f"sqlite:///{root}/report.db"
    out = {"url": url, "root": root}
    for name, objectives in (("three", ("accuracy", "size", "latency")), ("two", ("accuracy", "size"))):
        out[name] = ash.search(
            model,
            task,
            space,
            objectives=objectives,
            n_trials=10,
            storage=url,
            study_name=name,
            seed=0,
            max_accuracy_drop=0.02,
            latency=FAST,
            screen=False,
            sensitivity="full",
        )
    return out


@pytest.fixture(scope="module")
def pages(searched) -> dict[str, str]:
    return {name: build_report(searched[name]) for name in ("three", "two")}


# ------------------------------------------------------------------ the real searches
def test_front_trials_and_sizes_are_in_the_plot_data(searched, pages) -> None:
    result = searched["three"]
    df = result.trials
    drop_ok = df["accuracy_drop"] <= 0.02 + 1e-12
    assert 0 < drop_ok.sum() < 10  # the constraint leaves some trials out: the case under test
    figs = figures_in(pages["three"])
    assert set(figs) == {
        "fig-pareto-size_bytes",
        "fig-pareto-latency_ms",
        "fig-pareto-3d",
        "fig-hypervolume",
        "fig-policy",
        "fig-sensitivity",
        "fig-costs",
    }  # the sensitivity pre-pass runs by default; every evaluation records its cost split
    expected = [(int(r.trial), int(r.size_bytes)) for r in result.pareto.itertuples()]
    for key in ("fig-pareto-size_bytes", "fig-pareto-latency_ms", "fig-pareto-3d"):
        front = trace(figs[key], FRONT)
        assert [(c[0], c[3]) for c in front["customdata"]] == expected
        infeasible = trace(figs[key], "infeasible (drop > 2 pp)")
        assert sorted(c[0] for c in infeasible["customdata"]) == sorted(df.loc[~drop_ok, "trial"].tolist())
        shown = sum(len(t["customdata"]) for t in figs[key] if "customdata" in t)
        assert shown == 10  # every completed trial exactly once
    assert trace(figs["fig-pareto-size_bytes"], FRONT)["x"] == [s for _, s in expected]
    assert trace(figs["fig-pareto-3d"], FRONT)["x"] == [s for _, s in expected]


def test_hypervolume_trace_ends_at_result_hypervolume(searched, pages) -> None:
    for name in ("two", "three"):
        result = searched[name]
        hv = trace(figures_in(pages[name])["fig-hypervolume"], "hypervolume")
        assert hv["x"] == list(range(10))
        assert hv["y"][-1] == pytest.approx(result.hypervolume(), rel=1e-12, abs=1e-15)
        assert all(a <= b for a, b in zip(hv["y"], hv["y"][1:]))
    assert searched["two"].hypervolume() > 0
    assert "5 pp accuracy drop, 1.1x the baseline&#x27;s size_bytes" in pages["two"]


def test_heatmap_has_a_row_per_front_trial_and_a_column_per_layer(searched, pages) -> None:
    result = searched["three"]
    front = result.pareto
    bits, sparsity = figures_in(pages["three"])["fig-policy"]
    for heat in (bits, sparsity):
        assert heat["type"] == "heatmap" and heat["x"] == ["fc1", "fc2"]
        assert [int(y.split()[1]) for y in heat["y"]] == front["trial"].tolist()
        assert len(heat["z"]) == len(front) and all(len(row) == 2 for row in heat["z"])
    for i, policy in enumerate(front["policy"]):
        layers = policy["layers"]
        assert sparsity["customdata"][i] == [layer_label(layers.get(n, {"bits": 32})) for n in ("fc1", "fc2")]
        assert sparsity["z"][i] == [round(layers.get(n, {}).get("sparsity", 0.0) * 100, 2) for n in ("fc1", "fc2")]
        assert bits["z"][i] == [{32: 5, 8: 3, 4: 2, 2: 1}[layers.get(n, {}).get("bits", 32)] for n in ("fc1", "fc2")]


def test_page_is_offline_with_plotly_inlined_once(pages) -> None:
    page = pages["three"]
    assert page.count(BUNDLE) == 1 and len(figures_in(page)) == 7

    class Links(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.remote: list[str] = []

        def handle_starttag(self, tag, attrs):
            for key, value in attrs:
                if key in ("src", "href") and value and re.match(r"(https?:)?//", value):
                    self.remote.append(f"<{tag} {key}={value}>")
            if tag == "link":
                self.remote.append("<link>")

    parser = Links()
    parser.feed(page)
    assert parser.remote == []
    # plotly.js itself holds strings such as t.href="https://plotly.com/" (its logo link, map attributions):
    # code, not links the page loads. Everywhere else, no such text at all.
    start = page.index(BUNDLE)
    outside = page[:start] + page[page.index("</script>", start) :]
    assert 'src="http' not in outside and 'href="http' not in outside
    assert "http" not in outside.replace("http-equiv", "")


def test_smaller_but_slower_badge_marks_exactly_those_rows(searched, pages) -> None:
    front = searched["three"].pareto
    expected = front.loc[(front["compression"] > 1) & (front["speedup"] < 1), "trial"].tolist()
    assert badge_rows(pages["three"]) == expected
    # a constructed front: B is 4x smaller at 0.8x the speed; A (1x, 1x) and C (10x, 2x) are not flagged
    page = build_report(synthetic(ROWS, max_drop=0.10))
    assert table_rows(page, "front-table") == [0, 1, 2]
    assert badge_rows(page) == [1]
    assert "sub-8-bit codes shrink the packed file, not dense-kernel latency" in page


def test_simulated_badge_lists_the_layers_a_gpu_runtime_ran_as_plain_weights() -> None:
    lines = [
        "fc1: float16; simulated: 4-bit codes run as float16 weights",
        "fc2: float16; simulated: unstructured <zeros>",
    ]
    result = synthetic(ROWS, max_drop=0.10, simulated={2: lines})
    page = build_report(result)
    table = page[page.index('<table id="front-table">') :]
    rows = dict(re.findall(r'<tr data-trial="(\d+)"[^>]*>(.*?)</tr>', table[: table.index("</table>")]))
    assert [n for n, body in rows.items() if "badge simulated" in body] == ["2"]
    assert (
        '<span class="badge simulated" title="fc1: float16; simulated: 4-bit codes run as float16 weights&#10;'
        'fc2: float16; simulated: unstructured &lt;zeros&gt;">simulated: 2 layer(s)</span>'
    ) in rows["2"]
    assert list(result.trials["simulated"]) == [0, 0, 2, 0, 0]


def test_infeasible_trial_is_marked_apart_and_kept_off_the_front() -> None:
    result = synthetic(ROWS, max_drop=0.10)
    figs = figures_in(build_report(result))
    for key in ("fig-pareto-size_bytes", "fig-pareto-latency_ms", "fig-pareto-3d"):
        assert [c[0] for c in trace(figs[key], "infeasible (drop > 10 pp)")["customdata"]] == [4]
        assert [c[0] for c in trace(figs[key], FRONT)["customdata"]] == [0, 1, 2]
        assert [c[0] for c in trace(figs[key], "completed trials")["customdata"]] == [3]


def test_hypervolume_history_exact_values() -> None:
    # normalized (drop, size ratio): A (0, 1.0), B (0.01, 0.25), C (0.05, 0.1) sits on the 5 pp reference,
    # D (0.02, 0.5) is dominated by B, E is infeasible. A alone: 0.05 * 0.1; with B: 0.005 + 0.04 * 0.85 - 0.004.
    result = synthetic(ROWS, objectives=("accuracy", "size"), max_drop=0.10)
    numbers, values = hypervolume_history(result)
    assert numbers == [0, 1, 2, 3, 4]
    assert values == pytest.approx([0.005, 0.035, 0.035, 0.035, 0.035], rel=1e-12)
    assert result.hypervolume() == pytest.approx(0.035, rel=1e-12)


# ------------------------------------------------------------------ edge cases
def test_latency_not_an_objective_gives_no_latency_or_3d_plot(pages) -> None:
    assert set(figures_in(pages["two"])) == {
        "fig-pareto-size_bytes",
        "fig-hypervolume",
        "fig-policy",
        "fig-sensitivity",
        "fig-costs",
    }


def test_single_objective() -> None:
    result = synthetic(ROWS, objectives=("accuracy",))
    page = build_report(result)
    figs = figures_in(page)
    assert set(figs) == {"fig-pareto-size_bytes", "fig-hypervolume", "fig-policy"}
    assert [c[0] for c in trace(figs["fig-pareto-size_bytes"], FRONT)["customdata"]] == [0]
    assert trace(figs["fig-hypervolume"], "hypervolume")["y"][-1] == pytest.approx(0.05) == result.hypervolume()
    assert table_rows(page, "front-table") == [0]


def test_no_feasible_trial() -> None:
    result = synthetic(ROWS[1:], max_drop=0.0)  # every trial is below the baseline
    page = build_report(result)
    figs = figures_in(page)
    assert "No feasible trial" in page and "fig-policy" not in figs and 'id="front-table"' not in page
    assert len(trace(figs["fig-pareto-size_bytes"], "infeasible (drop > 0 pp)")["customdata"]) == 4
    assert trace(figs["fig-hypervolume"], "hypervolume")["y"] == [0.0] * 4


def test_empty_study_page_says_no_completed_trials(tmp_path) -> None:
    study = optuna.create_study(directions=["maximize", "minimize"])
    page = build_report(SearchResult(study=study, baseline=BASE, objectives=resolve(["accuracy", "size"])))
    assert "No completed trials yet" in page and "0 (0 complete, 0 failed)" in page
    assert figures_in(page) == {} and BUNDLE not in page


def _empty_stored_study(url: str, name: str) -> None:
    """A study as `ash.search` creates it, whose only trial failed: no completed trial."""
    study = optuna.create_study(storage=url, study_name=name, directions=["maximize", "minimize"])
    for key, value in (("format", FORMAT), ("objectives", ["accuracy", "size"]), ("baseline", BASE.to_dict())):
        study.set_user_attr(key, value)
    trial = study.ask()
    trial.set_user_attr("failure", "RuntimeError: <boom> & co")
    study.tell(trial, state=optuna.trial.TrialState.FAIL)


def test_cli_report_of_an_empty_study_lists_the_failure(tmp_path, capsys) -> None:
    url = f"sqlite:///{tmp_path}/empty.db"
    _empty_stored_study(url, "empty")
    out = tmp_path / "empty.html"
    assert main(["report", "empty", "--storage", url, "-o", str(out)]) == 0
    page = out.read_text()
    assert "No completed trials yet" in page and "1 (0 complete, 1 failed)" in page
    assert table_rows(page, "failed-table") == [0] and "RuntimeError: &lt;boom&gt; &amp; co" in page
    assert capsys.readouterr().out.startswith(f"wrote {out} (")


# ------------------------------------------------------------------ the command
def test_cli_writes_at_o_and_at_the_default_path(searched, tmp_path, monkeypatch, capsys) -> None:
    url, result = searched["url"], searched["two"]
    out = tmp_path / "deep" / "er" / "two.html"
    assert main(["report", "two", "--storage", url, "-o", str(out), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["path"] == str(out) and data["trials"] == 10 and data["bytes"] == out.stat().st_size
    # the stored constraint is recovered: the same front and hypervolume as the search returned
    assert data["front"] == len(result.pareto) and data["hypervolume"] == pytest.approx(result.hypervolume())
    assert "accuracy drop &le; 2 pp" in out.read_text()
    monkeypatch.chdir(tmp_path)
    assert main(["report", "two", "--storage", url]) == 0
    assert (tmp_path / "studies" / "two" / "report.html").read_text().startswith("<!DOCTYPE html>")
    assert capsys.readouterr().out.startswith("wrote studies/two/report.html (")
    config = tmp_path / "two.yaml"  # STUDY as a study config: its name and storage
    config.write_text(
        f"name: two\nmodel: autoshrink.zoo:digits_model\ntask: autoshrink.zoo:digits_task\nstorage: {url}\n"
    )
    (tmp_path / "studies" / "two" / "report.html").unlink()
    assert main(["report", str(config)]) == 0
    assert (tmp_path / "studies" / "two" / "report.html").is_file()
    assert sorted(p.name for p in (tmp_path / "studies" / "two").iterdir()) == ["report.html"]  # no temp file left


def test_cli_missing_study_is_one_line_exit_2(searched) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "autoshrink.cli", "report", "nosuch", "--storage", searched["url"]],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1
    assert proc.stderr.startswith(
        f"autoshrink: error: storage {searched['url']!r} holds no study 'nosuch'; the studies there: 'three', 'two'."
    )


def test_cli_help(capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(["report", "--help"])
    assert e.value.code == 0 and "STUDY" in capsys.readouterr().out


# ------------------------------------------------------------------ pieces
def test_write_report_is_atomic_and_errors_are_one_line(tmp_path) -> None:
    result = synthetic(ROWS)
    target = tmp_path / "a" / "b" / "r.html"
    target.parent.mkdir(parents=True)
    target.write_text("old")
    assert write_report(result, target) == target
    assert target.read_text() == build_report(result) and list(target.parent.iterdir()) == [target]
    (tmp_path / "file").write_text("")
    said = r"^report: cannot create the folder of '.*/file/r.html' \(File exists\)\. Fix: pass a writable path"
    with pytest.raises(ConfigError, match=said):
        write_report(result, tmp_path / "file" / "r.html")


def test_storage_password_is_masked() -> None:
    url = "postgresql://ash:s3cret@db.example:5432/studies"
    assert mask_url(url) == "postgresql://ash:***@db.example:5432/studies"
    assert mask_url("sqlite:///studies/x.db") == "sqlite:///studies/x.db"
    page = build_report(synthetic(ROWS, storage=url))
    assert "s3cret" not in page and "postgresql://ash:***@db.example:5432/studies" in page


def test_labels_and_summaries() -> None:
    assert layer_label({"sparsity": 0.9, "structured": True, "bits": 4, "rank": 0.25}) == "4b 90%s r0.25 S"
    assert layer_label({"sparsity": 0.0, "structured": True, "bits": 16, "rank": 1.0}) == "fp16"
    assert layer_label({"sparsity": "2:4", "structured": False, "bits": 8, "rank": 1.0}) == "8b 2:4s"
    policy = {
        "layers": {
            "fc1": {"sparsity": 0.5, "structured": False, "bits": 8, "rank": 1.0},
            "fc2": {"sparsity": 0.0, "structured": False, "bits": 32, "rank": 1.0},
        },
        "distill": True,
    }
    assert policy_summary(policy) == "fc1 8b 50%s + KD"
    assert policy_summary({"layers": {}, "distill": False}) == "no compression"


def test_constraint_is_recovered_from_a_loaded_study(searched) -> None:
    loaded = load_result("three", searched["url"])
    assert loaded.max_accuracy_drop == 0.02  # stored by the search
    assert loaded.pareto["trial"].tolist() == searched["three"].pareto["trial"].tolist()
    # studies written before the constraint was stored: it is read back from the trials
    recovered = with_recorded_constraint(dataclasses.replace(loaded, max_accuracy_drop=None))
    assert recovered.max_accuracy_drop == pytest.approx(0.02, abs=1e-12)
    assert recovered.pareto["trial"].tolist() == searched["three"].pareto["trial"].tolist()
    assert policy_heatmaps(synthetic([])) is None


# ------------------------------------------------------------------ the search's stages
def test_report_shows_stages_sensitivity_narrowing_and_refined_trials(tmp_path) -> None:
    torch.manual_seed(0)
    task = digits_task(device="cpu")
    model = Tiny()
    ash.finetune(model, task, steps=300, lr=3e-3)
    (tmp_path / "s.yaml").write_text(SPACE)
    r = ash.search(
        model,
        task,
        ash.load_space(tmp_path / "s.yaml"),
        objectives=("accuracy", "size"),
        n_trials=12,
        storage=f"sqlite:///{tmp_path}/st.db",
        study_name="st",
        seed=0,
        max_accuracy_drop=0.05,
        latency=FAST,
        refine_top=1,
        refine_steps=6,
        narrow_cutoff=0.3,
        sensitivity="full",
    )
    loaded = load_result("st", f"sqlite:///{tmp_path}/st.db")
    assert loaded.timing["screening"] == r.timing["screening"]  # the last run's timing is kept in the study
    page = build_report(loaded)
    figs = figures_in(page)
    heat = figs["fig-sensitivity"][0]
    rows = r.study.user_attrs["sensitivity"]["rows"]
    assert heat["y"] == ["fc1", "fc2"] and len(heat["x"]) == len({(x["field"], x["value"]) for x in rows}) == 6
    removed = r.study.user_attrs["narrowed"]
    assert sum("removed" in cell for row in heat["text"] for cell in row) == len(removed)
    table = page[page.index('<table id="stage-table">') :]
    table = table[: table.index("</table>")]
    states = [t.state.name for t in r.study.trials]
    stages = [t.user_attrs["stage"] for t in r.study.trials]
    for stage in set(stages):
        full = sum(1 for s, st in zip(stages, states) if s == stage and st == "COMPLETE")
        pruned = sum(1 for s, st in zip(stages, states) if s == stage and st == "PRUNED")
        assert f'<tr><td class="text">{stage}</td><td>{full}</td><td>{pruned}</td>' in table
    assert "refined" in stages and '<table id="refined-table">' in page
    src = next(t.user_attrs["refined_from"] for t in r.study.trials if t.user_attrs["stage"] == "refined")
    assert f"[refined from {src}]" in page
    if removed:
        narrowed = page[page.index('<table id="narrowed-table">') :]
        assert narrowed[: narrowed.index("</table>")].count("<tr><td") == len(removed)
    else:
        assert "No choice exceeded the cutoff alone" in page
    assert "runtime of every measurement" in page and "sensitivity pre-pass: 12 single choices" in page


def test_latency_lookup_table_section(searched, pages) -> None:
    table = searched["three"].latency_table()
    assert set(table.layer) == {"fc1", "fc2"} and (table.choice == "none").sum() == 2
    page = pages["three"]
    assert "<h2>Latency lookup table</h2>" in page
    sect = page[page.index('<table id="latency-table">') :]
    assert sect[: sect.index("</table>")].count("<tr><td>") == len(table)  # a row per entry (fewer than the cap)
    pred = searched["three"].latency_predictions()
    if len(pred):
        assert f"all: {len(pred)} trials, median |error|" in page
    assert "No latency lookup table: latency is not an objective" in pages["two"]


def test_storage_table_breaks_down_the_smallest_front_point(searched, pages) -> None:
    result = searched["two"]
    smallest = result.pareto.sort_values(["size_bytes", "trial"]).iloc[0]
    layers = result.study.trials[int(smallest.trial)].user_attrs["measurement"]["layers"]
    table = pages["two"].split('<table id="storage-table">', 1)[1].split("</table>", 1)[0]
    rows = table.split("<tr>")[2:]
    assert len(rows) == len(layers) >= 1
    for row, layer in zip(rows, layers):
        assert f'<td class="text">{layer["name"]}</td>' in row and f"<td>{layer['bytes']}</td>" in row
        assert f'<td class="text">{layer["encoding"]}</td>' in row
    assert (
        f"Trial {int(smallest.trial)}, the smallest feasible front point ({int(smallest.size_bytes)} bytes"
        in pages["two"]
    )
