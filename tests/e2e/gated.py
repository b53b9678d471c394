"""A digits task whose fine-tuning, inside a Ray actor, first waits until an actor on every named node
has reached it -- so two drivers' actors both evaluate trials however slowly the second one starts on
a busy machine (an observable event, not a sleep). Outside an actor (a driver, a local executor) it
is the plain digits task."""

from __future__ import annotations

import time
from pathlib import Path

from torch import Tensor

from autoshrink.task import Task
from autoshrink.zoo import digits_task

TIMEOUT_S = 300.0


class NodeBarrier:
    """train_transform: identity; the first call in a Ray actor marks the actor's node in `folder`
    and waits until every node of `nodes` is marked (RuntimeError after TIMEOUT_S, naming who is missing)."""

    def __init__(self, folder: str, nodes: list[str]) -> None:
        self.folder, self.nodes, self.passed = folder, list(nodes), False

    def __call__(self, inputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        if not self.passed:
            node = _actor_node()
            if node is not None:
                self._wait(node)
            self.passed = True
        return inputs, targets

    def _wait(self, node: str) -> None:
        folder = Path(self.folder)
        (folder / node).touch()
        deadline = time.monotonic() + TIMEOUT_S
        while missing := [n for n in self.nodes if not (folder / n).exists()]:
            if time.monotonic() > deadline:
                raise RuntimeError(f"NodeBarrier: no actor reached the barrier on {missing} in {TIMEOUT_S:g} s")
            time.sleep(0.05)


def _actor_node() -> str | None:
    """This Ray actor's node address, or None outside an actor."""
    try:
        import ray
    except ImportError:
        return None
    if not ray.is_initialized():
        return None
    ctx = ray.get_runtime_context()
    if ctx.get_actor_id() is None:
        return None
    me = ctx.get_node_id()
    return next(n["NodeManagerAddress"] for n in ray.nodes() if n["NodeID"] == me)


def gated_digits_task(gate: str, nodes: list[str]) -> Task:
    plain = digits_task()
    return Task(
        train_data=plain.train_data,
        eval_data=plain.eval_data,
        example_input=plain.example_input,
        batch_size=plain.batch_size,
        device=plain.device,
        train_transform=NodeBarrier(gate, nodes),
    )
