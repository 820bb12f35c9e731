"""Benchmark ``mixerzoo.kernels.routed_attention`` against BiFormer's gather formulation.

CPU section (always, fp32):
* time: 56x56 map, 7x7 regions (64 tokens each), top-4 routing, head dim 32, C in {64, 128, 256};
  forward and forward+backward; median of alternating runs; ratio = gather / ours (same run).
* peak memory: 1 x C x 160 x 160 (padded to 161x161 = 7x7 regions of 23x23 tokens, padding masked), top-4,
  forward+backward; each implementation runs in its own child process and reports the growth of its peak
  RSS (``resource.getrusage(...).ru_maxrss``) over the RSS after building its inputs.
CUDA section: only when CUDA is present (triton vs torch vs gather, bf16).

    python benchmarks/kernels/bench_routed.py           # ~1-2 minutes on 2 idle cores
    python benchmarks/kernels/bench_routed.py --quick   # smoke run

The baseline re-states BiFormer's token attention (ops/bra_legacy.py KVGather + attention): ``torch.gather``
of K and V on an expanded ``[B, R, R, T, C]`` view (materialising the top-k regions per query region), then
``softmax(q k^T * scale) v`` per head.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch

from mixerzoo.kernels import routed_attention


def gather_attention(q, k, v, idx, scale, key_padding_mask=None):  # noqa: ANN001, ANN201
    """BiFormer-style: q, k, v ``[B, R, T, H, D]``, idx ``[B, 1, R, K]`` → ``[B, R, T, H, D]``."""
    B, R, T, H, D = q.shape
    K = idx.shape[-1]
    C = H * D
    g = idx[:, 0].reshape(B, R, K, 1, 1).expand(-1, -1, -1, T, C)
    k_sel = torch.gather(k.reshape(B, 1, R, T, C).expand(-1, R, -1, -1, -1), 2, g)  # [B, R, K, T, C]
    v_sel = torch.gather(v.reshape(B, 1, R, T, C).expand(-1, R, -1, -1, -1), 2, g)
    qh = q.permute(0, 1, 3, 2, 4)  # [B, R, H, T, D]
    kh = k_sel.reshape(B, R, K * T, H, D).permute(0, 1, 3, 4, 2)  # [B, R, H, D, K*T]
    vh = v_sel.reshape(B, R, K * T, H, D).permute(0, 1, 3, 2, 4)  # [B, R, H, K*T, D]
    attn = (qh * scale) @ kh
    if key_padding_mask is not None:
        pad = torch.gather(key_padding_mask.expand(B, R, T).unsqueeze(1).expand(-1, R, -1, -1), 2, idx[:, 0, :, :, None].expand(-1, -1, -1, T))
        attn = attn.masked_fill(pad.reshape(B, R, 1, 1, K * T), float("-inf"))
    out = attn.softmax(dim=-1) @ vh
    return out.permute(0, 1, 3, 2, 4)


def ours(q, k, v, idx, scale, key_padding_mask=None, impl="auto"):  # noqa: ANN001, ANN201
    return routed_attention(q, k, v, idx, scale=scale, key_padding_mask=key_padding_mask, impl=impl)


def problem(B, hw, n_win, C, topk, device="cpu", dtype=torch.float32, grad=False, seed=0):  # noqa: ANN001, ANN201
    gen = torch.Generator(device="cpu").manual_seed(seed)
    side = -(-hw // n_win) * n_win
    T = (side // n_win) ** 2
    R, H, D = n_win * n_win, C // 32, 32
    q, k, v = (torch.randn(B, R, T, H, D, generator=gen).to(device, dtype).requires_grad_(grad) for _ in range(3))
    idx = torch.rand(B, 1, R, R, generator=gen).topk(topk, dim=-1).indices.to(device)
    kpm = None
    if side != hw:
        pad = torch.ones(side, side, dtype=torch.bool)
        pad[:hw, :hw] = False
        kpm = pad.view(1, n_win, side // n_win, n_win, side // n_win).transpose(2, 3).reshape(1, R, T).to(device)
    return q, k, v, idx, C**-0.5, kpm


CLOCK = time.perf_counter  # --timer cpu switches to process CPU time (robust on a shared, oversubscribed machine)


def compare(fns: dict, make, reps: int, backward: bool, sync=lambda: None) -> dict[str, float]:  # noqa: ANN001
    times: dict[str, list[float]] = {n: [] for n in fns}
    for _ in range(reps):
        for name, fn in fns.items():  # alternate implementations every repetition
            args = make()
            sync()
            t0 = CLOCK()
            out = fn(*args)
            if backward:
                out.sum().backward()
            sync()
            times[name].append(CLOCK() - t0)
    return {n: statistics.median(t) for n, t in times.items()}


CHILD = """
import json, resource, sys, torch
sys.path.insert(0, {here!r})
from bench_routed import problem, gather_attention, ours
torch.manual_seed(0)
q, k, v, idx, scale, kpm = problem(1, 160, 7, {C}, 4, grad=True)
fn = gather_attention if {name!r} == "gather" else ours
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = fn(q, k, v, idx, scale, kpm)
out.sum().backward()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"peak_growth_mb": (peak - base) / 1024}}))
"""


def peak_memory(name: str, C: int) -> float:
    import os  # noqa: PLC0415

    code = CHILD.format(here=os.path.dirname(os.path.abspath(__file__)), C=C, name=name)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])["peak_growth_mb"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--mem-channels", type=int, nargs="*", default=[64])
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    ap.add_argument("--timer", choices=("wall", "cpu"), default="wall", help="cpu = process CPU time (use with --threads 1)")
    args = ap.parse_args()
    global CLOCK
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.timer == "cpu":
        CLOCK = time.process_time
    reps = 3 if args.quick else args.reps
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, timer {args.timer}")
    print("\nCPU fp32, 56x56, 7x7 regions (T=64), top-4, head dim 32; median ms of alternating runs; ratio = gather / ours")
    for C in [64] if args.quick else [64, 128, 256]:
        for backward in (False, True):
            ctx = torch.enable_grad() if backward else torch.no_grad()
            with ctx:
                med = compare(
                    {"gather": gather_attention, "ours": ours},
                    lambda C=C, backward=backward: problem(1, 56, 7, C, 4, grad=backward),
                    reps,
                    backward,
                )
            mode = "fwd+bwd" if backward else "fwd    "
            print(
                f"  C={C:3d} {mode}: gather {med['gather'] * 1e3:8.2f} ms  ours {med['ours'] * 1e3:8.2f} ms  "
                f"ratio {med['gather'] / med['ours']:.2f}x"
            )
    print("\nCPU fp32 peak memory, 1xCx160x160 (padded to 161, masked), top-4, fwd+bwd; peak-RSS growth in a child process")
    for C in [] if args.quick else args.mem_channels:
        mem = {name: peak_memory(name, C) for name in ("gather", "ours")}
        print(f"  C={C:3d}: gather {mem['gather']:8.1f} MB  ours {mem['ours']:8.1f} MB  ours/gather {mem['ours'] / mem['gather']:.3f}")
    if not torch.cuda.is_available():
        print("\nCUDA section: no CUDA device, skipped")
        return
    print("\nCUDA bf16, B=32, 56x56, top-4; median ms of alternating runs")
    for C in (64, 128, 256):
        for backward in (False, True):
            fns = {
                "gather": gather_attention,
                "torch": lambda *a: ours(*a, impl="torch"),
                "triton": lambda *a: ours(*a, impl="triton"),
            }
            ctx = torch.enable_grad() if backward else torch.no_grad()
            with ctx:
                med = compare(
                    fns,
                    lambda C=C, backward=backward: problem(32, 56, 7, C, 4, "cuda", torch.bfloat16, grad=backward),
                    reps,
                    backward,
                    sync=torch.cuda.synchronize,
                )
            mode = "fwd+bwd" if backward else "fwd"
            print(f"  C={C} {mode}: " + "  ".join(f"{n} {t * 1e3:.3f} ms" for n, t in med.items()))


if __name__ == "__main__":
    main()
