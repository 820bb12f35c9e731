"""CPU throughput of BiFormer / NAT against timm's resnet50 in the same run, and BiFormer's 640² memory.

Throughput (default): batch 8, 224², fp32, ``torch.set_num_threads(2)``; inference (eval, no_grad) and a
train step (forward, cross-entropy, backward, SGD step). Runs alternate model / resnet50 to share the
machine's noise; medians are reported as images/s and as the ratio to resnet50::

    .venv/bin/python benchmarks/bench_biformer_nat.py                      # biformer_tiny, nat_mini
    .venv/bin/python benchmarks/bench_biformer_nat.py --models nat_mini --repeats 7 --impl torch

Memory (``--memory``): BiFormer-T at 1×3×640×640 with ``n_win`` 16 and 20, forward + backward, each in a
fresh child process whose peak RSS (``ru_maxrss``) is reported, once with the routed-attention kernel
(``impl=auto``, the fast path) and once with the gather formulation of the official code
(:func:`gather_routed_attention`: ``torch.gather`` on K/V expanded over the query regions, autograd through
matmul/softmax; its backward allocates the expanded ``[B, R, R, T, C]`` gradient)::

    .venv/bin/python benchmarks/bench_biformer_nat.py --memory
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch


def _time(fn, iters: int) -> float:
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t0) / iters


def _runner(model: torch.nn.Module, x: torch.Tensor, train: bool):
    if not train:
        model.eval()

        def infer() -> None:
            with torch.no_grad():
                model(x)

        return infer
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    target = torch.randint(0, 1000, (x.shape[0],))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), target).backward()
        opt.step()

    return step


def throughput(names: list[str], batch: int, size: int, repeats: int, iters: int, impl: str) -> list[dict]:
    import timm

    import mixerzoo

    torch.manual_seed(0)
    x = torch.randn(batch, 3, size, size)
    results = []
    for name in names:
        kw = {"mixer_options": {"impl": impl}} if impl != "auto" else {}
        model = mixerzoo.create_model(name, **kw)
        ref = timm.create_model("resnet50")
        for train in (False, True):
            fns = {"model": _runner(model, x, train), "resnet50": _runner(ref, x, train)}
            for fn in fns.values():  # warm-up (allocator, plans, oneDNN primitives)
                fn()
                fn()
            times: dict[str, list[float]] = {"model": [], "resnet50": []}
            for _ in range(repeats):
                for key in ("model", "resnet50"):
                    times[key].append(_time(fns[key], iters))
            med = {k: statistics.median(v) for k, v in times.items()}
            row = {
                "model": name, "mode": "train_step" if train else "inference", "batch": batch, "size": size,
                "img_s": batch / med["model"], "resnet50_img_s": batch / med["resnet50"],
                "ratio": med["resnet50"] / med["model"],
            }  # fmt: skip
            results.append(row)
            print(
                f"{name:>16} {row['mode']:>10}: {row['img_s']:7.2f} img/s   resnet50 {row['resnet50_img_s']:7.2f} img/s"
                f"   ratio {row['ratio']:.3f}",
                flush=True,
            )
    return results


def gather_routed_attention(q, k, v, topk_index, *, scale, key_padding_mask=None, impl=None):  # noqa: ANN001, ANN201
    """The official code's formulation (``KVGather``): ``torch.gather`` from K/V *expanded* over the query
    regions, then matmul → softmax → matmul with autograd. Its backward scatters into a zero buffer of the
    expanded shape ``[B, R, R, T, C]``, which is what makes it memory-bound at large ``n_win``."""
    B, R, T, H, D = q.shape
    Dv = v.shape[-1]
    idx = topk_index.reshape(B, R, -1)
    K = idx.shape[-1]
    kv = torch.cat([k.reshape(B, R, T, H * D), v.reshape(B, R, T, H * Dv)], dim=-1)
    C = kv.shape[-1]
    sel = torch.gather(kv.unsqueeze(1).expand(B, R, R, T, C), 2, idx.view(B, R, K, 1, 1).expand(B, R, K, T, C))
    k_sel, v_sel = sel.split([H * D, H * Dv], dim=-1)
    k_sel = k_sel.reshape(B * R, K * T, H, D).permute(0, 2, 3, 1)  # [B·R, H, D, K·T]
    v_sel = v_sel.reshape(B * R, K * T, H, Dv).transpose(1, 2)
    qh = q.reshape(B * R, T, H, D).transpose(1, 2)
    attn = ((qh * scale) @ k_sel)
    if key_padding_mask is not None:
        valid = ~key_padding_mask.expand(B, R, T)
        key_ok = valid[torch.arange(B)[:, None, None], idx].reshape(B * R, 1, 1, K * T)
        attn = attn.masked_fill(~key_ok, float("-inf"))
    out = attn.softmax(-1) @ v_sel  # [B·R, H, T, Dv]
    return out.transpose(1, 2).reshape(B, R, T, H, Dv)


def _memory_child(n_win: int, impl: str, size: int) -> None:
    import mixerzoo
    import mixerzoo.plugins.bra as bra

    torch.manual_seed(0)
    if impl == "gather":
        bra.routed_attention = gather_routed_attention  # benchmark baseline only
    opts = {"impl": "auto" if impl == "gather" else impl}
    model = mixerzoo.create_model("biformer_tiny", n_win=n_win, mixer_options=[opts] * 3 + [{}])
    x = torch.randn(1, 3, size, size)
    base_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # interpreter + torch + model + input
    t0 = time.perf_counter()
    model(x).sum().backward()
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    row = {"n_win": n_win, "impl": impl, "peak_rss_mib": peak_kib / 1024, "base_rss_mib": base_kib / 1024}
    print(json.dumps({**row, "s": time.perf_counter() - t0}))


def memory(size: int) -> list[dict]:
    rows = []
    for n_win in (16, 20):
        for impl in ("auto", "gather"):
            cmd = [sys.executable, __file__, "--_child", str(n_win), impl, str(size)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            row = json.loads(out)
            rows.append(row)
            label = "kernel (auto)" if impl == "auto" else "official gather"
            peak, base, secs = row["peak_rss_mib"], row["base_rss_mib"], row["s"]
            print(
                f"640² n_win={n_win:2d} {label:>16}: peak RSS {peak:7.1f} MiB, of which forward+backward "
                f"{peak - base:7.1f} MiB ({secs:.1f} s)",
                flush=True,
            )
        a, r = rows[-2], rows[-1]
        whole = a["peak_rss_mib"] / r["peak_rss_mib"]
        delta = (a["peak_rss_mib"] - a["base_rss_mib"]) / (r["peak_rss_mib"] - r["base_rss_mib"])
        print(f"   n_win={n_win}: kernel / gather peak RSS = {whole:.3f}; forward+backward part = {delta:.3f}", flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["biformer_tiny", "nat_mini"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--iters", type=int, default=2)
    p.add_argument("--impl", default="auto", help="kernel impl passed to the mixers (auto|torch|reference)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--memory", action="store_true", help="BiFormer-T 640² peak RSS, kernel vs gather")
    p.add_argument("--json", help="write the result rows here")
    p.add_argument("--_child", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args._child:
        _memory_child(int(args._child[0]), args._child[1], int(args._child[2]))
        return
    if args.memory:
        rows = memory(640)
    else:
        rows = throughput(args.models, args.batch, args.size, args.repeats, args.iters, args.impl)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
