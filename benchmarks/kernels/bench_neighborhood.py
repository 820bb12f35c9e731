"""Benchmark 2-D neighborhood attention (a script, not a test).

CPU part (always): NA 7x7, B=8, 4 heads x 32, fp32, forward + backward
  1. the fast PyTorch path (``impl="torch"``) vs the gather reference at 56x56: same-run ratio of medians
     over alternating runs (target >= 3x);
  2. the fast path at 56^2, 112^2, 224^2 (time should grow ~linearly with tokens) with the process's peak
     RSS, next to the memory dense attention would need for its score matrix alone.
  3. no-grad (inference) fast path vs reference at the NAT-Mini / DiNAT-Mini stage geometries.
CUDA part (only when CUDA is present): the Triton kernels vs dense SDPA, FlexAttention and NATTEN
(if installed): ms, useful TFLOP/s (49 keys per query) and achieved GB/s (q, k, v read + o written
forward; plus do, o read and dq, dk, dv written backward).

    python benchmarks/kernels/bench_neighborhood.py            # ~2-3 min on 2 cores
    python benchmarks/kernels/bench_neighborhood.py --quick    # smaller, for a smoke run
    python benchmarks/kernels/bench_neighborhood.py --threads 1 --cpu-time   # on a shared, busy machine
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from mixerzoo.kernels import neighborhood_attention_2d


def _inputs(batch, size, heads, dim, dtype=torch.float32, device="cpu", grad=True):
    gen = torch.Generator(device=device).manual_seed(0)
    shape = (batch, size, size, heads, dim)
    return [torch.randn(shape, generator=gen, device=device, dtype=dtype).requires_grad_(grad) for _ in range(3)]


def _fwd_bwd(impl, q, k, v, kernel):
    def run():
        for t in (q, k, v):
            t.grad = None
        out = neighborhood_attention_2d(q, k, v, kernel, impl=impl)
        out.backward(torch.ones_like(out))

    return run


def _timed(fn, sync=lambda: None) -> tuple[float, float]:
    """(wall seconds, process CPU seconds summed over threads)."""
    sync()
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    sync()
    return time.perf_counter() - t0, time.process_time() - c0


def _alternate(fns: dict, rounds: int, sync=lambda: None, cpu: bool = False) -> dict[str, float]:
    """Median seconds per function (wall, or process CPU time with ``cpu``); the order alternates
    every round (A B, B A, ...)."""
    names = list(fns)
    for name in names:  # warm-up (plans, caches)
        _timed(fns[name], sync)
    times = {n: [] for n in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            times[name].append(_timed(fns[name], sync)[1 if cpu else 0])
    return {n: statistics.median(t) for n, t in times.items()}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_section(args) -> None:
    b, heads, dim, kernel = args.batch, 4, 32, 7
    print(
        f"# CPU, torch {torch.__version__}, {torch.get_num_threads()} threads; NA {kernel}x{kernel}, B={b}, {heads} heads x {dim}, fp32, fwd+bwd"
    )
    clock = "process CPU time" if args.cpu_time else "wall time"
    print(f"fast path scaling ({clock}, median; peak RSS is the process high-water mark):")
    base = None
    for size in args.sizes:
        q, k, v = _inputs(b, size, heads, dim)
        rounds = args.rounds if size <= 112 else max(1, args.rounds - 1)
        t = _alternate({"torch": _fwd_bwd("torch", q, k, v, kernel)}, rounds, cpu=args.cpu_time)["torch"]
        tokens = size * size
        base = base or t / tokens
        dense_gb = b * heads * tokens * tokens * 4 / 1e9
        io_mb = 7 * q.numel() * 4 / 1e6  # q, k, v, out and the three input grads
        print(
            f"  {size:4d}^2 = {tokens:6d} tokens: {t * 1e3:9.1f} ms  ({t / tokens / base:4.2f}x the 56^2 time per token)  "
            f"peak RSS {_peak_rss_mb():7.0f} MB (q,k,v,out,grads {io_mb:5.0f} MB) | "
            f"dense attention's score matrix alone: {dense_gb:7.1f} GB"
        )
        del q, k, v

    q, k, v = _inputs(b, 56, heads, dim)
    med = _alternate(
        {"torch": _fwd_bwd("torch", q, k, v, kernel), "reference": _fwd_bwd("reference", q, k, v, kernel)},
        args.rounds,
        cpu=args.cpu_time,
    )
    print(
        f"56x56   fast path {med['torch'] * 1e3:9.1f} ms | gather reference {med['reference'] * 1e3:9.1f} ms | "
        f"speed-up {med['reference'] / med['torch']:.1f}x ({clock}, median of {args.rounds}, alternating)"
    )
    del q, k, v
    inference_section(args, clock)


def inference_section(args, clock: str) -> None:
    """No-grad path (fused SDPA on the tiles, cached mask) at the NAT-Mini / DiNAT-Mini stage geometries."""
    print(f"inference (no grad), NAT-Mini stages at 224^2, B={args.batch}, head dim 32 ({clock}, median):")
    stages = ((56, 2, 1), (56, 2, 8), (28, 4, 1), (28, 4, 4), (14, 8, 1), (14, 8, 2), (7, 16, 1))
    for size, heads, dil in stages:
        q, k, v = _inputs(args.batch, size, heads, 32, grad=False)
        rpb = torch.randn(heads, 13, 13)

        def run(impl, q=q, k=k, v=v, rpb=rpb, dil=dil):
            def f():
                with torch.no_grad():
                    neighborhood_attention_2d(q, k, v, 7, dil, rpb=rpb, impl=impl)

            return f

        med = _alternate({"torch": run("torch"), "reference": run("reference")}, args.rounds, cpu=args.cpu_time)
        print(
            f"  {size:3d}^2 x {heads:2d} heads, dilation {dil}: fast {med['torch'] * 1e3:7.1f} ms | "
            f"reference {med['reference'] * 1e3:7.1f} ms | speed-up {med['reference'] / med['torch']:5.1f}x"
        )


def _flex_fwd(qd, kd, vd, size, kernel):
    """FlexAttention with NATTEN's clamped 2-D window as a block mask (compiled)."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    r, n = kernel // 2, size * size

    def mask_mod(b_, h_, qi, ki):
        qy, qx, ky, kx = qi // size, qi % size, ki // size, ki % size
        sy = (qy - r).clamp(0, size - kernel)
        sx = (qx - r).clamp(0, size - kernel)
        return (ky >= sy) & (ky < sy + kernel) & (kx >= sx) & (kx < sx + kernel)

    bm = create_block_mask(mask_mod, None, None, n, n, device=qd.device)
    flex = torch.compile(flex_attention)
    return lambda: flex(qd, kd, vd, block_mask=bm)


def _cuda_problem(dtype, size, kernel, b, heads, dim, rounds) -> None:
    import torch.nn.functional as F

    q, k, v = _inputs(b, size, heads, dim, dtype, "cuda")
    n = size * size
    useful_flop = 4 * b * heads * n * kernel * kernel * dim
    io = b * n * heads * dim * q.element_size()
    fwd_bytes, bwd_bytes = 4 * io, 9 * io  # fwd: q,k,v,o; fwd+bwd adds do,o read and dq,dk,dv written
    qd, kd, vd = (x.detach().flatten(1, 2).transpose(1, 2) for x in (q, k, v))
    fns = {
        "triton fwd": lambda: neighborhood_attention_2d(q, k, v, kernel, impl="triton"),
        "triton fwd+bwd": _fwd_bwd("triton", q, k, v, kernel),
        "dense SDPA fwd": lambda: F.scaled_dot_product_attention(qd, kd, vd),
    }
    try:
        fns["flex fwd"] = _flex_fwd(qd, kd, vd, size, kernel)
    except Exception as err:  # noqa: BLE001 - optional comparison: report and keep going
        print(f"  flex unavailable: {type(err).__name__}: {err}")
    try:
        import natten

        fns["natten fwd"] = lambda: natten.na2d(q.detach(), k.detach(), v.detach(), kernel_size=kernel)
    except ImportError:
        pass
    reps = 20
    med = _alternate(
        {name: (lambda fn=fn: [fn() for _ in range(reps)]) for name, fn in fns.items()}, rounds, torch.cuda.synchronize
    )
    print(f" {dtype}, {size}x{size}, K={kernel}, B={b}, {heads}x{dim}:")
    for name, t in med.items():
        ms = t / reps * 1e3
        flop = useful_flop * (3.5 if "bwd" in name else 1.0)
        byts = bwd_bytes if "bwd" in name else fwd_bytes
        print(f"   {name:16s} {ms:8.3f} ms  {flop / ms / 1e9:7.1f} TFLOP/s (useful)  {byts / ms / 1e6:8.1f} GB/s")


def cuda_section(args) -> None:
    if not torch.cuda.is_available():
        print("# CUDA absent: skipping the Triton / SDPA / FlexAttention / NATTEN comparison")
        return
    print(f"# CUDA: {torch.cuda.get_device_name()}")
    for dtype in (torch.bfloat16, torch.float16):
        for size, kernel, b, heads, dim in ((56, 7, 32, 4, 32), (112, 7, 8, 4, 32), (56, 13, 32, 4, 64)):
            _cuda_problem(dtype, size, kernel, b, heads, dim, args.rounds)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3, help="timed rounds per measurement (alternating)")
    p.add_argument("--sizes", type=int, nargs="+", default=[56, 112, 224])
    p.add_argument("--quick", action="store_true", help="B=2, sizes 56 112, 2 rounds")
    p.add_argument("--skip-cpu", action="store_true")
    p.add_argument(
        "--cpu-time", action="store_true", help="report process CPU time instead of wall time (for a busy machine)"
    )
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = p.parse_args(argv)
    if args.quick:
        args.batch, args.sizes, args.rounds = 2, [56, 112], 2
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.skip_cpu:
        cpu_section(args)
    cuda_section(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
