"""Shared fixtures: small deterministic models and tasks (CPU, 2 threads)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import autoshrink as ash
from autoshrink.zoo import digits_model, digits_task


def pytest_collection_modifyitems(config, items) -> None:
    """Tests marked `gpu` skip cleanly where CUDA is absent (CI has no GPU)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (marked gpu)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def digits() -> ash.Task:
    return digits_task(device="cpu")


@pytest.fixture(scope="session")
def digits_cnn() -> nn.Module:
    return digits_model("cnn")


@pytest.fixture(scope="session")
def digits_mlp() -> nn.Module:
    return digits_model("mlp")


@pytest.fixture
def fast_latency() -> ash.LatencyConfig:
    return ash.LatencyConfig(warmup=1, min_repeats=3, min_seconds=0.0)


def state_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server on a loopback port for the whole session (tests/pgserver.py); skipped
    only where Debian's postgresql binaries are absent."""
    from tests.pgserver import PostgresServer, pg_bindir

    if pg_bindir() is None:
        pytest.skip("PostgreSQL binaries not found under /usr/lib/postgresql/*/bin (apt-get install postgresql)")
    pytest.importorskip("psycopg", reason="psycopg missing: pip install 'autoshrink[postgres]'")
    server = PostgresServer()
    try:
        yield server
    finally:
        server.stop()
