"""Same-run, alternating CPU timing for benchmark scripts (medians; never used by tests)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def time_alternating(fns: dict[str, Callable[[], object]], *, reps: int = 5, warmup: int = 1) -> dict[str, float]:
    """Run every function ``warmup`` times, then ``reps`` rounds in alternation; median seconds per call."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def forward_fn(model: torch.nn.Module, x: torch.Tensor) -> Callable[[], object]:
    model.eval()

    def run() -> object:
        with torch.inference_mode():
            return model(x)

    return run


def train_step_fn(model: torch.nn.Module, x: torch.Tensor) -> Callable[[], object]:
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    target = torch.zeros(x.shape[0], dtype=torch.long)

    def run() -> object:
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), target)
        loss.backward()
        opt.step()
        return loss

    return run
