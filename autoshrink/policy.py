"""Compression policies: plain frozen data, validated on construction.

A `LayerPolicy` says what to do to one layer; a `BlockPolicy` what to remove of one transformer block
(attention heads, FFN neurons); a `Policy` maps module names (as in `model.named_modules()`) to them and
says whether to fine-tune with distillation. The defaults mean "leave alone".
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import PolicyError, describe, finite_number

ALLOWED_BITS = (2, 3, 4, 5, 6, 7, 8, 16, 32)
CODEBOOKS = ("linear", "kmeans")
ROUNDINGS = ("nearest", "gptq")
CRITERIA = ("magnitude", "wanda", "sparsegpt")
CALIBRATED_CRITERIA = ("wanda", "sparsegpt")
SEMI_STRUCTURED = "2:4"  # 2 of every 4 consecutive weights of a row zero: the pattern GPU sparse kernels run
_LAYER_KEYS = ("sparsity", "structured", "bits", "rank", "codebook", "rounding", "group_size", "criterion")
BLOCK_CRITERIA = ("magnitude", "activation")
_BLOCK_KEYS = ("heads", "neurons", "criterion", "refit")


def sparsity_fraction(value: float | str) -> float:
    """The fraction of weights a sparsity choice removes: "2:4" removes half."""
    return 0.5 if value == SEMI_STRUCTURED else float(value)


@dataclass(frozen=True)
class LayerPolicy:
    """What to do to one layer.

    sparsity: fraction in [0, 1) of the weight entries set to zero (unstructured), or of the
        output channels removed (structured=True), or "2:4": in every row, exactly 2 of each 4
        consecutive weights zero (semi-structured; what cuSPARSELt / `to_sparse_semi_structured` run).
        "2:4" is stored as sparsity 0.5 with `pattern` "2:4" and written back as "2:4".
    structured: remove whole output channels/neurons physically instead of masking entries.
    bits: 32 = float32 untouched, 16 = float16 storage, 2..8 = signed symmetric integer codes
        with one scale per output channel.
    rank: fraction in (0, 1] of the full rank kept by a truncated-SVD factorization; 1.0 = none.
    codebook: how 2..8-bit weights are coded: "linear" (integer codes times a per-channel scale) or
        "kmeans" (2^bits - 1 shared float16 values per layer, found by k-means and trained during
        fine-tuning, plus zero; weights.Codebook). Only with bits 2..8.
    rounding: how linear 2..8-bit codes are chosen: "nearest" (round each weight) or "gptq" (column by
        column with the error compensated on the columns not yet rounded, from calibration
        activations; techniques/gptq.py). "gptq" needs calibration data (apply_policy(task=...)).
    group_size: 0 = one scale per output channel; n > 0 = one scale per n consecutive weights of a
        channel (its flattened inputs), each stored in the file. Only with linear 2..8-bit codes.
    criterion: which weights unstructured pruning removes: "magnitude" (smallest |w|), "wanda"
        (smallest |w| times the norm of its input feature, per output row) or "sparsegpt" (OBS
        pruning that also updates the weights kept); the last two need calibration data. Structured
        pruning ranks output channels by "magnitude" (the L2 norm of the channel's weights in its
        coupled group) or "wanda" (activation-aware: what removing the channel takes from the inputs
        of the layers that read it, from calibration data; techniques/channel_importance.py).
    """

    sparsity: float = 0.0
    structured: bool = False
    bits: int = 32
    rank: float = 1.0
    codebook: str = "linear"
    rounding: str = "nearest"
    group_size: int = 0
    criterion: str = "magnitude"
    pattern: str = ""  # "" or "2:4" (set by sparsity="2:4")
    where: str = field(default="", compare=False, repr=False)

    def __post_init__(self) -> None:
        where = f"{self.where}." if self.where else ""
        s = self.sparsity
        if s == SEMI_STRUCTURED:
            object.__setattr__(self, "pattern", SEMI_STRUCTURED)
            s = 0.5
        if not finite_number(s) or not 0.0 <= s < 1.0:
            raise PolicyError(
                f"{where}sparsity: got {describe(s)}; it must be a number in [0, 1) "
                "(the fraction of weights, or of channels when structured, removed) or "
                f'"{SEMI_STRUCTURED}" (2 of every 4 weights of a row). Fix: use e.g. 0.5 or "{SEMI_STRUCTURED}".'
            )
        self._check_pattern(where, float(s))
        if not isinstance(self.structured, bool):
            raise PolicyError(f"{where}structured: got {describe(self.structured)}; it must be true or false.")
        b = self.bits
        if isinstance(b, bool) or not isinstance(b, int) or b not in ALLOWED_BITS:
            raise PolicyError(
                f"{where}bits: got {describe(b)}; allowed are 2..8 (integer codes), 16 (float16) "
                "or 32 (untouched). Fix: pick one of " + ", ".join(map(str, ALLOWED_BITS)) + "."
            )
        r = self.rank
        if not finite_number(r) or not 0.0 < r <= 1.0:
            raise PolicyError(
                f"{where}rank: got {describe(r)}; it must be a fraction of the full rank in (0, 1] "
                "(1.0 = no factorization). Fix: use e.g. 0.25."
            )
        if self.codebook not in CODEBOOKS:
            raise PolicyError(
                f'{where}codebook: got {describe(self.codebook)}; use "linear" (integer codes) or '
                '"kmeans" (trained shared values).'
            )
        if self.codebook == "kmeans" and not 2 <= b <= 8:
            raise PolicyError(
                f'{where}codebook: "kmeans" codes 2..8-bit weights, but bits is {b}. Fix: set bits to '
                '2..8, or codebook to "linear".'
            )
        self._check_calibrated(where)
        object.__setattr__(self, "sparsity", float(s))
        object.__setattr__(self, "rank", float(r))

    def _check_pattern(self, where: str, s: float) -> None:
        if self.pattern not in ("", SEMI_STRUCTURED):
            raise PolicyError(
                f'{where}pattern: got {describe(self.pattern)}; the one sparsity pattern is "{SEMI_STRUCTURED}". '
                f'Fix: write sparsity="{SEMI_STRUCTURED}" (pattern follows), or leave pattern out.'
            )
        if self.pattern and s != 0.5:
            raise PolicyError(
                f'{where}pattern: "{SEMI_STRUCTURED}" removes exactly half of the weights, but sparsity is {s:g}. '
                f'Fix: write sparsity="{SEMI_STRUCTURED}".'
            )
        if self.pattern and self.structured:
            raise PolicyError(
                f'{where}sparsity: "{SEMI_STRUCTURED}" zeroes single weights, but structured is true (whole '
                f"channels). Fix: set structured to false, or sparsity to a fraction of the channels, e.g. 0.5."
            )

    @property
    def semi_structured(self) -> bool:
        """Whether the layer's sparsity is the 2:4 pattern."""
        return self.pattern == SEMI_STRUCTURED

    def _check_calibrated(self, where: str) -> None:
        linear = 2 <= self.bits <= 8 and self.codebook == "linear"
        if self.rounding not in ROUNDINGS:
            raise PolicyError(
                f'{where}rounding: got {describe(self.rounding)}; use "nearest" (the default) or "gptq" '
                "(calibrated error compensation)."
            )
        if self.rounding == "gptq" and not linear:
            raise PolicyError(
                f'{where}rounding: "gptq" rounds linear 2..8-bit codes, but bits is {self.bits} with codebook '
                f'{self.codebook!r}. Fix: set bits to 2..8 (codebook "linear"), or rounding to "nearest".'
            )
        g = self.group_size
        if isinstance(g, bool) or not isinstance(g, int) or g < 0:
            raise PolicyError(
                f"{where}group_size: got {describe(g)}; use 0 (one scale per output channel) or a positive "
                "number of weights per scale, e.g. 32, 64 or 128."
            )
        if g and not linear:
            raise PolicyError(
                f"{where}group_size: {g} groups the scales of linear 2..8-bit codes, but bits is {self.bits} "
                f"with codebook {self.codebook!r}. Fix: set bits to 2..8, or group_size to 0."
            )
        if self.criterion not in CRITERIA:
            raise PolicyError(
                f"{where}criterion: got {describe(self.criterion)}; use one of " + ", ".join(map(repr, CRITERIA)) + "."
            )
        if self.criterion == "sparsegpt" and self.structured:
            raise PolicyError(
                f"{where}criterion: 'sparsegpt' chooses single weights, but structured is true. Fix: set "
                "structured to false, or criterion to 'magnitude' or 'wanda' (activation-aware channels)."
            )

    @property
    def calibrated(self) -> bool:
        """Whether applying this policy reads calibration activations (gptq rounding, wanda / sparsegpt,
        activation-aware channels)."""
        return self.needs_layer_inputs or (self.structured and self.criterion == "wanda" and self.sparsity > 0)

    @property
    def needs_layer_inputs(self) -> bool:
        """Whether the layer's own input statistics are needed after the structural changes (gptq
        rounding, unstructured wanda / sparsegpt): what the `calibrate` technique collects."""
        return (self.rounding == "gptq" and 2 <= self.bits <= 8) or (
            self.criterion in CALIBRATED_CRITERIA and self.sparsity > 0 and not self.structured
        )

    @property
    def is_identity(self) -> bool:
        """True when this policy leaves the layer untouched."""
        return self.sparsity == 0.0 and self.bits == 32 and self.rank == 1.0

    def to_dict(self) -> dict[str, Any]:
        """The fields (sparsity "2:4" for the pattern); `codebook`, `rounding`, `group_size` and `criterion`
        only where they are not the defaults (older recipes read the same, and a policy without them writes
        what older versions did)."""
        sparsity = self.pattern or self.sparsity
        out = {"sparsity": sparsity, "structured": self.structured, "bits": self.bits, "rank": self.rank}
        if self.codebook != "linear":
            out["codebook"] = self.codebook
        if self.rounding != "nearest":
            out["rounding"] = self.rounding
        if self.group_size:
            out["group_size"] = self.group_size
        if self.criterion != "magnitude":
            out["criterion"] = self.criterion
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "") -> LayerPolicy:
        return cls(**_known_keys(data, _LAYER_KEYS, where or "layer policy"), where=where)


@dataclass(frozen=True)
class BlockPolicy:
    """What to remove of one transformer block (techniques/transformer_blocks.py finds them).

    heads: fraction in [0, 1) of its attention heads removed (round(heads * count), at least one kept):
        their query/key/value rows and output-projection columns go, the head count follows.
    neurons: fraction in [0, 1) of its FFN neurons removed (up-projection rows, down-projection columns).
    criterion: which go first: "magnitude" (weight norms; needs no data) or "activation" (what each
        head / neuron adds to the block's output on calibration batches; apply_policy(task=...)).
    refit: after the removal, refit the attention output and FFN down projections (their remaining
        columns and bias) by least squares to the untouched block's outputs on calibration batches
        (techniques/block_refit.py); needs data like "activation". Written only when true.
    """

    heads: float = 0.0
    neurons: float = 0.0
    criterion: str = "magnitude"
    refit: bool = False
    where: str = field(default="", compare=False, repr=False)

    def __post_init__(self) -> None:
        where = f"{self.where}." if self.where else ""
        for key in ("heads", "neurons"):
            v = getattr(self, key)
            if not finite_number(v) or not 0.0 <= v < 1.0:
                raise PolicyError(
                    f"{where}{key}: got {describe(v)}; it must be a fraction in [0, 1) of the block's {key} "
                    "removed. Fix: use e.g. 0.25."
                )
            object.__setattr__(self, key, float(v))
        if self.criterion not in BLOCK_CRITERIA:
            raise PolicyError(
                f"{where}criterion: got {describe(self.criterion)}; use one of "
                + ", ".join(map(repr, BLOCK_CRITERIA))
                + "."
            )
        if not isinstance(self.refit, bool):
            raise PolicyError(f"{where}refit: got {describe(self.refit)}; use true or false.")

    @property
    def is_identity(self) -> bool:
        return self.heads == 0.0 and self.neurons == 0.0

    @property
    def calibrated(self) -> bool:
        """Whether applying it reads calibration batches."""
        return (self.criterion == "activation" or self.refit) and not self.is_identity

    def to_dict(self) -> dict[str, Any]:
        out = {"heads": self.heads, "neurons": self.neurons, "criterion": self.criterion}
        return {**out, "refit": True} if self.refit else out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "") -> BlockPolicy:
        return cls(**_known_keys(data, _BLOCK_KEYS, where or "block policy"), where=where)


def _known_keys(data: Any, keys: Sequence[str], where: str) -> dict[str, Any]:
    """`data`'s entries, which must be a mapping of some of `keys` (else a PolicyError naming `where`)."""
    if not isinstance(data, Mapping):
        raise PolicyError(f"{where}: got {describe(data)}; expected a mapping with keys {', '.join(keys)}.")
    unknown = sorted(set(data) - set(keys))
    if unknown:
        raise PolicyError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; allowed are {', '.join(keys)}.")
    return {k: data[k] for k in keys if k in data}


@dataclass(frozen=True, eq=False)
class Policy:
    """A compression policy for a whole model: per-layer policies keyed by module name.

    Layers not named are left alone. `blocks`: BlockPolicies keyed by transformer block name (e.g.
    "bert.encoder.layer.0"), applied first, so the layer policies act on the smaller layers. `distill`
    makes the fine-tune mix the task loss with a KL term to the uncompressed model's outputs.
    """

    layers: Mapping[str, LayerPolicy] = field(default_factory=dict)
    distill: bool = False
    blocks: Mapping[str, BlockPolicy] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.layers, Mapping):
            raise PolicyError(
                f"Policy.layers: got {describe(self.layers)}; expected a mapping of module name -> LayerPolicy."
            )
        clean: dict[str, LayerPolicy] = {}
        for name, lp in self.layers.items():
            if not isinstance(name, str):
                raise PolicyError(f"Policy.layers: key {describe(name)} is not a module name (str).")
            if isinstance(lp, Mapping):
                lp = LayerPolicy.from_dict(lp, where=f"layers.{name}")
            if not isinstance(lp, LayerPolicy):
                raise PolicyError(f"Policy.layers[{name!r}]: got {describe(lp)}; expected a LayerPolicy or a mapping.")
            clean[name] = lp
        if not isinstance(self.distill, bool):
            raise PolicyError(f"Policy.distill: got {describe(self.distill)}; it must be true or false.")
        object.__setattr__(self, "layers", clean)
        if not isinstance(self.blocks, Mapping):
            raise PolicyError(
                f"Policy.blocks: got {describe(self.blocks)}; expected a mapping of block name -> BlockPolicy."
            )
        blocks: dict[str, BlockPolicy] = {}
        for name, bp in self.blocks.items():
            if not isinstance(name, str):
                raise PolicyError(f"Policy.blocks: key {describe(name)} is not a module name (str).")
            if isinstance(bp, Mapping):
                bp = BlockPolicy.from_dict(bp, where=f"blocks.{name}")
            if not isinstance(bp, BlockPolicy):
                raise PolicyError(f"Policy.blocks[{name!r}]: got {describe(bp)}; expected a BlockPolicy or a mapping.")
            blocks[name] = bp
        object.__setattr__(self, "blocks", blocks)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Policy)
            and self.distill == other.distill
            and self.layers == other.layers
            and self.active_blocks() == other.active_blocks()
        )

    def __hash__(self) -> int:
        return hash((self.distill, tuple(sorted(self.layers.items())), tuple(sorted(self.active_blocks().items()))))

    def __iter__(self) -> Iterator[tuple[str, LayerPolicy]]:
        return iter(self.layers.items())

    def active(self) -> dict[str, LayerPolicy]:
        """The layers this policy actually changes."""
        return {n: lp for n, lp in self.layers.items() if not lp.is_identity}

    def active_blocks(self) -> dict[str, BlockPolicy]:
        """The transformer blocks this policy removes heads or neurons of."""
        return {n: bp for n, bp in self.blocks.items() if not bp.is_identity}

    @property
    def changes_model(self) -> bool:
        """Whether applying this policy changes anything (a layer or a block)."""
        return bool(self.active()) or bool(self.active_blocks())

    def to_dict(self) -> dict[str, Any]:
        """`blocks` only where some block is changed (a policy without writes what older versions did)."""
        out: dict[str, Any] = {"layers": {n: lp.to_dict() for n, lp in self.layers.items()}, "distill": self.distill}
        if self.active_blocks():
            out["blocks"] = {n: bp.to_dict() for n, bp in self.active_blocks().items()}
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Policy:
        if not isinstance(data, Mapping):
            raise PolicyError(f"policy: got {describe(data)}; expected a mapping with 'layers' and 'distill'.")
        unknown = sorted(set(data) - {"layers", "distill", "blocks"})
        if unknown:
            raise PolicyError(
                f"policy: unknown key(s) {', '.join(map(repr, unknown))}; allowed are 'layers', 'blocks' and 'distill'."
            )
        blocks = data.get("blocks") or {}
        if not isinstance(blocks, Mapping):
            raise PolicyError(
                f"policy.blocks: got {describe(blocks)}; expected a mapping of block name -> block policy."
            )
        layers = data.get("layers") or {}
        if not isinstance(layers, Mapping):
            raise PolicyError(
                f"policy.layers: got {describe(layers)}; expected a mapping of module name -> layer policy."
            )
        return cls(
            layers={n: LayerPolicy.from_dict(v, where=f"layers.{n}") for n, v in layers.items()},
            distill=data.get("distill", False),
            blocks={n: BlockPolicy.from_dict(v, where=f"blocks.{n}") for n, v in blocks.items()},
        )
