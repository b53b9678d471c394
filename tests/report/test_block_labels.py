"""The report names each transformer block's removals next to the layers' choices."""

from __future__ import annotations

from autoshrink.report.policies import block_label, policy_summary


def test_block_labels() -> None:
    assert block_label({"heads": 0.5, "neurons": 0.25, "criterion": "activation"}) == "-50%h -25%n"
    assert block_label({"heads": 0.0, "neurons": 0.75, "criterion": "magnitude"}) == "-75%n mag"
    assert block_label({"heads": 0.0, "neurons": 0.0}) == "-"
    assert block_label({"heads": 0.5, "neurons": 0.0, "criterion": "activation", "refit": True}) == "-50%h refit"
    assert block_label({"heads": 0.0, "neurons": 0.0, "refit": True}) == "-"
    assert block_label(None) == "-"


def test_policy_summary_lists_blocks_first() -> None:
    policy = {
        "layers": {"fc": {"bits": 4, "sparsity": 0.0, "structured": False, "rank": 1.0}},
        "blocks": {"encoder.layer.0": {"heads": 0.25, "neurons": 0.5, "criterion": "activation"}},
        "distill": True,
    }
    assert policy_summary(policy) == "encoder.layer.0 -25%h -50%n, fc 4b + KD"
    assert policy_summary({"layers": {}, "distill": False}) == "no compression"
