"""The packed artifact: exact byte counts of every encoding, bitwise round trips, safe loading."""

from __future__ import annotations

import copy
import math
import os
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from autoshrink import weights
from autoshrink.errors import PackError
from autoshrink.measure.packing import PackedTensor, codec, decode, framing, load_packed, pack, save_packed
from autoshrink.measure.packing import bits as bitstream
from autoshrink.techniques.lowrank import Factorized, factorize

# ----------------------------------------------------------------------------- helpers


def _prune_quant(layer: nn.Module, sparsity: float, bits: int) -> None:
    """Mask the smallest `sparsity` fraction of layer.weight, then fake-quantize to `bits` (0: none)."""
    if sparsity:
        w = layer.weight.detach().abs().flatten()
        keep = w.numel() - int(round(sparsity * w.numel()))
        mask = torch.zeros(w.numel(), dtype=torch.bool)
        mask[w.argsort(descending=True)[:keep]] = True
        weights.add_mask(layer, mask.reshape(layer.weight.shape))
    if bits:
        weights.add_fake_quant(layer, bits)


def _effective_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return weights.strip_parametrizations(copy.deepcopy(model)).state_dict()


def _round_trip(model: nn.Module, x: torch.Tensor, tmp_path, trusted: bool = False) -> nn.Module:
    """Save, check the size, load, check outputs / state bitwise and that a second save is identical."""
    model.eval()
    path = tmp_path / "model.ashz"
    size = save_packed(model, path)
    assert size == os.path.getsize(path) == len(pack(model)[0])
    loaded = load_packed(path, trusted=trusted)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    a, b = _effective_state(model), _effective_state(loaded)
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
    again = tmp_path / "again.ashz"
    assert save_packed(loaded, again) == size
    assert again.read_bytes() == path.read_bytes()
    return loaded


def _mlp(*sizes: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layers += [nn.Linear(a, b)] + ([nn.ReLU()] if i < len(sizes) - 2 else [])
    return nn.Sequential(*layers)


# ----------------------------------------------------------------------------- codec


@pytest.mark.parametrize("bits", range(2, 9))
def test_bit_packing_round_trip_every_width(bits: int) -> None:
    rng = np.random.default_rng(bits)
    values = rng.integers(0, 2**bits, size=1003, dtype=np.uint8).reshape(-1, 1)
    data = bitstream.pack_fields([(values, bits)])
    assert len(data) == math.ceil(1003 * bits / 8)
    (back,) = bitstream.unpack_fields(data, 1003, [(1, bits)])
    assert np.array_equal(back, values)
    # entries of two fields (k-bit gap, value) across a chunk boundary
    n = 70_001
    gaps = rng.integers(0, 2**11, size=n, dtype=np.uint16)
    vals = rng.integers(0, 2**bits, size=n, dtype=np.uint8).reshape(-1, 1)
    data = bitstream.pack_fields([(gaps.view(np.uint8).reshape(n, 2), 11), (vals, bits)])
    assert len(data) == math.ceil(n * (11 + bits) / 8)
    g, v = bitstream.unpack_fields(data, n, [(2, 11), (1, bits)])
    assert np.array_equal(g.view(np.uint16).reshape(-1), gaps) and np.array_equal(v, vals)


def test_relidx_hand_computed_with_fillers() -> None:
    positions = np.array([5, 6, 40, 90])  # gaps 5, 0, 33, 49 in a 100-element tensor, 9 trailing zeros
    values = np.array([[1], [2], [3], [15]], np.uint8)
    zero = np.array([7], np.uint8)
    gaps = bitstream.gaps_of(positions)
    assert gaps.tolist() == [5, 0, 33, 49]
    # k = 3: 33 needs 4 fillers (4 * 8 = 32 positions, then gap 1), 49 needs 6 (48, then gap 1)
    assert bitstream.relidx_entries(gaps, 3) == 4 + 4 + 6 == 14
    data, entries = bitstream.encode_relidx(positions, values, zero, 4, 3)
    assert entries == 14 and len(data) == math.ceil(14 * (3 + 4) / 8) == 13
    rows = bitstream.decode_relidx(data, entries, 100, zero, 4, 3)
    expected = np.full((100, 1), 7, np.uint8)
    expected[positions] = values
    assert np.array_equal(rows, expected)
    assert bitstream.stream_sizes(100, bitstream.Gaps.of_positions(positions), 4)["relidx"] == min(
        (math.ceil(bitstream.relidx_entries(gaps, k) * (k + 4) / 8), k) for k in range(1, 17)
    )


def test_sparse_gaps_equal_the_dense_ones() -> None:
    nonzero = np.array([0, 0, 1, 1, 0, 1, 0, 0, 0, 1, 1, 0, 0], bool)  # two trailing zeros are no gap
    g = bitstream.Gaps.of_mask(nonzero)
    assert (g.count, g.at.tolist(), g.size.tolist(), g.widest) == (5, [0, 2, 3], [2, 1, 3], 3)
    assert g.dense().tolist() == bitstream.gaps_of(np.flatnonzero(nonzero)).tolist() == [2, 0, 1, 3, 0]
    # k = 1: gap 2 takes 1 filler, gap 3 takes 1: entries F 0 0 1 F 1 0 (F = filler 1)
    assert g.entries(1) == 7 and g.field(1).tolist() == [1, 0, 0, 1, 1, 1, 0]
    assert g.real(1).tolist() == [1, 2, 3, 5, 6] and g.histogram(1).tolist() == [3, 4]
    rng = np.random.default_rng(0)
    for density in (1.0, 0.999, 0.9, 0.5, 0.1, 0.01, 0.0):
        mask = rng.random(5000) < density
        mask[rng.integers(0, 5000)] = density > 0.5  # runs and isolated zeros alike
        g, dense = bitstream.Gaps.of_mask(mask), bitstream.gaps_of(np.flatnonzero(mask))
        assert np.array_equal(g.dense(), dense)
        for k in (1, 2, 3, 8):
            field, real = bitstream.relidx_gaps(dense, k)
            assert g.entries(k) == bitstream.relidx_entries(dense, k) == field.size
            assert np.array_equal(g.field(k), field) and np.array_equal(g.real(k), real)
            mask_k = (1 << k) - 1
            assert np.array_equal(g.histogram(k), np.bincount(field, minlength=mask_k + 1))


@pytest.mark.parametrize("qbits", [0, 4, 16])
@pytest.mark.parametrize("case", ["gaps", "leading_trailing", "all_zero", "no_zero"])
def test_tensor_round_trip_sparse_patterns(case: str, qbits: int) -> None:
    w = (torch.rand(8, 500) + 1) * (torch.randint(0, 2, (8, 500)) * 2 - 1)  # |w| in [1, 2): no code is 0
    keep = torch.zeros(4000, dtype=torch.bool)
    if case == "gaps":
        keep[[0, 1, 700, 2000, 3999]] = True  # gaps of 698 and 1299 need fillers for any k < 11
    elif case == "leading_trailing":
        keep[1500:1510] = True
    elif case == "no_zero":
        keep[:] = True
    w = w * keep.reshape(8, 500)
    w = weights.quantize_value(w, qbits) if qbits else w
    coded = codec.encode_tensor(w, qbits)  # entropy coding where smaller: decodes exactly, never larger
    enc = codec.encode_tensor(w, qbits, use_entropy=False)
    assert len(coded.payload) <= len(enc.payload)
    back = decode.decode_tensor(
        coded.payload, (8, 500), torch.float32, qbits, coded.encoding, coded.k, coded.count, coded.coded
    )
    assert torch.equal(back, w)
    nnz = int(keep.sum())
    assert enc.nnz == nnz
    back = decode.decode_tensor(enc.payload, (8, 500), torch.float32, qbits, enc.encoding, enc.k, enc.count)
    assert torch.equal(back, w)
    width = qbits or 32
    scales = 16 if qbits == 4 else 0
    if case == "all_zero":
        assert enc.encoding == "relidx" and len(enc.payload) == scales  # no entries at all
    if case == "no_zero":
        assert enc.encoding == "dense" and len(enc.payload) == scales + 4000 * width // 8
    if case == "gaps" and enc.encoding == "relidx":
        assert enc.count == bitstream.relidx_entries(bitstream.gaps_of(np.flatnonzero(keep.numpy())), enc.k)


def test_dense_4bit_hand_computed() -> None:
    codes = torch.randint(1, 8, (10, 100)) * (torch.randint(0, 2, (10, 100)) * 2 - 1)
    codes[:, 0] = 7  # every row reaches qmax, so scale = 3.5 / 7 = 0.5 exactly
    w = codes.float() * 0.5
    enc = codec.encode_tensor(w, 4, use_entropy=False)
    assert (enc.encoding, enc.width, enc.nnz) == ("dense", 4, 1000)
    assert len(enc.payload) == 1000 * 4 // 8 + 10 * 2 == 520
    assert enc.payload[:2] == bytes.fromhex("003f")  # 0.5 as bfloat16, little endian


@pytest.mark.parametrize("qbits", [0, 4])
def test_chosen_encoding_is_the_smallest(qbits: int) -> None:
    chosen = {}
    for density in (0.05, 0.5, 1.0):
        w = torch.randn(64, 256) * (torch.rand(64, 256) < density)
        w = weights.quantize_value(w, qbits) if qbits else w
        enc = codec.encode_tensor(w, qbits, use_entropy=False)
        nz = (w != 0).flatten().numpy()
        sizes = bitstream.stream_sizes(w.numel(), bitstream.Gaps.of_mask(nz), qbits or 32)
        best = min(size for size, _ in sizes.values())
        assert len(enc.payload) == best + (2 * 64 if qbits else 0)
        assert sizes[enc.encoding][0] == best
        chosen[density] = enc.encoding
    assert chosen[0.05] == "relidx" and chosen[1.0] == "dense"


def test_million_entries_encode_fast() -> None:
    w = weights.quantize_value(torch.randn(1000, 1000) * (torch.rand(1000, 1000) < 0.1), 4)
    start = time.perf_counter()
    enc = codec.encode_tensor(w, 4)  # every layout, fixed and entropy-coded, tried
    assert time.perf_counter() - start < 2.0
    start = time.perf_counter()
    back = decode.decode_tensor(enc.payload, (1000, 1000), torch.float32, 4, enc.encoding, enc.k, enc.count, enc.coded)
    assert time.perf_counter() - start < 1.0 and torch.equal(back, w)
    fixed = codec.encode_tensor(w, 4, use_entropy=False)
    assert fixed.encoding == "relidx" and len(enc.payload) < len(fixed.payload)
    assert torch.equal(
        decode.decode_tensor(fixed.payload, (1000, 1000), torch.float32, 4, "relidx", fixed.k, fixed.count), w
    )


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8, 16])
def test_requantizing_gives_identical_codes_and_scales(bits: int) -> None:
    """Loading re-attaches FakeQuant to the decoded weight, so quantization must be idempotent."""
    w = torch.randn(512, 48) * torch.logspace(-3, 2, 512).unsqueeze(1)
    v = weights.quantize_value(w, bits)
    if bits == 16:
        assert torch.equal(weights.quantize_value(v, 16), v)
        return
    c0, s0 = weights.quantize_codes(w, bits)
    c1, s1 = weights.quantize_codes(v, bits)
    assert torch.equal(c0, c1) and torch.equal(s0, s1)
    assert torch.equal(weights.dequantize(c1, s1), v) and torch.equal(weights.quantize_value(v, bits), v)


def test_off_grid_weight_is_refused() -> None:
    with pytest.raises(PackError, match="not on its 4-bit quantization grid"):
        codec.encode_tensor(torch.randn(4, 4), 4, "fc.weight")
    with pytest.raises(PackError, match="not float16 values"):
        codec.encode_tensor(torch.randn(4, 4), 16, "fc.weight")


# ----------------------------------------------------------------------------- round trips


def test_plain_fp32_mlp(tmp_path) -> None:
    model = _mlp(20, 16, 8, 3)
    _, report = pack(model)
    assert all(isinstance(t, PackedTensor) for t in report)
    assert [(t.name, t.encoding, t.bits, t.nbytes) for t in report] == [
        ("0.weight", "dense", 32, 20 * 16 * 4),
        ("0.bias", "dense", 32, 64),
        ("2.weight", "dense", 32, 16 * 8 * 4),
        ("2.bias", "dense", 32, 32),
        ("4.weight", "dense", 32, 8 * 3 * 4),
        ("4.bias", "dense", 32, 12),
    ]
    _round_trip(model, torch.randn(5, 20), tmp_path)


def test_pruned_quantized_mlp_reattaches_compression(tmp_path) -> None:
    model = _mlp(64, 48, 10)
    _prune_quant(model[0], 0.9, 4)
    _prune_quant(model[2], 0.9, 4)
    loaded = _round_trip(model, torch.randn(7, 64), tmp_path)
    for i in (0, 2):
        assert weights.weight_bits(loaded[i]) == 4
        mask = weights.weight_mask(loaded[i])
        assert mask is not None and int((~mask).sum()) >= int(0.9 * model[i].weight.numel())
        # re-quantizing the dequantized weight gives the same codes and scales
        c0, s0 = weights.quantize_codes(model[i].weight, 4)
        c1, s1 = weights.quantize_codes(loaded[i].weight, 4)
        assert torch.equal(c0, c1) and torch.equal(s0, s1)
    # fine-tuning the loaded model keeps its masks and its 4-bit grid
    opt = torch.optim.SGD(loaded.parameters(), lr=0.1)
    loaded.train()
    loaded(torch.randn(7, 64)).square().sum().backward()
    opt.step()
    w = loaded[0].weight.detach()
    assert torch.equal(w[~weights.weight_mask(loaded[0])], torch.zeros(int((~weights.weight_mask(loaded[0])).sum())))
    codes, _ = weights.quantize_codes(w, 4)
    assert all(len(set(row.tolist())) <= 15 for row in codes)


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8, 16])
def test_every_bit_width(bits: int, tmp_path) -> None:
    model = _mlp(32, 24, 5)
    _prune_quant(model[0], 0.5, bits)
    _prune_quant(model[2], 0.0, bits)
    loaded = _round_trip(model, torch.randn(4, 32), tmp_path)
    assert weights.weight_bits(loaded[0]) == weights.weight_bits(loaded[2]) == bits
    assert weights.weight_mask(loaded[0]) is not None and weights.weight_mask(loaded[2]) is None
    report = {t.name: t for t in pack(model)[1]}
    assert report["0.weight"].bits == report["2.weight"].bits == bits
    assert report["0.weight"].nonzero == int((model[0].weight != 0).sum())


def test_cnn_with_batchnorm_and_masks(tmp_path) -> None:
    model = nn.Sequential(
        nn.Conv2d(1, 6, 3),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 2 * 2, 4),
    )
    for _ in range(3):  # running statistics and num_batches_tracked away from their defaults
        model(torch.randn(8, 1, 10, 10))
    _prune_quant(model[0], 0.5, 0)
    _prune_quant(model[4], 0.75, 6)
    _prune_quant(model[8], 0.8, 0)
    loaded = _round_trip(model, torch.randn(3, 1, 10, 10), tmp_path)
    assert int(loaded[1].num_batches_tracked) == 3 and loaded[1].num_batches_tracked.dtype == torch.int64
    report = {t.name: t for t in pack(model)[1]}
    assert report["1.num_batches_tracked"].encoding == "raw" and report["1.num_batches_tracked"].nbytes == 8
    assert report["4.weight"].nonzero <= 8 * 6 * 9 // 4 and report["0.weight"].bits == 32


def test_embedding_8bit(tmp_path) -> None:
    model = nn.Sequential(nn.Embedding(50, 12), nn.Flatten(), nn.Linear(36, 2))
    weights.add_fake_quant(model[0], 8)
    loaded = _round_trip(model, torch.randint(0, 50, (4, 3)), tmp_path)
    assert weights.weight_bits(loaded[0]) == 8 and weights.weight_mask(loaded[0]) is None
    assert {t.name: t.bits for t in pack(model)[1]}["0.weight"] == 8


class TiedLM(nn.Module):
    """Embedding and output projection sharing one weight."""

    def __init__(self, vocab: int = 30, dim: int = 8) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, vocab, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.norm(self.emb(x)))


def test_tied_weights_stay_tied(tmp_path) -> None:
    model = TiedLM()
    data, report = pack(model)
    assert [t.name for t in report] == ["emb.weight", "norm.weight", "norm.bias"]
    loaded = _round_trip(model, torch.randint(0, 30, (2, 5)), tmp_path)
    assert loaded.out.weight is loaded.emb.weight


def test_tied_weight_quantized_on_one_side(tmp_path) -> None:
    model = TiedLM()
    weights.add_fake_quant(model.out, 6)  # the embedding keeps the float weight
    loaded = _round_trip(model, torch.randint(0, 30, (2, 5)), tmp_path)
    assert weights.weight_bits(loaded.out) == 6 and weights.weight_bits(loaded.emb) == 32
    assert torch.equal(loaded.emb.weight, model.emb.weight)


class Custom(nn.Module):
    """A user module with the things real models carry: plain tensors, functions, containers."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([nn.Linear(8, 8), nn.GELU(), nn.Dropout(0.1)])
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.norm = nn.LayerNorm(8)
        self.low = factorize(nn.Linear(8, 8), 0.25)
        self.act = F.relu
        self.offset = torch.arange(8, dtype=torch.float32)  # a plain tensor attribute
        self.config = {"scale": 0.5, "names": ("a", "b"), "dims": torch.Size([2, 8]), "dtype": torch.float16}
        self.register_buffer("steps", torch.tensor([1, 0, 2], dtype=torch.int32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        x = self.attn(x, x, x, need_weights=False)[0]
        return self.act(self.low(self.norm(x))) * self.config["scale"] + self.offset


def test_custom_module_loads_without_trust(tmp_path) -> None:
    model = Custom()
    assert isinstance(model.low, Factorized)
    _prune_quant(model.low.first, 0.5, 4)
    _prune_quant(model.blocks[0], 0.3, 0)
    loaded = _round_trip(model, torch.randn(2, 3, 8), tmp_path)
    assert isinstance(loaded, Custom) and loaded.act is F.relu and loaded.config == model.config
    assert torch.equal(loaded.offset, model.offset) and weights.weight_bits(loaded.low.first) == 4
    assert any(t.name == "offset" for t in pack(model)[1])


def test_factorized_and_transformer_layer(tmp_path) -> None:
    model = nn.Sequential(factorize(nn.Linear(32, 32), 0.25), nn.TransformerEncoderLayer(32, 4, 64, batch_first=True))
    _prune_quant(model[0].second, 0.6, 6)
    _round_trip(model, torch.randn(2, 4, 32), tmp_path)


class SequenceOutput(nn.Module):
    """The output sequence of a recurrent layer (which returns a tuple)."""

    def __init__(self, rnn: nn.Module) -> None:
        super().__init__()
        self.rnn = rnn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rnn(x)[0]


@pytest.mark.parametrize("name", ["lstm", "conv1d_prelu", "transformer_gelu", "embedding_bag", "conv_transpose"])
def test_common_layers_load_without_trust(name: str, tmp_path) -> None:
    model, x = {
        "lstm": (SequenceOutput(nn.LSTM(8, 16, 2, batch_first=True)), torch.randn(2, 5, 8)),
        "conv1d_prelu": (
            nn.Sequential(nn.Conv1d(3, 4, 3, padding="same"), nn.PReLU(), nn.AdaptiveAvgPool1d(2)),
            torch.randn(2, 3, 9),
        ),
        "transformer_gelu": (
            nn.TransformerEncoder(
                nn.TransformerEncoderLayer(16, 4, 32, batch_first=True, activation="gelu"),
                2,
                enable_nested_tensor=False,
            ),
            torch.randn(2, 3, 16),
        ),
        "embedding_bag": (nn.EmbeddingBag(20, 4, mode="mean"), torch.randint(0, 20, (3, 4))),
        "conv_transpose": (
            nn.Sequential(
                nn.ConvTranspose2d(3, 4, 3, stride=2),
                nn.GroupNorm(2, 4),
                nn.SiLU(),
                nn.Upsample(scale_factor=2),
                nn.Softmax(dim=1),
            ),
            torch.randn(1, 3, 5, 5),
        ),
    }[name]
    _round_trip(model, x, tmp_path)


def test_lenet_300_100_packs_over_20x_smaller(tmp_path) -> None:
    model = _mlp(784, 300, 100, 10)
    fp32_bytes = save_packed(model, tmp_path / "fp32.ashz")
    assert fp32_bytes - sum(t.nbytes for t in pack(model)[1]) < 300  # fixed overhead
    small = copy.deepcopy(model)
    for i in (0, 2, 4):
        _prune_quant(small[i], 0.9, 4)
    small_bytes = save_packed(small, tmp_path / "small.ashz")
    assert small_bytes < len(pack(small, entropy=False)[0])  # entropy coding pays here
    report = {t.name: t for t in pack(small, entropy=False)[1]}
    for i in (0, 2, 4):  # every weight costs exactly its smallest layout plus 2 bytes a row
        t, w = report[f"{i}.weight"], small[i].weight
        nz = np.flatnonzero((w != 0).flatten().numpy())
        assert t.nonzero == nz.size and t.encoding == "relidx"
        assert (
            t.nbytes
            == 2 * w.shape[0] + bitstream.stream_sizes(w.numel(), bitstream.Gaps.of_positions(nz), 4)["relidx"][0]
        )
        assert report[f"{i}.bias"].nbytes == 4 * small[i].bias.numel()
    ratio = fp32_bytes / small_bytes
    assert ratio > 20, ratio
    _round_trip(small, torch.randn(3, 784), tmp_path)


# ----------------------------------------------------------------------------- safety and errors


def _file(header: bytes, skeleton: bytes, payload: bytes = b"", version: int = 1) -> bytes:
    head, skel = framing.deflate(header), framing.deflate(skeleton)
    return b"ASHZ" + bytes([version]) + framing.varint(len(head)) + head + framing.varint(len(skel)) + skel + payload


def test_disallowed_global_is_refused_and_not_run(tmp_path) -> None:
    marker = tmp_path / "pwned"
    command = f"touch {marker}".encode()
    evil = b"\x80\x02cos\nsystem\nX" + len(command).to_bytes(4, "little") + command + b"\x85R."  # os.system(cmd)
    path = tmp_path / "evil.ashz"
    path.write_bytes(_file(b"[]", evil))
    with pytest.raises(PackError, match=r"refers to os\.system, which autoshrink does not load") as info:
        load_packed(path)
    assert str(path) in str(info.value) and "trusted=True" in str(info.value)
    assert not marker.exists()
    for module, name in [("builtins", "eval"), ("builtins", "getattr"), ("torch", "load"), ("subprocess", "Popen")]:
        path.write_bytes(_file(b"[]", f"c{module}\n{name}\n.".encode()))
        with pytest.raises(PackError, match=f"refers to {module}.{name}"):
            load_packed(path)


def test_trusted_load_of_a_legitimate_file(tmp_path) -> None:
    model = Custom()
    _round_trip(model, torch.randn(2, 3, 8), tmp_path, trusted=True)


def test_bad_files(tmp_path) -> None:
    model = _mlp(10, 6, 2)
    _prune_quant(model[0], 0.5, 4)
    good = tmp_path / "good.ashz"
    save_packed(model, good)
    data = good.read_bytes()
    bad = tmp_path / "bad.ashz"

    def refused(content: bytes, pattern: str) -> None:
        bad.write_bytes(content)
        with pytest.raises(PackError, match=pattern) as info:
            load_packed(bad)
        assert str(bad) in str(info.value)

    with pytest.raises(PackError, match="no such file"):
        load_packed(tmp_path / "missing.ashz")
    refused(b"PK\x03\x04" + data[4:], "not an autoshrink packed model")
    refused(b"", "not an autoshrink packed model")
    refused(data[:4] + bytes([4]) + data[5:], "written by a newer autoshrink.*upgrade")
    for cut in (5, 6, 20, len(data) // 2, len(data) - 1):
        refused(data[:cut], "truncated or corrupt")
    refused(data + b"\x00", "truncated or corrupt")
    refused(_file(b"{not json", b""), "truncated or corrupt")
    refused(_file(b'[[[2,2],"float32",0,3,1,0,0]]', b"\x80\x04K\x05Q."), "truncated or corrupt")  # tensor 5 of 1
    head_end = 6 + data[5]
    refused(data[:8] + bytes([data[8] ^ 0xFF]) + data[9:head_end] + data[head_end:], "truncated or corrupt")
