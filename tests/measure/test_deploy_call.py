"""Latency times the call a deployment makes: a runtime's `deploy_call`, not autoshrink's wrapper."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from autoshrink.measure.latency import LatencyConfig, deploy_call, time_forward

FEW = LatencyConfig(warmup=2, min_repeats=7, min_seconds=0.0, max_repeats=7)


class Prepared(nn.Module):
    """forward must not run while timing; deploy_call counts how often its callable runs."""

    def __init__(self) -> None:
        super().__init__()
        self.prepared_with: list[torch.Tensor] = []
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise AssertionError("time_forward called forward instead of deploy_call")

    def deploy_call(self, x: torch.Tensor):
        self.prepared_with.append(x)

        def run() -> None:
            self.calls += 1

        return run


def test_time_forward_times_deploy_call_prepared_once() -> None:
    from autoshrink.measure import latency

    latency._warmed.add("cpu")  # the process warm-up runs forward by design; not what is checked here
    m = Prepared()
    times = time_forward(m, torch.ones(1, 3), torch.device("cpu"), FEW)
    assert len(times) == 7
    assert len(m.prepared_with) == 1 and torch.equal(m.prepared_with[0], torch.ones(1, 3))
    assert m.calls == 2 + 7  # warm-up forwards, then the timed ones


def test_plain_torch_model_is_timed_through_its_call() -> None:
    lin = nn.Linear(3, 2)
    call = deploy_call(lin, torch.ones(1, 3))
    assert torch.equal(call(), lin(torch.ones(1, 3)))


def test_ort_deploy_call_runs_the_session_on_numpy_prepared_once() -> None:
    pytest.importorskip("onnxruntime")
    from autoshrink.measure.onnxruntime import ort_runtime

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 3)).eval()
    x = torch.randn(2, 8)
    ort = ort_runtime(model, x, torch.device("cpu"))
    out = deploy_call(ort, x)()
    assert isinstance(out, list) and isinstance(out[0], np.ndarray)  # the session's own output: no torch wrapper
    np.testing.assert_allclose(out[0], ort(x).numpy(), rtol=0, atol=0)
    np.testing.assert_allclose(out[0], model(x).detach().numpy(), rtol=1e-5, atol=1e-5)
