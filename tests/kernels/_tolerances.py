"""One tolerance table per dtype for kernel tests (relative RMSE and max-abs), gradients 2x looser."""

from __future__ import annotations

import torch

TOL: dict[torch.dtype, dict[str, float]] = {
    torch.float64: {"rmse": 1e-10, "atol": 1e-9},
    torch.float32: {"rmse": 1e-5, "atol": 1e-4},
    torch.float16: {"rmse": 2e-3, "atol": 1e-2},
    torch.bfloat16: {"rmse": 1e-2, "atol": 5e-2},
}


def rel_rmse(actual: torch.Tensor, expected: torch.Tensor) -> float:
    a, e = actual.double(), expected.double()
    return ((a - e).pow(2).mean().sqrt() / e.pow(2).mean().sqrt().clamp_min(1e-30)).item()


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, *, grad: bool = False, what: str = "") -> None:
    """Compare ``actual`` (computed in ``dtype``) with an fp32/fp64 ``expected``."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert torch.isfinite(actual).all(), f"{what}: non-finite values (unwritten or overflowed elements)"
    scale = 2.0 if grad else 1.0
    tol = TOL[dtype]
    err = rel_rmse(actual, expected)
    assert err <= tol["rmse"] * scale, f"{what}: rel-RMSE {err:.3g} > {tol['rmse'] * scale:.3g} ({dtype})"
    mx = (actual.double() - expected.double()).abs().max().item()
    ref = expected.double().abs().max().item()
    assert mx <= tol["atol"] * scale * max(1.0, ref), f"{what}: max-abs {mx:.3g} too large ({dtype})"
