"""Calibrated compression: GPTQ rounding with group scales, Wanda and SparseGPT pruning, exact by hand."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

import autoshrink as ash
from autoshrink.errors import PolicyError
from autoshrink.measure.packing import packed_size
from autoshrink.measure.packing.container import GROUPED_VERSION, VERSION
from autoshrink.techniques import apply_policy_with_report
from autoshrink.techniques.calibration import GRAM_BUDGET_BYTES, collect, input_rows
from autoshrink.techniques.gptq import gptq
from autoshrink.weights import weight_quantizer
from autoshrink.zoo import digits_task


def bf16(x: float) -> float:
    return float(torch.tensor(x).to(torch.bfloat16).float())


def test_gptq_two_columns_equal_the_closed_form_update() -> None:
    # 3-bit codes (qmax 3), no dampening, columns in their own order. Row 0's first entry is pruned: it
    # enters as zero (pruning's error is not GPTQ's), so nothing is compensated and column 1 rounds alone.
    w = torch.tensor([[0.4, 0.5], [0.9, 0.45]])
    mask = torch.tensor([[False, True], [True, True]])
    h = torch.tensor([[1.0, -0.9], [-0.9, 1.0]])
    q, scales = gptq(w, h, 3, mask=mask, damp=0.0, act_order=False)
    s0, s1 = bf16(0.5 / 3), bf16(0.9 / 3)
    assert scales.flatten().tolist() == [s0, s1]
    # row 1: column 0 rounds to 3 * s1; column 1 becomes w1 + (w0 - q0) * H01 / H11 before rounding
    q10 = 3 * s1
    w11 = 0.45 + (0.9 - q10) * -0.9 / 1.0  # 0.4521: code 2, where rounding 0.45 alone gives code 1
    assert round(0.45 / s1) == 1 and round(w11 / s1) == 2
    expected = torch.tensor([[0.0, 3 * s0], [q10, round(w11 / s1) * s1]])
    assert torch.equal(q, expected)


def test_gptq_keeps_its_codes_through_fake_quantization_and_packing(tmp_path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(40, 24), nn.ReLU(), nn.Linear(24, 5))
    x = torch.randn(64, 40)
    policy = ash.Policy(
        layers={
            "0": ash.LayerPolicy(bits=4, rounding="gptq", group_size=16),
            "2": ash.LayerPolicy(bits=3, rounding="gptq", sparsity=0.5, criterion="sparsegpt"),
        }
    )
    small, report = apply_policy_with_report(model, policy, calibration=lambda: [x[:32], x[32:]])
    assert report.skipped == () and report.calibration_s > 0
    fq = weight_quantizer(small[0])
    assert (fq.bits, fq.group_size, tuple(fq.scales.shape)) == (4, 16, (24, 3))  # 40 inputs: groups 16, 16, 8
    original = small[0].parametrizations["weight"].original
    assert torch.equal(small[0].weight, original)  # GPTQ's values are on the grid of their fixed scales
    assert int((small[2].weight == 0).sum()) == 60  # round(0.5 * 120) pruned, the rest 3-bit codes
    path = tmp_path / "m.ashz"
    size = ash.save_packed(small, path)
    data = path.read_bytes()
    assert size == len(data) == os.path.getsize(path) and data[4] == GROUPED_VERSION
    back = ash.load_packed(path)
    for a, b in zip(small.state_dict().values(), back.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.equal(back[0].weight, small[0].weight) and torch.equal(back(x), small(x))
    assert weight_quantizer(back[0]).group_size == 16 and torch.equal(weight_quantizer(back[0]).scales, fq.scales)
    assert ash.save_packed(back, tmp_path / "again.ashz") == size and (tmp_path / "again.ashz").read_bytes() == data
    # 24 rows x 3 groups x 2 bytes of scales for layer 0, where per-channel scales take 24 x 2
    plain = apply_policy_with_report(model, ash.Policy(layers={"0": ash.LayerPolicy(bits=4)}))[0]
    assert ash.save_packed(plain, tmp_path / "p.ashz") and (tmp_path / "p.ashz").read_bytes()[4] == VERSION


def test_group_scales_round_to_nearest_per_group(tmp_path) -> None:
    model = nn.Sequential(nn.Linear(6, 2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.1, -0.2, 0.3, 7.0, 0.05, -0.7], [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]]))
    small = ash.apply_policy(model, ash.Policy(layers={"0": ash.LayerPolicy(bits=4, group_size=3)}))
    s = [[bf16(0.3 / 7), bf16(7.0 / 7)], [bf16(1 / 7), bf16(1 / 7)]]
    codes = [[2, -5, 7, 7, 0, -1], [7, 7, 7, 7, 7, 7]]
    expected = torch.tensor([[c * s[r][i // 3] for i, c in enumerate(row)] for r, row in enumerate(codes)])
    assert torch.equal(small[0].weight, expected)
    size = ash.save_packed(small, tmp_path / "g.ashz")
    sized, report = packed_size(small)
    assert size == sized and {t.name: t.nbytes for t in report}["0.weight"] == 2 * 2 * 2 + 12 * 4 // 8
    assert torch.equal(ash.load_packed(tmp_path / "g.ashz")[0].weight, expected)


def test_wanda_picks_exactly_the_expected_weights() -> None:
    layer = nn.Sequential(nn.Linear(4, 2, bias=False))
    with torch.no_grad():
        layer[0].weight.copy_(torch.tensor([[1.0, -2.0, 3.0, 0.5], [4.0, 1.0, -1.0, 2.0]]))
    x = torch.tensor([[1.0, 10.0, 0.1, 2.0]])  # input norms 1, 10, 0.1, 2
    # scores |w| * ||x_j||: row 0 [1, 20, 0.3, 1], row 1 [4, 10, 0.1, 4]; 3 of 8 pruned: row 0 loses two
    # (0.3, then the first of the tied 1s), row 1 one (0.1)
    policy = ash.Policy(layers={"0": ash.LayerPolicy(sparsity=0.375, criterion="wanda")})
    small, _ = apply_policy_with_report(layer, policy, calibration=lambda: [x])
    assert (small[0].weight != 0).tolist() == [[False, True, False, True], [True, True, False, True]]
    magnitude = ash.apply_policy(layer, ash.Policy(layers={"0": ash.LayerPolicy(sparsity=0.375)}))
    assert (magnitude[0].weight != 0).tolist() == [[False, True, True, False], [True, False, True, True]]


@pytest.mark.parametrize("sparsity", [0.37, 0.5, 0.9])
def test_sparsegpt_leaves_exactly_the_asked_zeros_and_reconstructs_better(sparsity: float) -> None:
    torch.manual_seed(1)
    layer = nn.Sequential(nn.Linear(200, 48))
    x = torch.randn(256, 200) * torch.linspace(0.1, 3, 200)
    criteria = ("magnitude", "sparsegpt")
    policy = {c: ash.Policy(layers={"0": ash.LayerPolicy(sparsity=sparsity, criterion=c)}) for c in criteria}
    out = {c: apply_policy_with_report(layer, p, calibration=lambda: [x])[0] for c, p in policy.items()}
    assert int((out["sparsegpt"][0].weight == 0).sum()) == round(sparsity * 200 * 48)
    with torch.no_grad():
        err = {c: float(((m(x) - layer(x)) ** 2).mean()) for c, m in out.items()}
    assert err["sparsegpt"] < (0.7 if sparsity <= 0.5 else 0.9) * err["magnitude"]


def test_calibrated_choices_need_data_and_a_oneshot_schedule() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with pytest.raises(PolicyError, match=r"layers\.1: rounding 'gptq' calibrates on the layer's inputs.*task="):
        ash.apply_policy(model, ash.Policy(layers={"1": ash.LayerPolicy(bits=4, rounding="gptq")}))
    with pytest.raises(PolicyError, match=r"criterion: 'sparsegpt' chooses single weights, but structured is true"):
        ash.LayerPolicy(sparsity=0.5, structured=True, criterion="sparsegpt")
    with pytest.raises(PolicyError, match=r'rounding: "gptq" rounds linear 2\.\.8-bit codes, but bits is 16'):
        ash.LayerPolicy(bits=16, rounding="gptq")
    with pytest.raises(PolicyError, match=r"group_size: got -8"):
        ash.LayerPolicy(bits=4, group_size=-8)
    task = digits_task(device="cpu")
    policy = ash.Policy(layers={"1": ash.LayerPolicy(sparsity=0.5, criterion="sparsegpt")})
    with pytest.raises(PolicyError, match=r"schedule='gradual' re-chooses masks.*Fix: use schedule='oneshot'"):
        ash.evaluate(model, task, policy, finetune_config=ash.FinetuneConfig(steps=5, schedule="gradual"))
    small = ash.apply_policy(model, policy, task=task)  # the task's training inputs calibrate
    assert int((small[1].weight == 0).sum()) == 320


def test_layers_without_inputs_fall_back_and_say_so() -> None:
    model = nn.Sequential(nn.Embedding(20, 8), nn.Flatten(), nn.Linear(32, 4))
    policy = ash.Policy(
        layers={n: ash.LayerPolicy(bits=4, rounding="gptq", sparsity=0.5, criterion="wanda") for n in ("0", "2")}
    )
    x = torch.randint(0, 20, (16, 4))
    small, report = apply_policy_with_report(model, policy, calibration=lambda: [x])
    assert [str(s) for s in report.skipped] == [
        "0: calibrate skipped: Embedding has no input activations to calibrate on (Linear and Conv1d/2d have); "
        "rounded to nearest, pruned by magnitude"
    ]
    assert int((small[0].weight == 0).sum()) == 80 and weight_quantizer(small[0]).scales is None
    assert weight_quantizer(small[2]).scales is not None


def test_conv_inputs_unfold_to_the_weight_columns_and_passes_stay_in_budget(monkeypatch) -> None:
    conv = nn.Conv2d(3, 4, 3, padding=1, stride=2)
    x = torch.randn(2, 3, 7, 7)
    rows = input_rows(conv, x)
    out = conv(x)  # the conv is the matrix product of its unfolded inputs with the flattened weight
    as_matmul = (rows @ conv.weight.reshape(4, -1).T + conv.bias).reshape(2, -1, 4).transpose(1, 2)
    assert torch.allclose(as_matmul.reshape(out.shape), out, atol=1e-5)
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8))
    passes = []
    monkeypatch.setattr("autoshrink.techniques.calibration.GRAM_BUDGET_BYTES", 2 * 8 * 64)  # two 8x8 float64
    model.register_forward_pre_hook(lambda m, a: passes.append(1))
    stats = collect(model, list(model), lambda: [torch.randn(5, 8)])
    assert len(passes) == 2 and {s.rows for s in stats.values()} == {5} and GRAM_BUDGET_BYTES == 256 * 2**20


def test_a_grouped_file_with_a_bad_group_entry_is_refused(tmp_path) -> None:
    import json

    from autoshrink.errors import PackError
    from autoshrink.measure.packing import framing
    from autoshrink.measure.packing.container import frame

    model = nn.Sequential(nn.Linear(8, 4))
    small = ash.apply_policy(model, ash.Policy(layers={"0": ash.LayerPolicy(bits=4, group_size=4)}))
    ash.save_packed(small, tmp_path / "g.ashz")
    data = (tmp_path / "g.ashz").read_bytes()
    n, pos = framing.read_varint(data, 5)
    header = json.loads(framing.inflate(data[pos : pos + n], 1 << 20))
    m, skel_at = framing.read_varint(data, pos + n)
    skeleton = framing.inflate(data[skel_at : skel_at + m], 1 << 20)
    payload = data[skel_at + m :]
    weight = next(e for e in header if len(e) == 9)
    assert weight[2] == 4 and weight[8] == 4  # [shape, dtype, bits, flags, encoding, k, count, coded, group]
    for bad in (0, -4, "4"):
        weight[8] = bad
        (tmp_path / "bad.ashz").write_bytes(frame(header, skeleton, 3) + payload)
        with pytest.raises(PackError, match="truncated or corrupt.*header entry"):
            ash.load_packed(tmp_path / "bad.ashz")
    weight[8] = 4
    (tmp_path / "v2.ashz").write_bytes(frame(header, skeleton, 2) + payload)  # a nine-field entry is not version 2
    with pytest.raises(PackError, match="truncated or corrupt.*header entry"):
        ash.load_packed(tmp_path / "v2.ashz")


def _obq_reference(w: torch.Tensor, h: torch.Tensor, bits: int, group_size: int, damp: float) -> torch.Tensor:
    """GPTQ as its paper states it, in float64 with no blocking or Cholesky: columns in order of
    decreasing diag(H), each rounded and its error spread by the inverse Hessian, which then drops it."""
    from autoshrink.weights import expand_scales, group_scales, qmax

    w = w.double().clone()
    step = expand_scales(group_scales(w.float(), bits, group_size), w.shape, group_size).double()
    h = h.double().clone()
    h.diagonal().add_(damp * float(h.diagonal().mean()))
    hinv = torch.linalg.inv(h)
    q = torch.zeros_like(w)
    for i in torch.argsort(h.diagonal() - damp * float(h.diagonal().mean()), descending=True, stable=True).tolist():
        q[:, i] = torch.clamp(torch.round(w[:, i] / step[:, i]), -qmax(bits), qmax(bits)) * step[:, i]
        err = (w[:, i] - q[:, i]) / hinv[i, i]
        w -= err.unsqueeze(1) * hinv[i].unsqueeze(0)
        hinv -= hinv[:, i : i + 1] @ hinv[i : i + 1, :] / hinv[i, i]
    return q


@pytest.mark.parametrize(("bits", "group_size"), [(3, 0), (4, 16)])
def test_gptq_matches_the_unblocked_reference(bits: int, group_size: int) -> None:
    torch.manual_seed(2)
    w = torch.randn(12, 300)
    x = torch.randn(400, 300) @ (torch.eye(300) + 0.3 * torch.randn(300, 300) / 300**0.5)  # correlated inputs
    h = x.T @ x / 400
    ours, _ = gptq(w, h, bits, group_size=group_size, block=128)
    ref = _obq_reference(w, h, bits, group_size, 0.01).float()
    assert float((ours != ref).float().mean()) < 0.002  # float32 vs float64 may flip a code on a tie
    err = {name: float(((x @ (w - q).T) ** 2).mean()) for name, q in (("ours", ours), ("ref", ref))}
    nearest = float(((x @ (w - ash.weights.quantize_value(w, bits, group_size)).T) ** 2).mean())
    assert abs(err["ours"] - err["ref"]) < 1e-3 * err["ref"] and err["ours"] < 0.8 * nearest


def test_a_stats_cache_collects_once_per_structure_and_changes_nothing(monkeypatch) -> None:
    import pickle

    import autoshrink.techniques.calibration as calibration
    from autoshrink.evaluate import compress
    from autoshrink.techniques.calibration import StatsCache

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    task = digits_task(device="cpu")
    passes: list[int] = []
    real = calibration.collect
    monkeypatch.setattr(calibration, "collect", lambda m, layers, b: passes.append(len(layers)) or real(m, layers, b))
    gptq4 = ash.LayerPolicy(bits=4, rounding="gptq")
    a = ash.Policy(layers={"1": gptq4, "3": ash.LayerPolicy(sparsity=0.5, criterion="sparsegpt")})
    b = ash.Policy(layers={"1": ash.LayerPolicy(bits=3, rounding="gptq", group_size=16), "3": gptq4})
    low = ash.Policy(layers={"1": ash.LayerPolicy(rank=0.5), "3": gptq4})  # layer 3's inputs change
    cache = StatsCache()
    cached = [compress(model, p, task=task, calibration_cache=cache)[0] for p in (a, b, low, b)]
    assert passes == [2, 1]  # a: both layers; b: none; low: layer 3 (behind low-rank factors); b again: none
    fresh = [compress(model, p, task=task)[0] for p in (a, b, low, b)]
    for got, want in zip(cached, fresh):
        assert all(torch.equal(x, y) for x, y in zip(got.state_dict().values(), want.state_dict().values()))
    assert (cache.hits, cache.misses, len(cache)) == (4, 3, 3)
    assert len(pickle.loads(pickle.dumps(cache))) == 0  # a worker fills its own
    small = StatsCache(budget_bytes=32 * 32 * 4)  # room for one 32-column matrix only
    compress(model, b, task=task, calibration_cache=small)
    assert len(small) == 1 and small.bytes == 32 * 32 * 4
