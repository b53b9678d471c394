"""Framing of the packed artifact: varint lengths and the deflated header / skeleton streams."""

from __future__ import annotations

import zlib

from ...errors import PackError


def varint(n: int) -> bytes:
    """Unsigned LEB128: 1 byte below 128, 2 below 16384, ..."""
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """(value, position after it) of the varint at `pos`."""
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise PackError("a length field runs past the end")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


# Preset deflate dictionary of the header and skeleton streams: the strings a pickled module tree
# and the JSON header are made of, framed as pickle writes them, most common last. It is part of
# format version 1 and must never change (a new dictionary needs a new format version). It shrinks
# the fixed overhead every file pays.
_ZDICT_CLASSES = (
    ("torch.nn.modules.transformer", ("TransformerEncoderLayer", "TransformerDecoderLayer")),
    ("torch.nn.modules.container", ("ModuleList", "ModuleDict", "Sequential")),
    ("torch.nn.modules.sparse", ("Embedding",)),
    ("torch.nn.modules.dropout", ("Dropout",)),
    ("torch.nn.modules.flatten", ("Flatten",)),
    ("torch.nn.modules.pooling", ("AdaptiveAvgPool2d", "AvgPool2d", "MaxPool2d")),
    ("torch.nn.modules.normalization", ("GroupNorm", "LayerNorm")),
    ("torch.nn.modules.batchnorm", ("BatchNorm1d", "BatchNorm2d")),
    ("torch.nn.modules.activation", ("MultiheadAttention", "Softmax", "Sigmoid", "Tanh", "SiLU", "GELU", "ReLU")),
    ("torch.nn.modules.conv", ("Conv1d", "Conv2d")),
    ("autoshrink.techniques.lowrank", ("Factorized",)),
    ("torch.nn.modules.linear", ("NonDynamicallyQuantizableLinear", "Identity", "Linear")),
    ("autoshrink.measure.packing.skeleton", ("_new_module", "_set_module_state")),
)
_ZDICT_NAMES = (
    "activation_relu_or_gelu",
    "norm_first",
    "linear1",
    "linear2",
    "norm1",
    "norm2",
    "dropout1",
    "dropout2",
    "self_attn",
    "_qkv_same_embed_dim",
    "q_proj_weight",
    "k_proj_weight",
    "v_proj_weight",
    "in_proj_weight",
    "in_proj_bias",
    "bias_k",
    "bias_v",
    "add_zero_attn",
    "batch_first",
    "embed_dim",
    "num_heads",
    "head_dim",
    "kdim",
    "vdim",
    "dropout",
    "out_proj",
    "num_embeddings",
    "embedding_dim",
    "padding_idx",
    "max_norm",
    "norm_type",
    "scale_grad_by_freq",
    "sparse",
    "approximate",
    "none",
    "start_dim",
    "end_dim",
    "p",
    "ceil_mode",
    "return_indices",
    "output_size",
    "normalized_shape",
    "elementwise_affine",
    "num_features",
    "eps",
    "momentum",
    "affine",
    "track_running_stats",
    "running_mean",
    "running_var",
    "num_batches_tracked",
    "_buffers",
    "in_channels",
    "out_channels",
    "kernel_size",
    "stride",
    "padding",
    "dilation",
    "groups",
    "transposed",
    "output_padding",
    "padding_mode",
    "zeros",
    "_reversed_padding_repeated_twice",
    "first",
    "second",
    "inplace",
    "_modules",
    "in_features",
    "out_features",
    "bias",
    "weight",
    "_parameters",
    "training",
)


def _zdict() -> bytes:
    def text(s: str) -> bytes:
        return b"\x8c" + bytes([len(s)]) + s.encode()

    parts = [b'[[[],"bool","int64","float16",0,1,2,3,4,5,6,7,8,16,0,0,0],[[],"float32",0,3,1,0,0],[[']
    parts += [text(module) + text(name) + b"\x93\x94" for module, names in _ZDICT_CLASSES for name in names]
    parts += [text(name) + b"\x94" for name in _ZDICT_NAMES]
    return b"".join(parts)


_ZDICT = _zdict()


def deflate(raw: bytes) -> bytes:
    """zlib (level 9) with the format's preset dictionary."""
    c = zlib.compressobj(9, zlib.DEFLATED, 15, 9, zlib.Z_DEFAULT_STRATEGY, _ZDICT)
    return c.compress(raw) + c.flush()


def inflate(data: bytes, limit: int | None = None) -> bytes:
    """Inverse of `deflate`; PackError if the stream is corrupt, cut short, followed by bytes, or
    (with `limit`) inflates to more than `limit` bytes -- found without inflating beyond it."""
    d = zlib.decompressobj(zdict=_ZDICT)
    try:
        raw = d.decompress(data, limit + 1) if limit is not None else d.decompress(data) + d.flush()
    except zlib.error as exc:
        raise PackError(f"does not decompress: {exc}") from None
    if limit is not None and (len(raw) > limit or d.unconsumed_tail):
        raise PackError(f"inflates to more than {limit:,} bytes")
    if not d.eof or d.unused_data:
        raise PackError("is cut short or followed by stray bytes")
    return raw
