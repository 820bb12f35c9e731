"""Model FLOP utilisation (MFU) against a GEMM timed in the same run.

A model's *achieved* FLOP/s is its forward FLOP count per image (the project's own count,
:func:`mixerzoo.bench.count_flops`: 2 FLOPs per multiply-accumulate, sparse attention charged what it
computes) times the images it processes per second. Its MFU is that rate divided by the rate of a square
GEMM (``torch.mm`` of two ``N x N`` matrices, ``2 N^3`` FLOPs) of the same dtype on the same device, timed
in alternation with the model so that load on a shared machine hits both alike. The GEMM stands for what
the hardware delivers in practice (a dense, compute-bound matmul through the same BLAS / oneDNN / cuBLAS
torch uses), not a datasheet peak, so a dense model can come near or even above 100%.

Conventions:

* A training step (forward, loss, backward, optimizer) is charged ``TRAIN_FLOP_FACTOR = 3`` times the
  forward FLOPs: the backward computes the gradients of both the inputs and the weights, each as costly as
  the forward (the usual MFU convention, e.g. PaLM, Chowdhery et al. 2022, appendix B). The loss and the
  optimizer update are not counted.
* Mixed precision (bf16 / fp16 autocast, or a model cast to that dtype) is compared with a GEMM in that
  dtype; fp32 with an fp32 GEMM (on CUDA under the process' TF32 setting, which the model shares).
* GEMM sizes (:func:`default_gemm_size`): 2048 on CPU, 8192 on CUDA; fp16 on CPU uses 512, because most
  CPUs have no fp16 matmul units and torch's fallback runs at a few GFLOP/s (a 2048^3 GEMM would take
  many seconds per sample). Override with ``gemm_size``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

import torch

__all__ = [
    "TRAIN_FLOP_FACTOR",
    "GemmStep",
    "achieved_flops_per_s",
    "default_gemm_size",
    "gemm_flops_per_s",
    "median_gemm_flops_per_s",
    "mfu",
]

TRAIN_FLOP_FACTOR = 3  # forward + backward (input and weight gradients) = 3 x forward


def default_gemm_size(device: str | torch.device, dtype: torch.dtype) -> int:
    """Side of the square reference GEMM: large enough to be compute-bound, small enough to time often."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return 8192
    if dtype == torch.float16:
        return 512
    return 2048


def gemm_flops_per_s(n: int, seconds: float) -> float:
    """FLOP/s of one ``n x n @ n x n`` GEMM that took ``seconds``."""
    if n < 1:
        raise ValueError(f"gemm size must be >= 1, got n={n}")
    if seconds <= 0:
        raise ValueError(f"seconds must be > 0, got seconds={seconds}")
    return 2.0 * n**3 / seconds


def achieved_flops_per_s(forward_flops_per_image: float, images_per_s: float, *, train: bool = False) -> float:
    """A model's achieved FLOP/s: forward FLOPs per image x images/s (x ``TRAIN_FLOP_FACTOR`` for a
    training step)."""
    factor = TRAIN_FLOP_FACTOR if train else 1
    return float(forward_flops_per_image) * factor * float(images_per_s)


def mfu(forward_flops_per_image: float, images_per_s: float, gemm_flops_per_s_: float, *, train: bool = False) -> float:
    """Achieved FLOP/s over the reference GEMM's FLOP/s (a fraction: 0.75 = 75%)."""
    if gemm_flops_per_s_ <= 0:
        raise ValueError(f"gemm_flops_per_s must be > 0, got gemm_flops_per_s={gemm_flops_per_s_}")
    return achieved_flops_per_s(forward_flops_per_image, images_per_s, train=train) / gemm_flops_per_s_


def median_gemm_flops_per_s(n: int, times_s: Sequence[float]) -> float:
    """FLOP/s of the median of per-GEMM times."""
    if not times_s:
        raise ValueError("times_s must not be empty")
    return gemm_flops_per_s(n, statistics.median(times_s))


class GemmStep:
    """The reference GEMM: ``torch.mm(a, b, out=c)`` on fixed random ``n x n`` operands of ``dtype``.

    ``clock`` / ``clock_div`` follow the model steps' (wall time, or process CPU time / threads).
    """

    def __init__(
        self, n: int, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, *,
        clock: str = "wall",
    ) -> None:  # fmt: skip
        if n < 1:
            raise ValueError(f"gemm_size must be >= 1, got gemm_size={n}")
        self.n = n
        self.device = torch.device(device)
        self.dtype = dtype
        gen = torch.Generator(device="cpu").manual_seed(0)
        self.a = torch.randn(n, n, generator=gen).to(self.device, dtype)
        self.b = torch.randn(n, n, generator=gen).to(self.device, dtype)
        self.c = torch.empty(n, n, device=self.device, dtype=dtype)
        self.clock = time.process_time if clock == "cpu" else time.perf_counter
        self.clock_div = max(1, torch.get_num_threads()) if clock == "cpu" else 1

    @property
    def flops(self) -> int:
        return 2 * self.n**3

    def __call__(self) -> None:
        torch.mm(self.a, self.b, out=self.c)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def timed(self, iters: int = 1) -> float:
        """Seconds per GEMM over ``iters`` GEMMs."""
        self._sync()
        t0 = self.clock()
        for _ in range(iters):
            self()
        self._sync()
        return (self.clock() - t0) / iters / self.clock_div
