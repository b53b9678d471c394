from __future__ import annotations

import pytest

from autoshrink.techniques import techniques
from autoshrink.techniques.registry import Technique, register


def test_techniques_apply_in_the_documented_order() -> None:
    assert [t.name for t in techniques()] == ["lowrank", "structured", "calibrate", "prune", "quantize"]


def test_a_technique_must_implement_the_interface() -> None:
    class Half(Technique):
        name = "half-done"

        def selects(self, lp):
            return False

    with pytest.raises(TypeError, match="abstract"):
        register(Half)
