from __future__ import annotations

import autoshrink as ash
from tests.conftest import state_equal

L = ash.LayerPolicy


def test_evaluate_records_skipped_layers_and_leaves_model(digits_cnn, digits) -> None:
    import copy

    before = copy.deepcopy(digits_cnn)
    policy = ash.Policy(layers={"bn1": L(bits=8), "fc1": L(sparsity=0.5, bits=8)}, distill=True)
    m = ash.evaluate(
        digits_cnn,
        digits,
        policy,
        finetune_config=ash.FinetuneConfig(steps=10),
        latency=ash.LatencyConfig(warmup=1, min_repeats=2, min_seconds=0),
    )
    assert m.skipped == (
        "bn1: quantize skipped: BatchNorm2d is not supported (weight techniques handle "
        "Linear, Conv1d, Conv2d, Conv3d, Embedding)",
    )
    assert state_equal(before, digits_cnn)


def test_digits_cnn_is_8x_smaller_at_most_1pp_drop_after_300_steps(digits_cnn, digits) -> None:
    """Acceptance: >= 8x smaller packed size at <= 1 pp accuracy drop after <= 300 fine-tune steps."""
    lat = ash.LatencyConfig(warmup=1, min_repeats=3, min_seconds=0)
    base = ash.measure(digits_cnn, digits, latency=lat)
    policy = ash.Policy(
        layers={
            "conv1": L(bits=8),
            "conv2": L(sparsity=0.8, bits=4),
            "fc1": L(sparsity=0.95, bits=4),
            "fc2": L(bits=8),
        },
        distill=True,
    )
    m = ash.evaluate(digits_cnn, digits, policy, finetune_config=ash.FinetuneConfig(steps=300), latency=lat)
    assert base.size_bytes / m.size_bytes >= 8
    assert base.accuracy - m.accuracy <= 0.01
