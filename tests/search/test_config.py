"""SearchConfig: one frozen, validated object that ash.search, study YAML and the CLI all build."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

import autoshrink as ash
from autoshrink.cli import build_parser
from autoshrink.errors import ConfigError
from autoshrink.search.config import SETTINGS, SearchConfig
from autoshrink.search.stages.fidelity import Screening
from autoshrink.search.study_config import ENTRY_KEYS, KEYS, load_study_config
from autoshrink.zoo import digits_task

from .conftest import FAST

FIELDS = [f.name for f in dataclasses.fields(SearchConfig)]


def test_every_setting_has_one_table_row_and_a_default() -> None:
    assert FIELDS == list(SETTINGS)
    assert len(FIELDS) == 21
    assert SearchConfig().values()["n_trials"] == 40 and SearchConfig().runtime == "auto"


def test_the_three_surfaces_accept_the_same_names() -> None:
    # the API: search(model, task, space, config=None, *, progress=None, **settings); every name is a setting
    params = inspect.signature(ash.search).parameters
    assert list(params) == ["model", "task", "space", "config", "progress", "settings"]
    for name in FIELDS:
        SearchConfig().replace(**{name: getattr(SearchConfig(), name)})
    # study YAML: every setting is a top-level key; `name` is the study name
    assert set(KEYS) == set(ENTRY_KEYS) | set(FIELDS) - {"study_name"}
    # the CLI: one flag per setting
    parser = build_parser()
    search = next(a for a in parser._subparsers._group_actions[0].choices.values() if a.prog.endswith(" search"))
    flags = {o for a in search._actions for o in a.option_strings}
    assert {"--" + n.replace("_", "-") for n in FIELDS} <= flags


def test_yaml_reaches_the_settings_the_old_config_could_not(tmp_path) -> None:
    (tmp_path / "s.yaml").write_text(
        "name: s\nmodel: a:b\ntask: c:d\nsensitivity: false\nwarm_start: 3\nnarrow_cutoff: 0.2\n"
        "screen: {share: 0.5, margin: 0.02}\nlatency: {warmup: 1, min_repeats: 3}\nrefine_top: 2\n"
        "refine_finetune: {lr: 0.002}\n"
    )
    s = load_study_config(tmp_path / "s.yaml").settings
    assert (s.sensitivity, s.warm_start, s.narrow_cutoff, s.refine_top) == (False, 3, 0.2, 2)
    assert s.screen == Screening(share=0.5, margin=0.02)
    assert (s.latency.warmup, s.latency.min_repeats, s.latency.max_repeats) == (1, 3, 2000)
    assert s.refine_finetune == {"lr": 0.002} and s.study_name == "s"


@pytest.mark.parametrize(
    "key, value, message",
    [
        (
            "screen",
            "{share: 2}",
            "screen: got {'share': 2}; search: screen share=2; use a fraction of the steps in (0, 1)",
        ),
        ("latency", "{repeats: 3}", "latency: got {'repeats': 3}; use a mapping with any of warmup, min_repeats"),
        ("warm_start", "-1", "warm_start: got -1; use true (default), false or a count >= 0."),
        ("sensitivity", "'yes'", "sensitivity: got 'yes'; use true (the pre-pass within its budget"),
        ("refine_slack", "1.5", "refine_slack: got 1.5; use a drop in [0, 1] (0.02 = 2 pp), or None."),
        ("refine_finetune", "{lrr: 1}", "refine_finetune: got {'lrr': 1}; finetune: unknown key(s) 'lrr'"),
        ("objectives", "7", "objectives: got 7; use a list of objective names from accuracy, size, latency, macs."),
    ],
)
def test_yaml_errors_name_the_key_the_value_and_the_fix(tmp_path, key, value, message) -> None:
    (tmp_path / "s.yaml").write_text(f"name: s\nmodel: a:b\ntask: c:d\n{key}: {value}\n")
    with pytest.raises(ConfigError) as info:
        load_study_config(tmp_path / "s.yaml")
    assert str(info.value).startswith(f"{tmp_path / 's.yaml'}:4: {message}")


def test_a_rule_between_settings_is_one_error(tmp_path) -> None:
    (tmp_path / "s.yaml").write_text(
        "name: s\nmodel: a:b\ntask: c:d\nobjectives: [accuracy, size]\nmax_latency_ms: 3\n"
    )
    with pytest.raises(ConfigError, match=r"s.yaml:5: max_latency_ms: needs 'latency' among the objectives"):
        load_study_config(tmp_path / "s.yaml")
    with pytest.raises(ConfigError, match="search: max_latency_ms needs 'latency'"):
        SearchConfig(objectives=("accuracy",), max_latency_ms=3.0)


def test_values_are_normalized_and_the_config_is_frozen() -> None:
    cfg = SearchConfig(objectives=["accuracy", "size_bytes"], screen={"share": 0.5}, timeout=30)
    assert cfg.objectives == ("accuracy", "size") and cfg.screen == Screening(share=0.5)
    assert cfg.timeout == 30.0 and isinstance(cfg.timeout, float)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 3  # type: ignore[misc]
    assert cfg.replace(seed=3).seed == 3 and cfg.seed == 0
    with pytest.raises(ConfigError, match=r"search: unknown setting 'sede' \(did you mean 'seed'\?\)"):
        cfg.replace(sede=3)
    assert cfg.to_dict()["screen"] == {
        "share": 0.5,
        "slack": None,
        "margin": 0.01,
        "calibrate": True,
        "zero_step": False,
    }


def test_search_takes_a_config_and_keyword_overrides(tiny_model, tiny_space, tmp_path) -> None:
    cfg = SearchConfig(
        n_trials=3,
        finetune_steps=2,
        sensitivity=False,
        screen=False,
        latency=FAST,
        storage=f"sqlite:///{tmp_path / 'c.db'}",
        study_name="c",
    )
    task = digits_task(device="cpu")
    r = ash.search(tiny_model, task, tiny_space, cfg, n_trials=2)
    assert sum(t.state.name == "COMPLETE" for t in r.study.trials) == 2 and r.study.study_name == "c"
    assert r.study.user_attrs["finetune"]["steps"] == 2 and "sensitivity" not in r.study.user_attrs
    with pytest.raises(ConfigError, match="search: config must be an ash.SearchConfig, got dict"):
        ash.search(tiny_model, task, tiny_space, {"n_trials": 2})
