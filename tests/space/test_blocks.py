"""The `blocks` section of a search space (heads / neurons / criterion per transformer block, rules by block
name), its binding to a tiny BERT, the policies it gives, and BlockPolicy / Policy.blocks as data."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from torch import nn

import autoshrink as ash
from autoshrink.errors import ConfigError, PolicyError
from autoshrink.policy import BlockPolicy
from autoshrink.space import bind, load_space

transformers = pytest.importorskip("transformers")

L0, L1 = "bert.encoder.layer.0", "bert.encoder.layer.1"
LINEARS = [
    f"{b}.{n}"
    for b in (L0, L1)
    for n in (
        "attention.self.query",
        "attention.self.key",
        "attention.self.value",
        "attention.output.dense",
        "intermediate.dense",
        "output.dense",
    )
] + ["bert.pooler.dense", "classifier"]


@pytest.fixture(scope="module")
def bert() -> nn.Module:
    cfg = transformers.BertConfig(
        hidden_size=32,
        num_attention_heads=4,
        intermediate_size=64,
        num_hidden_layers=2,
        vocab_size=100,
        max_position_embeddings=64,
    )
    return transformers.BertForSequenceClassification(cfg).eval()


def space(tmp_path: Path, text: str) -> ash.SearchSpace:
    p = tmp_path / "space.yaml"
    p.write_text(textwrap.dedent(text))
    return load_space(p)


def values(bound, block: str) -> dict[str, tuple]:
    return {f: c.values for f, c in bound.blocks[block].items()}


def error(tmp_path: Path, text: str, model: nn.Module) -> str:
    with pytest.raises(ConfigError) as info:
        bind(space(tmp_path, text), model)
    return str(info.value).replace(str(tmp_path / "space.yaml"), "space.yaml")


BLOCKS_ONLY = """
blocks:
  heads: [0.0, 0.25, 0.5]
  neurons: [0.0, 0.5]
  criterion: [magnitude, activation]
"""


# -- binding -----------------------------------------------------------------------------------------------------


def test_blocks_bind_every_block_with_exact_params_in_order(tmp_path, bert) -> None:
    bound = bind(space(tmp_path, BLOCKS_ONLY), bert)
    assert list(bound.blocks) == [L0, L1]
    assert [(name, c.values) for name, c in bound.params()] == [
        (f"{L0}.heads", (0.0, 0.25, 0.5)),
        (f"{L0}.neurons", (0.0, 0.5)),
        (f"{L0}.criterion", ("magnitude", "activation")),
        (f"{L1}.heads", (0.0, 0.25, 0.5)),
        (f"{L1}.neurons", (0.0, 0.5)),
        (f"{L1}.criterion", ("magnitude", "activation")),
    ]
    assert list(bound.layers) == LINEARS  # the layer defaults still cover every Linear, none searched here


def test_block_params_follow_the_layer_params(tmp_path, bert) -> None:
    bound = bind(
        space(tmp_path, "defaults: {bits: [32, 8]}\nblocks: {heads: [0.0, 0.5]}\ndistill: [false, true]\n"), bert
    )
    names = [name for name, _ in bound.params()]
    assert names == [f"{n}.bits" for n in LINEARS] + [f"{L0}.heads", f"{L1}.heads", "distill"]


def test_a_range_of_heads_expands(tmp_path, bert) -> None:
    bound = bind(space(tmp_path, "blocks: {heads: {low: 0.0, high: 0.5, step: 0.25}}\n"), bert)
    assert values(bound, L0) == {
        "heads": (0.0, 0.25, 0.5),
        "neurons": (0.0,),
        "criterion": ("magnitude",),
        "refit": (False,),
    }


def test_rules_by_exact_name_glob_and_regex_override_in_order(tmp_path, bert) -> None:
    bound = bind(
        space(
            tmp_path,
            f"""
            blocks:
              heads: [0.0, 0.25]
              neurons: [0.0, 0.5]
              rules:
                - match: "*.layer.*"
                  criterion: [activation]
                - match: "re:.*layer\\\\.1"
                  heads: [0.0, 0.5, 0.75]
                - match: {L0}
                  neurons: [0.25]
            """,
        ),
        bert,
    )
    assert values(bound, L0) == {
        "heads": (0.0, 0.25),
        "neurons": (0.25,),
        "criterion": ("activation",),
        "refit": (False,),
    }
    assert values(bound, L1) == {
        "heads": (0.0, 0.5, 0.75),
        "neurons": (0.0, 0.5),
        "criterion": ("activation",),
        "refit": (False,),
    }
    assert [name for name, _ in bound.params()] == [f"{L0}.heads", f"{L1}.heads", f"{L1}.neurons"]


def test_skip_leaves_a_block_alone_and_optional_matches_nothing(tmp_path, bert) -> None:
    bound = bind(
        space(
            tmp_path,
            f"""
            blocks:
              heads: [0.0, 0.5]
              rules:
                - match: {L1}
                  skip: true
                - match: "decoder.*"
                  heads: [0.25]
                  optional: true
            """,
        ),
        bert,
    )
    assert values(bound, L1) == {"heads": (0.0,), "neurons": (0.0,), "criterion": ("magnitude",), "refit": (False,)}
    assert [name for name, _ in bound.params()] == [f"{L0}.heads"]
    assert bound.policy_from_params({f"{L0}.heads": 0.5}) == ash.Policy(blocks={L0: BlockPolicy(heads=0.5)})


def test_a_rule_after_skip_restarts_from_the_block_defaults(tmp_path, bert) -> None:
    bound = bind(
        space(
            tmp_path,
            f"""
            blocks:
              heads: [0.0, 0.25]
              neurons: [0.0, 0.5]
              criterion: [activation]
              rules:
                - match: "*"
                  skip: true
                - match: {L1}
                  heads: [0.0, 0.5]
            """,
        ),
        bert,
    )
    assert values(bound, L0) == {"heads": (0.0,), "neurons": (0.0,), "criterion": ("magnitude",), "refit": (False,)}
    assert values(bound, L1) == {
        "heads": (0.0, 0.5),
        "neurons": (0.0, 0.5),
        "criterion": ("activation",),
        "refit": (False,),
    }


def test_the_builtin_transformer_space_binds_to_bert(bert) -> None:
    bound = bind(load_space("transformer"), bert)
    assert values(bound, L0) == {
        "heads": (0.0, 0.25, 0.5),
        "neurons": (0.0, 0.25, 0.5, 0.75),
        "criterion": ("activation",),
        "refit": (True,),
    }
    assert list(bound.layers) == ["bert.embeddings.word_embeddings", *LINEARS]
    assert bound.layers["bert.embeddings.word_embeddings"]["bits"].values == (32, 8, 4)
    assert [n for n, _ in bound.params() if n.startswith("bert.encoder.layer.0.")][-2:] == [
        f"{L0}.heads",
        f"{L0}.neurons",
    ]


# -- refusals ------------------------------------------------------------------------------------------------------


def test_a_model_without_a_transformer_block_is_refused_naming_blocks_and_the_fix(tmp_path) -> None:
    mlp = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    assert error(tmp_path, "blocks: {heads: [0.0, 0.5]}\n", mlp) == (
        "space.yaml:1: blocks: Sequential has no transformer block autoshrink recognizes (an attention module with "
        "query/key/value Linear layers and a head count, and an FFN pair: BERT, RoBERTa, DistilBERT, ViT-style). "
        "Fix: remove `blocks` from the space, or use the space 'default'."
    )
    with pytest.raises(ConfigError, match=r"transformer\.yaml:\d+: blocks: Sequential has no transformer block"):
        bind(load_space("transformer"), mlp)


def test_a_rule_matching_no_block_lists_the_blocks(tmp_path, bert) -> None:
    text = "blocks:\n  heads: [0.0, 0.5]\n  rules:\n    - match: bert.encoder.layer.2\n      skip: true\n"
    assert error(tmp_path, text, bert) == (
        "space.yaml:4: blocks.rules[0]: match ['bert.encoder.layer.2'] matches no transformer block of "
        "BertForSequenceClassification; its blocks are: bert.encoder.layer.0, bert.encoder.layer.1."
    )


def test_a_rule_naming_a_layer_inside_a_block_matches_no_block(tmp_path, bert) -> None:
    text = "blocks:\n  rules:\n    - match: bert.encoder.layer.0.attention.self.query\n      heads: [0.5]\n"
    assert "matches no transformer block of BertForSequenceClassification" in error(tmp_path, text, bert)


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "blocks:\n  heads: [0.0, 1.0]\n",
            "space.yaml:2: blocks.heads[1]: got 1.0; heads must be a fraction in [0, 1).",
        ),
        (
            "blocks:\n  neurons: -0.25\n",
            "space.yaml:2: blocks.neurons: got -0.25; neurons must be a fraction in [0, 1).",
        ),
        (
            "blocks:\n  heads: [0.0, '0.5']\n",
            "space.yaml:2: blocks.heads[1]: got '0.5'; heads must be a fraction in [0, 1) (YAML read '0.5' as text: "
            "write it with a dot, e.g. 1.0e-3).",
        ),
        ("blocks:\n  heads: [0.5, 0.5]\n", "space.yaml:2: blocks.heads: got [0.5, 0.5]; the choices repeat a value."),
        (
            "blocks:\n  fraction: [0.5]\n",
            "space.yaml:2: blocks.fraction: unknown key 'fraction'; allowed are heads, neurons, criterion, refit "
            "and rules.",
        ),
        (
            "blocks:\n  rules:\n    - match: x\n      type: Linear\n",
            "space.yaml:4: blocks.rules[0].type: unknown key 'type'; allowed are criterion, heads, match, neurons, "
            "optional, refit, skip.",
        ),
        (
            "blocks:\n  rules:\n    - heads: [0.5]\n",
            "space.yaml:3: blocks.rules[0]: a block rule needs `match` (block names: exact, glob or re:).",
        ),
        (
            "blocks:\n  rules:\n    - match: x\n      skip: maybe\n",
            "space.yaml:4: blocks.rules[0].skip: got 'maybe'; it must be true or false.",
        ),
        (
            "blocks: [0.5]\n",
            "space.yaml:1: blocks: got [0.5]; expected a mapping with heads, neurons, criterion, refit and rules.",
        ),
    ],
)
def test_bad_blocks_sections_name_the_file_line_path_and_value(tmp_path, text, message) -> None:
    with pytest.raises(ConfigError) as info:
        space(tmp_path, text)
    assert str(info.value).replace(str(tmp_path / "space.yaml"), "space.yaml") == message


def test_a_bad_block_criterion_lists_the_two_criteria(tmp_path) -> None:
    with pytest.raises(ConfigError) as info:
        space(tmp_path, "blocks:\n  criterion: [magnitude, wanda]\n")
    text = str(info.value).replace(str(tmp_path / "space.yaml"), "space.yaml")
    assert text.startswith("space.yaml:2: blocks.criterion[1]: got 'wanda'; ")
    assert text.endswith("must be one of magnitude, activation.")


def test_a_bad_block_criterion_names_the_criterion_field(tmp_path) -> None:
    with pytest.raises(ConfigError) as info:
        space(tmp_path, "blocks:\n  criterion: [magnitude, wanda]\n")
    assert str(info.value).endswith("blocks.criterion[1]: got 'wanda'; criterion must be one of magnitude, activation.")


# -- policies from params -------------------------------------------------------------------------------------


def test_policy_from_params_gives_block_policies_and_leaves_identity_blocks_out(tmp_path, bert) -> None:
    bound = bind(space(tmp_path, BLOCKS_ONLY), bert)
    policy = bound.policy_from_params(
        {
            f"{L0}.heads": 0.5,
            f"{L0}.neurons": 0.0,
            f"{L0}.criterion": "activation",
            f"{L1}.heads": 0.0,
            f"{L1}.neurons": 0.0,
            f"{L1}.criterion": "activation",
        }
    )
    assert policy.blocks == {L0: BlockPolicy(heads=0.5, neurons=0.0, criterion="activation")}
    assert policy.layers == {} and policy.distill is False and policy.changes_model
    assert bound.policy_from_params({}) == ash.Policy()  # missing params: each field's first choice
    assert not bound.policy_from_params({}).changes_model
    partial = bound.policy_from_params({f"{L1}.neurons": 0.5})
    assert partial.blocks == {L1: BlockPolicy(neurons=0.5, criterion="magnitude")}


def test_sample_asks_the_trial_for_every_block_param(tmp_path, bert) -> None:
    class Last:
        def __init__(self) -> None:
            self.asked: list[tuple[str, list]] = []

        def suggest_categorical(self, name, choices):
            self.asked.append((name, choices))
            return choices[-1]

    bound = bind(space(tmp_path, BLOCKS_ONLY), bert)
    trial = Last()
    policy = bound.sample(trial)
    assert [n for n, _ in trial.asked] == [name for name, _ in bound.params()]
    assert policy.blocks == {b: BlockPolicy(heads=0.5, neurons=0.5, criterion="activation") for b in (L0, L1)}


def test_untouched_and_nearest_params_of_blocks(tmp_path, bert) -> None:
    bound = bind(
        space(
            tmp_path,
            "defaults: {bits: [32, 8]}\nblocks:\n  heads: [0.0, 0.25, 0.5]\n  neurons: [0.0, 0.5]\n"
            "  criterion: [activation, magnitude]\n",
        ),
        bert,
    )
    assert bound.untouched(f"{L0}.heads") == 0.0
    assert bound.untouched(f"{L0}.neurons") == 0.0
    assert bound.untouched(f"{L0}.criterion") == "activation"  # the block's first criterion choice
    near = bound.nearest_params({"heads": 0.3, "bits": 8})
    assert {k: v for k, v in near.items() if k.startswith("bert.encoder.")} == {
        **{f"{n}.bits": 8 for n in LINEARS if n.startswith("bert.encoder.")},
        f"{L0}.heads": 0.25,
        f"{L0}.neurons": 0.0,
        f"{L0}.criterion": "activation",
        f"{L1}.heads": 0.25,
        f"{L1}.neurons": 0.0,
        f"{L1}.criterion": "activation",
    }
    assert bound.policy_from_params(near).blocks == {
        b: BlockPolicy(heads=0.25, criterion="activation") for b in (L0, L1)
    }
    untouched = bound.policy_from_params(bound.nearest_params({}))
    assert untouched.blocks == {} and not untouched.changes_model


# -- BlockPolicy / Policy.blocks as data ---------------------------------------------------------------------


def test_a_policy_with_only_blocks_changes_the_model() -> None:
    assert ash.Policy(blocks={L0: BlockPolicy(heads=0.25)}).changes_model
    assert ash.Policy(blocks={L0: BlockPolicy(neurons=0.25)}).active_blocks() == {L0: BlockPolicy(neurons=0.25)}
    identity = ash.Policy(blocks={L0: BlockPolicy(criterion="activation")})
    assert not identity.changes_model and identity.active_blocks() == {}
    assert not BlockPolicy(criterion="activation").calibrated and BlockPolicy(0.25, criterion="activation").calibrated


def test_policy_round_trips_with_blocks() -> None:
    policy = ash.Policy(
        layers={"classifier": ash.LayerPolicy(bits=8)},
        blocks={L0: BlockPolicy(heads=0.5, neurons=0.25, criterion="activation"), L1: BlockPolicy()},
        distill=True,
    )
    data = policy.to_dict()
    assert data == {
        "layers": {"classifier": {"sparsity": 0.0, "structured": False, "bits": 8, "rank": 1.0}},
        "distill": True,
        "blocks": {L0: {"heads": 0.5, "neurons": 0.25, "criterion": "activation"}},  # identity blocks left out
    }
    again = ash.Policy.from_dict(data)
    assert again == policy and hash(again) == hash(policy)
    assert again.blocks == {L0: BlockPolicy(heads=0.5, neurons=0.25, criterion="activation")}
    assert again.to_dict() == data


def test_a_policy_without_changed_blocks_writes_what_older_versions_did() -> None:
    data = ash.Policy(layers={"fc": ash.LayerPolicy(bits=8)}, blocks={L0: BlockPolicy()}).to_dict()
    assert data == {"layers": {"fc": {"sparsity": 0.0, "structured": False, "bits": 8, "rank": 1.0}}, "distill": False}
    assert ash.Policy.from_dict({"layers": {}, "distill": False, "blocks": None}) == ash.Policy()


def test_policy_equality_and_hash_follow_the_changed_blocks() -> None:
    a = ash.Policy(blocks={L0: BlockPolicy(heads=0.25)})
    assert a == ash.Policy(blocks={L0: {"heads": 0.25}})  # a mapping is read as a BlockPolicy
    assert a == ash.Policy(blocks={L0: BlockPolicy(heads=0.25, where="blocks.x")})  # `where` is not compared
    assert a == ash.Policy(blocks={L0: BlockPolicy(heads=0.25), L1: BlockPolicy()})  # identity blocks are no change
    assert a != ash.Policy(blocks={L0: BlockPolicy(heads=0.5)})
    assert a != ash.Policy(blocks={L0: BlockPolicy(heads=0.25, criterion="activation")})
    assert a != ash.Policy(blocks={L1: BlockPolicy(heads=0.25)})
    assert ash.Policy(blocks={L0: BlockPolicy()}) == ash.Policy()
    same = {a, ash.Policy(blocks={L0: {"heads": 0.25}}), ash.Policy(blocks={L0: BlockPolicy(heads=0.25), L1: {}})}
    assert len(same) == 1
    assert len({a, ash.Policy(blocks={L0: BlockPolicy(neurons=0.25)}), ash.Policy()}) == 3
    assert BlockPolicy(heads=0) == BlockPolicy(heads=0.0) and BlockPolicy(heads=0).heads == 0.0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"heads": 1.0},
            "blocks.b.heads: got 1.0; it must be a fraction in [0, 1) of the block's heads removed. "
            "Fix: use e.g. 0.25.",
        ),
        (
            {"neurons": -0.1},
            "blocks.b.neurons: got -0.1; it must be a fraction in [0, 1) of the block's neurons removed. "
            "Fix: use e.g. 0.25.",
        ),
        (
            {"heads": True},
            "blocks.b.heads: got True; it must be a fraction in [0, 1) of the block's heads removed. "
            "Fix: use e.g. 0.25.",
        ),
        ({"criterion": "wanda"}, "blocks.b.criterion: got 'wanda'; use one of 'magnitude', 'activation'."),
    ],
)
def test_bad_block_policies_name_the_field_and_the_fix(kwargs, message) -> None:
    with pytest.raises(PolicyError) as info:
        BlockPolicy(**kwargs, where="blocks.b")
    assert str(info.value) == message


def test_policy_from_dict_refuses_unknown_block_keys_and_non_mappings() -> None:
    with pytest.raises(PolicyError) as info:
        ash.Policy.from_dict({"layers": {}, "blocks": {L0: {"heads": 0.5, "fraction": 1}}})
    assert str(info.value) == f"blocks.{L0}: unknown key(s) 'fraction'; allowed are heads, neurons, criterion, refit."
    with pytest.raises(PolicyError) as info:
        ash.Policy.from_dict({"layers": {}, "blocks": [0.5]})
    assert str(info.value) == "policy.blocks: got [0.5]; expected a mapping of block name -> block policy."
    with pytest.raises(PolicyError) as info:
        ash.Policy(blocks={L0: 0.5})
    assert str(info.value) == f"Policy.blocks['{L0}']: got 0.5; expected a BlockPolicy or a mapping."
