from __future__ import annotations

import pytest

import autoshrink as ash
from autoshrink.errors import PolicyError


def test_defaults_mean_leave_alone() -> None:
    lp = ash.LayerPolicy()
    assert (lp.sparsity, lp.structured, lp.bits, lp.rank) == (0.0, False, 32, 1.0)
    assert lp.is_identity


@pytest.mark.parametrize(
    "kwargs, field, value",
    [
        ({"sparsity": 1.0}, "sparsity", "1.0"),
        ({"sparsity": -0.1}, "sparsity", "-0.1"),
        ({"sparsity": float("nan")}, "sparsity", "nan"),
        ({"bits": 1}, "bits", "1"),
        ({"bits": 12}, "bits", "12"),
        ({"bits": 8.0}, "bits", "8.0"),
        ({"rank": 0.0}, "rank", "0.0"),
        ({"rank": 1.5}, "rank", "1.5"),
        ({"structured": "yes"}, "structured", "'yes'"),
    ],
)
def test_invalid_values_name_field_and_value(kwargs: dict, field: str, value: str) -> None:
    with pytest.raises(PolicyError) as err:
        ash.LayerPolicy(**kwargs)
    assert field in str(err.value) and value in str(err.value)
    assert isinstance(err.value, ValueError)


def test_every_allowed_bit_width_is_accepted() -> None:
    assert [ash.LayerPolicy(bits=b).bits for b in (2, 3, 4, 5, 6, 7, 8, 16, 32)] == [2, 3, 4, 5, 6, 7, 8, 16, 32]


def test_round_trip_and_equality() -> None:
    p = ash.Policy(
        layers={
            "fc1": ash.LayerPolicy(sparsity=0.7, bits=4),
            "conv2": ash.LayerPolicy(sparsity=0.5, structured=True, rank=0.5),
        },
        distill=True,
    )
    d = p.to_dict()
    assert d == {
        "layers": {
            "fc1": {"sparsity": 0.7, "structured": False, "bits": 4, "rank": 1.0},
            "conv2": {"sparsity": 0.5, "structured": True, "bits": 32, "rank": 0.5},
        },
        "distill": True,
    }
    q = ash.Policy.from_dict(d)
    assert q == p and hash(q) == hash(p)
    assert list(q.active()) == ["fc1", "conv2"]


def test_from_dict_errors_name_the_path() -> None:
    with pytest.raises(PolicyError, match=r"layers\.fc1\.bits: got 9"):
        ash.Policy.from_dict({"layers": {"fc1": {"bits": 9}}})
    with pytest.raises(PolicyError, match="unknown key.*'sparsty'"):
        ash.Policy.from_dict({"layers": {"fc1": {"sparsty": 0.5}}})
    with pytest.raises(PolicyError, match="unknown key.*'distil'"):
        ash.Policy.from_dict({"layers": {}, "distil": True})


def test_policy_is_frozen() -> None:
    p = ash.Policy(layers={"a": ash.LayerPolicy(bits=8)})
    with pytest.raises(AttributeError):
        p.distill = True  # type: ignore[misc]
    with pytest.raises(AttributeError):
        p.layers["a"].bits = 4  # type: ignore[misc]
