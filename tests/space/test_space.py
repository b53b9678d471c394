from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from torch import nn

import autoshrink as ash
from autoshrink.errors import ConfigError
from autoshrink.space import bind, load_space

ROOT = Path(__file__).resolve().parents[2]


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 8)
        self.features = nn.Sequential(nn.Conv1d(8, 16, 3), nn.ReLU(), nn.Conv1d(16, 16, 3))
        self.bn = nn.BatchNorm1d(16)
        self.fc1 = nn.Linear(16, 32)
        self.head = nn.Linear(32, 4)


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "space.yaml"
    p.write_text(textwrap.dedent(text))
    return p


LAYER_SPACES = ["default", "quantize_only", "prune_only", "lowrank_only", "structured", "post_training"]
BUILTIN = [*LAYER_SPACES, "transformer"]  # transformer binds only to transformer models (tests/space/test_blocks.py)


def test_builtin_spaces_live_in_the_package() -> None:
    from autoshrink.space import BUILTIN_DIR

    assert BUILTIN_DIR == ROOT / "autoshrink" / "spaces"
    assert sorted(p.stem for p in BUILTIN_DIR.glob("*.yaml")) == sorted(BUILTIN)
    assert (ROOT / "search_spaces").resolve() == BUILTIN_DIR  # the old path at the root is a link to them


@pytest.mark.parametrize("name", LAYER_SPACES)
def test_builtin_spaces_load_and_bind(name: str) -> None:
    space = load_space(ROOT / "autoshrink" / "spaces" / f"{name}.yaml")
    assert load_space(name) == space
    assert load_space(ROOT / "search_spaces" / f"{name}.yaml") == space
    bound = bind(space, Net())
    assert list(bound.layers) == ["features.0", "features.2", "fc1", "head"]  # no embedding by default
    assert all(
        p.split(".")[-1] in ("sparsity", "structured", "bits", "rank", "group_size") or p == "distill"
        for p, _ in bound.params()
    )


def test_rules_override_in_order_and_match_by_glob_regex_type(tmp_path) -> None:
    space = load_space(
        write(
            tmp_path,
            """
        defaults: {sparsity: [0.0, 0.5], bits: [32, 8]}
        rules:
          - type: Conv1d
            sparsity: [0.0, 0.3]
          - match: "features.*"
            bits: [8, 4]
          - match: "re:^fc\\\\d$"
            rank: [1.0, 0.5]
          - match: head
            sparsity: [0.0]
            bits: [8]
          - match: embed
            bits: [8, 4]
          - match: "features.2"
            skip: true
        distill: [false, true]
    """,
        )
    )
    b = bind(space, Net())
    assert list(b.layers) == ["embed", "features.0", "fc1", "head"]
    assert b.layers["features.0"]["sparsity"].values == (0.0, 0.3)
    assert b.layers["features.0"]["bits"].values == (8, 4)
    assert b.layers["fc1"]["rank"].values == (1.0, 0.5) and b.layers["fc1"]["bits"].values == (32, 8)
    assert b.layers["head"]["sparsity"].fixed and b.layers["head"]["bits"].values == (8,)
    assert [p for p, _ in b.params()] == [
        "embed.sparsity",
        "embed.bits",
        "features.0.sparsity",
        "features.0.bits",
        "fc1.sparsity",
        "fc1.bits",
        "fc1.rank",
        "distill",
    ]


def test_ranges_expand_to_choices(tmp_path) -> None:
    space = load_space(
        write(
            tmp_path,
            """
        defaults:
          sparsity: {low: 0.0, high: 0.9, step: 0.3}
          bits: {low: 2, high: 8, step: 2}
    """,
        )
    )
    assert space.defaults["sparsity"].values == (0.0, 0.3, 0.6, 0.9)
    assert space.defaults["bits"].values == (2, 4, 6, 8)


@pytest.mark.parametrize(
    "body, message",
    [
        ("defaults: {bits: [32, 12]}", "space.yaml:1: defaults.bits[1]: got 12; bits must be one of"),
        (
            "defaults:\n  sparsity: [0.5, 1.0]",
            "space.yaml:2: defaults.sparsity[1]: got 1.0; sparsity must be in [0, 1)",
        ),
        ("defaults: {rank: {low: 0.9, high: 0.1}}", "low 0.9 > high 0.1"),
        ("defaults: {sparsty: [0.1]}", "unknown field 'sparsty'"),
        ("rules:\n  - bits: [8]", "space.yaml:2: rules[0]: a rule needs `match`"),
        ("rules:\n  - match: fc1\n    colour: red", "unknown key 'colour'"),
        ("searchspace: 1", "unknown key 'searchspace'"),
        ("finetune: {steps: -5}", "finetune.steps: got -5"),
        ("distill: [maybe]", "distill[0]: got 'maybe'"),
        ("defaults: [1, 2", "not valid YAML"),
        ("defaults: !!python/object/apply:os.system ['true']", "not valid YAML"),
    ],
)
def test_load_errors_name_file_line_path_and_value(tmp_path, body: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_space(write(tmp_path, body))
    assert message in str(err.value)


def test_rule_matching_no_layer_is_an_error_when_bound(tmp_path) -> None:
    space = load_space(write(tmp_path, "rules:\n  - match: fc_1\n    bits: [8]\n"))
    with pytest.raises(
        ConfigError,
        match=r"space.yaml:2: rules\[0\]: match \['fc_1'\] matches no compressible layer"
        r" of Net; the model's compressible layers are: embed, features.0",
    ):
        bind(space, Net())
    space = load_space(write(tmp_path, "rules:\n  - match: bn\n    bits: [8]\n"))
    with pytest.raises(ConfigError, match=r"matches only modules no technique compresses: bn \(BatchNorm1d\)"):
        bind(space, Net())
    space = load_space(write(tmp_path, "rules:\n  - type: Conv2D\n    bits: [8]\n"))
    with pytest.raises(ConfigError, match=r"'Conv2D' is not a torch.nn module class"):
        bind(space, Net())
    # generic type rules and optional rules may match nothing
    bind(
        load_space(write(tmp_path, "rules:\n  - type: Conv2d\n    bits: [8]\n  - match: x\n    optional: true\n")),
        Net(),
    )


def test_sampled_policy_and_nearest_params() -> None:
    b = bind(load_space("default"), Net())

    class FixedTrial:
        def suggest_categorical(self, name, choices):
            return {"sparsity": 0.5, "bits": 8, "rank": 1.0, "structured": False}.get(name.rsplit(".", 1)[-1], True)

    policy = b.sample(FixedTrial())
    assert policy.distill is True
    assert policy.layers["fc1"] == ash.LayerPolicy(sparsity=0.5, bits=8)
    assert b.nearest_params({"bits": 7})["fc1.bits"] == 8 and b.nearest_params({})["fc1.bits"] == 32
    assert b.policy_from_params(b.nearest_params({})) == ash.Policy()
