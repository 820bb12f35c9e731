"""Benchmark ``mixerzoo.kernels.linear_attention`` (focused kernel) against FLatten's eager maths.

CPU section (always): fp32, forward and forward+backward, same-run ratio of medians over alternating runs.
CUDA section: only when CUDA is present (triton impl vs the eager baseline and the torch impl).

    python benchmarks/kernels/bench_linear.py            # ~1 minute on 2 cores
    python benchmarks/kernels/bench_linear.py --quick    # smoke run

The baseline re-states FLatten's current code path (after its 2024-05-28 fix) on the same inputs the op
takes (q, k already divided by softplus(scale)): relu + 1e-6, norms over all C, power p, renormalise, split
heads, mean-key normaliser, (kᵀ/√n)(v/√n), multiply.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from mixerzoo.kernels import linear_attention


def flatten_eager(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, p: float = 3.0) -> torch.Tensor:
    """FLatten's maths, eager, on [B, N, C] tensors; returns [B, N, C]."""
    q = torch.relu(q) + 1e-6
    k = torch.relu(k) + 1e-6
    q_norm = q.norm(dim=-1, keepdim=True)
    k_norm = k.norm(dim=-1, keepdim=True)
    q = q**p
    k = k**p
    q = (q / q.norm(dim=-1, keepdim=True)) * q_norm
    k = (k / k.norm(dim=-1, keepdim=True)) * k_norm
    B, N, C = q.shape
    n = k.shape[1]
    q, k, v = (x.reshape(B, -1, heads, C // heads).permute(0, 2, 1, 3).reshape(B * heads, -1, C // heads) for x in (q, k, v))
    z = 1 / (q @ k.mean(dim=-2, keepdim=True).transpose(-2, -1) + 1e-6)
    kv = (k.transpose(-2, -1) * (n**-0.5)) @ (v * (n**-0.5))
    x = q @ kv * z
    return x.reshape(B, heads, N, C // heads).permute(0, 2, 1, 3).reshape(B, N, C)


def ours(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, impl: str = "auto") -> torch.Tensor:
    B, N, C = q.shape
    view = (B, -1, heads, C // heads)
    out = linear_attention(q.view(view), k.view(view), v.view(view), kernel="focused", focusing_factor=3.0, impl=impl)
    return out.reshape(B, N, C)


CLOCK = time.perf_counter  # --timer cpu switches to process CPU time (robust on a shared, oversubscribed machine)


def _time(fn, *, backward: bool, sync=lambda: None) -> float:  # noqa: ANN001
    sync()
    t0 = CLOCK()
    out = fn()
    if backward:
        out.sum().backward()
    sync()
    return CLOCK() - t0


def compare(fns: dict, make, reps: int, backward: bool, sync=lambda: None) -> dict[str, float]:  # noqa: ANN001
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):  # alternate the implementations every repetition
        for name, fn in fns.items():
            args = make()
            times[name].append(_time(lambda fn=fn, args=args: fn(*args), backward=backward, sync=sync))
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    ap.add_argument("--timer", choices=("wall", "cpu"), default="wall", help="cpu = process CPU time (use with --threads 1)")
    args = ap.parse_args()
    global CLOCK
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.timer == "cpu":
        CLOCK = time.process_time
    reps = 3 if args.quick else args.reps
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, timer {args.timer}")
    # (B, H, W, C, heads): FLatten-PVT-T stage 1, FLatten-Swin-T stage 1 and 2
    shapes = [(4, 56, 56, 64, 1), (4, 56, 56, 96, 3), (4, 28, 28, 192, 6)]
    if args.quick:
        shapes = shapes[:1]
    print("\nCPU fp32, median seconds (alternating runs); ratio = eager / ours")
    for B, Hh, Ww, C, heads in shapes:
        for backward in (False, True):

            def make(B=B, Hh=Hh, Ww=Ww, C=C, backward=backward):  # noqa: ANN001, ANN202
                return [torch.randn(B, Hh * Ww, C, requires_grad=backward) for _ in range(3)] + [heads]

            ctx = torch.enable_grad() if backward else torch.no_grad()
            with ctx:
                med = compare({"eager": flatten_eager, "ours": ours}, make, reps, backward)
            mode = "fwd+bwd" if backward else "fwd    "
            print(
                f"  B={B} {Hh}x{Ww} C={C} heads={heads} {mode}: eager {med['eager'] * 1e3:7.2f} ms  "
                f"ours {med['ours'] * 1e3:7.2f} ms  ratio {med['eager'] / med['ours']:.2f}x"
            )
    if not torch.cuda.is_available():
        print("\nCUDA section: no CUDA device, skipped")
        return
    print("\nCUDA bf16, median seconds (alternating runs)")
    for B, Hh, Ww, C, heads in [(64, 56, 56, 64, 1), (64, 56, 56, 96, 3)]:
        for backward in (False, True):

            def make(B=B, Hh=Hh, Ww=Ww, C=C, backward=backward):  # noqa: ANN001, ANN202
                return [
                    torch.randn(B, Hh * Ww, C, device="cuda", dtype=torch.bfloat16, requires_grad=backward)
                    for _ in range(3)
                ] + [heads]

            fns = {
                "eager": lambda q, k, v, h: flatten_eager(q.float(), k.float(), v.float(), h),
                "torch": lambda q, k, v, h: ours(q, k, v, h, impl="torch"),
                "triton": lambda q, k, v, h: ours(q, k, v, h, impl="triton"),
            }
            ctx = torch.enable_grad() if backward else torch.no_grad()
            with ctx:
                med = compare(fns, make, reps, backward, sync=torch.cuda.synchronize)
            mode = "fwd+bwd" if backward else "fwd"
            print(f"  B={B} {Hh}x{Ww} C={C} {mode}: " + "  ".join(f"{n} {t * 1e3:.3f} ms" for n, t in med.items()))


if __name__ == "__main__":
    main()
