"""One prepared GPU verification run: Triton kernels, every family, kernel speed, whole models, a training epoch.

``bash scripts/device-check.sh [OUT_DIR]`` (or ``python scripts/device_check.py [--out DIR]``) runs on a lent
GPU machine as it is (its own python3, torch, triton; the source tree on ``PYTHONPATH``) and writes
``device-report.json``, ``device-report.md`` and ``device-check.log`` into ``OUT_DIR`` (default ``$OUT``, else
``./device-check-out``). ``--dry-run`` runs the same code on the CPU (``TRITON_INTERPRET=1``, tiny shapes, one
family per kernel) and reports ``"device": "cpu-dry-run"``.

Parts (each a *job* with its own time budget; one failing or hanging job never stops the others):

``env``                 versions, the GPU, and the two ceilings measured on it (bf16 GEMM rate, copy bandwidth)
``kernels.<name>``      every op with a ``triton.py`` backend, forward + backward vs the float64 reference, fp32 /
                        fp16 / bf16, odd shapes, dilation, borders, padding masks, NaN-poisoned guard-banded
                        outputs, bitwise reproducibility; the tolerances are the CPU tests' (tests/kernels)
``families``            every family at 224² (batch 2), fp32 and bf16 autocast, forward + backward with
                        ``triton`` vs ``torch`` kernels (logits and three gradients), what ``auto`` chose
                        (``explain()`` of every op called)
``speed``               each kernel at the real stage shapes of NAT-T / DiNAT-T, BiFormer-T, FLatten-Swin-T /
                        FLatten-PVT-T against dense SDPA (flash), masked SDPA, FlexAttention (compiled) with the
                        equivalent block mask, and NATTEN when importable: ms, TFLOP/s, GB/s, fractions of the
                        H200's bf16 peak and HBM bandwidth
``models``              train and inference throughput at batch 64 in bf16 of every family, timm's resnet50 and
                        swin_tiny, and peak memory
``train``               one ``mixerzoo train`` epoch on the bundled digits
``sanitizer``           ``compute-sanitizer`` memcheck and racecheck on one small case per kernel (if present)

Every job runs in a child process (``--job NAME``) that rewrites its JSON fragment after each record, so a crash
or a timeout keeps what was measured; the driver merges the fragments into the report. Triton is imported only
through ``mixerzoo.kernels``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
KERNEL_TESTS = ROOT / "tests" / "kernels"
SCHEMA_VERSION = 1
DRY_DEVICE = "cpu-dry-run"

# H200 SXM datasheet (leads; the env job measures the achievable ceilings on the machine itself)
PEAK_BF16_FLOPS = 989e12
PEAK_HBM_BYTES = 4.8e12

#: (job, GPU budget s, dry-run budget s); run in this order (most valuable first)
JOBS: tuple[tuple[str, float, float], ...] = (
    ("env", 15, 8),
    ("kernels.neighborhood", 40, 10),
    ("kernels.routed", 25, 6),
    ("kernels.linear", 20, 5),
    ("families", 55, 30),
    ("speed", 55, 12),
    ("models", 75, 8),
    ("train", 30, 10),
    ("sanitizer", 25, 6),
)
PART_STATUSES = ("ok", "fail", "error", "timeout", "skipped")
GRACE_S = 20.0  # a child's hard timeout is its budget plus this


# ================================================================================================ report helpers


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def log(msg: str) -> None:
    print(f"[device-check {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Fragment:
    """The records of one job, rewritten to ``path`` after every change (a crash keeps what was written)."""

    def __init__(self, path: Path, job: str, budget: float, *, deadline: float | None = None,
                 reserve: float = 0.0) -> None:
        """``budget`` seconds from now, but never past ``deadline`` (``time.time()``) minus ``reserve`` (the
        seconds kept for the jobs after this one in the same process)."""
        self.path, self.job = path, job
        self.t0 = self._last_add = time.monotonic()
        self._last_item_s = 0.0
        if deadline is not None:
            budget = min(budget, deadline - time.time() - reserve)
        self.budget = max(0.0, budget)
        self.data: dict[str, Any] = {"job": job, "budget_s": round(self.budget, 1), "records": [], "info": {},
                                     "error": None,
                                     "done": False}
        self.flush()

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.t0)

    def can_start(self, min_s: float) -> bool:
        """Enough budget for one more item: at least ``min_s`` and at least what the last item took."""
        return self.left() >= max(min_s, self._last_item_s)

    def add(self, rec: dict[str, Any]) -> dict[str, Any]:
        now = time.monotonic()
        if not rec.get("skipped"):
            self._last_item_s = now - self._last_add
        self._last_add = now
        rec.setdefault("ok", None)
        self.data["records"].append(rec)
        flag = {True: "ok  ", False: "FAIL", None: "    "}[rec["ok"]]
        extra = rec.get("msg") or (f"skipped: {rec['skipped']}" if rec.get("skipped") else "") or rec.get("error") or ""
        log(f"{self.job}: {flag} {rec['id']}" + (f" — {extra}" if extra else ""))
        self.flush()
        return rec

    def skip(self, rid: str, why: str = "budget") -> None:
        self.add({"id": rid, "ok": None, "skipped": why})

    def flush(self) -> None:
        self.data["wall_s"] = round(time.monotonic() - self.t0, 2)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, default=str))
        tmp.replace(self.path)


def _fmt_err(err: BaseException) -> str:
    return f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"[:400]


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else x


# ================================================================================================ shared helpers


def _torch():  # noqa: ANN202
    import torch  # noqa: PLC0415

    return torch


def _tolerances():  # noqa: ANN202
    """The CPU kernel tests' tolerance table and poison helpers (one source for tests and this check)."""
    if str(KERNEL_TESTS) not in sys.path:
        sys.path.insert(0, str(KERNEL_TESTS))
    import _poison  # noqa: PLC0415
    import _tolerances  # noqa: PLC0415

    return _tolerances, _poison


def triton_ops() -> dict[str, str]:
    """``{kernel package: public op}`` for every ``mixerzoo.kernels`` op with a ``triton.py`` backend."""
    import importlib  # noqa: PLC0415

    import mixerzoo.kernels as K  # noqa: PLC0415

    out = {}
    base = Path(K.__file__).parent
    for sub in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith("_")):
        if (sub / "triton.py").exists() and (sub / "api.py").exists():
            api = importlib.import_module(f"mixerzoo.kernels.{sub.name}.api")
            out[sub.name] = getattr(api, "OP", sub.name)
    return out


def _sync(dev: str) -> None:
    if dev == "cuda":
        _torch().cuda.synchronize()


def bench(fn: Callable[[], Any], dev: str, *, max_s: float = 1.0, min_reps: int = 3, max_reps: int = 50) -> float:
    """Median milliseconds of ``fn()``: CUDA events on the GPU (after warm-up), wall clock on the CPU."""
    torch = _torch()
    fn()  # warm-up: compilation, autotuning, allocator
    _sync(dev)
    if dev != "cuda":
        times = []
        for _ in range(min_reps):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return sorted(times)[len(times) // 2]
    t0 = time.perf_counter()
    fn()
    _sync(dev)
    est = max(time.perf_counter() - t0, 1e-5)
    reps = int(max(min_reps, min(max_reps, max_s / est)))
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for s, e in zip(starts, ends):
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    times = sorted(s.elapsed_time(e) for s, e in zip(starts, ends))
    return times[len(times) // 2]


@contextlib.contextmanager
def forced_impl(which: str | None) -> Iterator[None]:
    """Make every kernel op called with ``impl="auto"`` prefer ``which``: it moves to the front of the op's
    candidates, so it runs wherever it supports the inputs and ``auto``'s usual fallback (with its reason in
    ``explain()``) applies where it does not (e.g. fp32 heads wider than a Triton kernel takes).

    Patches ``resolve_impl`` where the op modules bound it, so models need no per-module ``impl`` plumbing.
    """
    if which is None:
        yield
        return
    import importlib  # noqa: PLC0415

    from mixerzoo.kernels import _dispatch  # noqa: PLC0415

    base = Path(_dispatch.__file__).parent
    for sub in base.iterdir():  # every op module binds resolve_impl at import: import them all first
        if (sub / "api.py").exists():
            importlib.import_module(f"mixerzoo.kernels.{sub.name}.api")
    orig = _dispatch.resolve_impl

    def patched(op, impl, candidates):  # noqa: ANN001, ANN202
        if impl in (None, "auto"):
            candidates = sorted(candidates, key=lambda c: c[0] != which)  # stable: the rest keep their order
        return orig(op, impl, candidates)

    mods = [m for name, m in list(sys.modules.items())
            if name.startswith("mixerzoo.") and getattr(m, "resolve_impl", None) is orig]
    for m in mods:
        m.resolve_impl = patched
    try:
        yield
    finally:
        for m in mods:
            m.resolve_impl = orig


def explain_all(reset: bool = False) -> dict[str, str]:
    """``explain(op)`` of every op called since the last reset."""
    from mixerzoo.kernels import _dispatch  # noqa: PLC0415

    out = {op: _dispatch.explain(op) for op in sorted(_dispatch._last)}
    if reset:
        _dispatch._last.clear()
    return out


# ================================================================================================ job: env


def job_env(frag: Fragment, dry: bool) -> None:
    torch = _torch()
    info: dict[str, Any] = {
        "python": sys.version.split()[0], "platform": platform.platform(), "torch": torch.__version__,
        "cuda_runtime": torch.version.cuda, "cpu_count": os.cpu_count(), "kernel_release": platform.release(),
    }
    from mixerzoo.kernels import _triton  # noqa: PLC0415

    ok, why = _triton.has_triton()
    info["triton"] = _triton.import_triton().__version__ if ok else f"unavailable: {why}"
    for name in ("timm", "huggingface_hub", "albumentations", "numpy", "natten"):
        try:
            info[name] = __import__(name).__version__
        except Exception as err:  # noqa: BLE001 - record, never fail
            info[name] = f"unavailable: {_fmt_err(err)}"
    info["compute_sanitizer"] = shutil.which("compute-sanitizer")
    info["triton_interpret"] = os.environ.get("TRITON_INTERPRET", "0")
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, capability=f"{p.major}.{p.minor}", gpu_memory_gib=round(p.total_memory / 2**30, 1),
                    sm_count=p.multi_processor_count)
        with contextlib.suppress(Exception):
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,clocks.sm,clocks.max.sm,power.limit",
                                  "--format=csv,noheader"], capture_output=True, text=True, timeout=15)
            info["nvidia_smi"] = smi.stdout.strip()
    frag.data["info"] = info
    frag.flush()
    dev = "cuda" if torch.cuda.is_available() and not dry else "cpu"
    # the two ceilings (METHOD.md: measure them once on the machine): a large bf16 GEMM and a device copy
    n = 8192 if dev == "cuda" else 256
    dt = torch.bfloat16 if dev == "cuda" else torch.float32
    a, b = (torch.randn(n, n, device=dev, dtype=dt) for _ in range(2))
    ms = bench(lambda: a @ b, dev, max_s=0.5)
    frag.add({"id": "ceiling/gemm", "n": n, "dtype": str(dt), "ms": ms, "tflops": 2 * n**3 / ms / 1e9,
              "frac_peak_bf16": 2 * n**3 / ms / 1e-3 / PEAK_BF16_FLOPS if dev == "cuda" else None})
    numel = (1 << 30) // 2 if dev == "cuda" else 1 << 20  # 1 GiB of bf16 on the GPU
    src = torch.randn(numel, device=dev, dtype=dt)
    dst = torch.empty_like(src)
    ms = bench(lambda: dst.copy_(src), dev, max_s=0.5)
    nbytes = 2 * src.numel() * src.element_size()
    frag.add({"id": "ceiling/copy", "bytes": nbytes, "ms": ms, "gbps": nbytes / ms / 1e6,
              "frac_hbm": nbytes / ms / 1e-3 / PEAK_HBM_BYTES if dev == "cuda" else None})


# ================================================================================================ job: kernels


def _dtype(name: str):  # noqa: ANN202
    return getattr(_torch(), name)


def _rand(shape, gen, dev: str, dtype, *, positive: bool = False):  # noqa: ANN001, ANN202
    torch = _torch()
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    if positive:
        x = x.abs() + 0.2
    return x.to(device=dev, dtype=dtype)


def _na_problem(case: dict, dev: str, seed: int):  # noqa: ANN202
    torch = _torch()
    gen = torch.Generator().manual_seed(seed)
    dtype = _dtype(case["dtype"])
    shape = (case.get("B", 1), *case["hw"], case["heads"], case["hd"])
    q, k, v = (_rand(shape, gen, dev, dtype) for _ in range(3))
    ks = case["ks"]
    kh, kw = (ks, ks) if isinstance(ks, int) else ks
    rpb = None
    if case.get("rpb"):
        rpb = _rand((case["heads"], 2 * kh - 1, 2 * kw - 1), gen, dev, torch.float32)
    grad = _rand(shape, gen, dev, dtype)
    tensors = {"q": q, "k": k, "v": v, "rpb": rpb}

    def call(ts: dict, impl: str):  # noqa: ANN202
        from mixerzoo.kernels import neighborhood_attention_2d  # noqa: PLC0415

        return neighborhood_attention_2d(ts["q"], ts["k"], ts["v"], ks, case.get("dil", 1), rpb=ts["rpb"],
                                         impl=impl)

    return tensors, grad, call


def _routed_problem(case: dict, dev: str, seed: int):  # noqa: ANN202
    torch = _torch()
    gen = torch.Generator().manual_seed(seed)
    dtype = _dtype(case["dtype"])
    B, R, T, H, D = case.get("B", 1), case["R"], case["T"], case["H"], case["D"]
    Dv, K, G = case.get("Dv", D), case["K"], case.get("G", 1)
    q, k = (_rand((B, R, T, H, D), gen, dev, dtype) for _ in range(2))
    v = _rand((B, R, T, H, Dv), gen, dev, dtype)
    idx = torch.rand(B, G, R, R, generator=gen).topk(K, dim=-1).indices.to(dev)
    kpm = None
    if case.get("mask"):
        kpm = torch.rand(B, R, T, generator=gen) < 0.3
        kpm[0, idx[0, 0, min(1, R - 1)].cpu()] = True  # one query region sees only padding: zero output
        kpm = kpm.to(dev)
    grad = _rand((B, R, T, H, Dv), gen, dev, dtype)
    tensors = {"q": q, "k": k, "v": v}
    strided = case.get("strided", False)

    def call(ts: dict, impl: str):  # noqa: ANN202
        from mixerzoo.kernels import routed_attention  # noqa: PLC0415

        qq, kk, vv = ts["q"], ts["k"], ts["v"]
        if strided and impl != "reference":  # q, k, v as views into one packed tensor (the mixer's layout)
            packed = torch.stack([qq, kk, vv], dim=3)
            qq, kk, vv = packed.unbind(3)
        return routed_attention(qq, kk, vv, idx, scale=case.get("scale", 0.3), key_padding_mask=kpm, impl=impl)

    return tensors, grad, call


def _linear_problem(case: dict, dev: str, seed: int):  # noqa: ANN202
    torch = _torch()
    gen = torch.Generator().manual_seed(seed)
    dtype = _dtype(case["dtype"])
    B, N, M, H, D, Dv = case.get("B", 1), case["N"], case.get("M", case["N"]), case["H"], case["D"], case["Dv"]
    pos = case["kernel"] in ("identity", "relu")  # keep the normaliser away from 0
    q = _rand((B, N, H, D), gen, dev, dtype, positive=pos)
    k = _rand((B, M, H, D), gen, dev, dtype, positive=pos)
    v = _rand((B, M, H, Dv), gen, dev, dtype)
    grad = _rand((B, N, H, Dv), gen, dev, dtype)
    tensors = {"q": q, "k": k, "v": v}

    def call(ts: dict, impl: str):  # noqa: ANN202
        from mixerzoo.kernels import linear_attention  # noqa: PLC0415

        return linear_attention(ts["q"], ts["k"], ts["v"], kernel=case["kernel"], focusing_factor=case.get("p", 3.0),
                                impl=impl)

    return tensors, grad, call


# id -> problem spec. "dry": also in the CPU dry run (tiny; under the interpreter).
KERNEL_CASES: dict[str, tuple[Callable, list[dict]]] = {
    "neighborhood": (_na_problem, [
        {"id": "fp32_12x12_k7_rpb", "hw": (12, 12), "ks": 7, "heads": 1, "hd": 16, "dtype": "float32", "rpb": 1,
         "dry": 1},
        {"id": "bf16_11x12_k5_d2", "hw": (11, 12), "ks": 5, "dil": 2, "heads": 1, "hd": 32, "dtype": "bfloat16",
         "dry": 1},
        {"id": "bf16_56x56_k7_d8_h2_rpb_B2", "B": 2, "hw": (56, 56), "ks": 7, "dil": 8, "heads": 2, "hd": 32,
         "dtype": "bfloat16", "rpb": 1},
        {"id": "bf16_28x28_k7_h4_rpb_B2", "B": 2, "hw": (28, 28), "ks": 7, "heads": 4, "hd": 32,
         "dtype": "bfloat16", "rpb": 1},
        {"id": "bf16_30x31_k11_hd64_rpb", "hw": (30, 31), "ks": 11, "heads": 2, "hd": 64, "dtype": "bfloat16",
         "rpb": 1},
        {"id": "fp32_9x11_k3x5_d2x1_rpb", "hw": (9, 11), "ks": (3, 5), "dil": (2, 1), "heads": 2, "hd": 16,
         "dtype": "float32", "rpb": 1},
        {"id": "fp32_15x14_k13_rpb", "hw": (15, 14), "ks": 13, "heads": 1, "hd": 16, "dtype": "float32", "rpb": 1},
        {"id": "fp16_13x10_k5x3_d2x3", "hw": (13, 10), "ks": (5, 3), "dil": (2, 3), "heads": 2, "hd": 16,
         "dtype": "float16"},
        {"id": "fp16_10x9_k3_d3_hd24_rpb", "hw": (10, 9), "ks": 3, "dil": 3, "heads": 1, "hd": 24,
         "dtype": "float16", "rpb": 1},
        {"id": "fp16_7x7_k7_h16_rpb", "hw": (7, 7), "ks": 7, "heads": 16, "hd": 32, "dtype": "float16", "rpb": 1},
        {"id": "fp32_17x23_k5_d3_hd32", "hw": (17, 23), "ks": 5, "dil": 3, "heads": 2, "hd": 32, "dtype": "float32"},
    ]),
    "routed": (_routed_problem, [
        {"id": "fp32_gH_mask", "B": 2, "R": 5, "T": 5, "H": 2, "D": 16, "K": 3, "G": 2, "mask": 1,
         "dtype": "float32", "dry": 1},
        {"id": "bf16_g1_mask_odd_dims", "R": 5, "T": 5, "H": 2, "D": 24, "Dv": 20, "K": 3, "mask": 1,
         "dtype": "bfloat16", "dry": 1},
        {"id": "bf16_biformer_s1_B2", "B": 2, "R": 49, "T": 64, "H": 2, "D": 32, "K": 1, "dtype": "bfloat16",
         "scale": 64**-0.5},
        {"id": "fp16_biformer_s2_mask", "B": 2, "R": 49, "T": 16, "H": 4, "D": 32, "K": 4, "mask": 1,
         "dtype": "float16", "scale": 128**-0.5},
        {"id": "bf16_biformer_s3", "B": 2, "R": 49, "T": 4, "H": 8, "D": 32, "K": 16, "dtype": "bfloat16",
         "scale": 256**-0.5},
        {"id": "fp32_all_regions_T4", "R": 4, "T": 4, "H": 2, "D": 16, "K": 4, "dtype": "float32"},
        {"id": "fp16_gH_strided", "R": 5, "T": 5, "H": 2, "D": 16, "K": 3, "G": 2, "strided": 1,
         "dtype": "float16"},
        {"id": "bf16_gH_T20", "R": 3, "T": 20, "H": 2, "D": 16, "K": 2, "G": 2, "dtype": "bfloat16"},
        {"id": "bf16_hd128_T9", "R": 9, "T": 9, "H": 1, "D": 128, "K": 3, "dtype": "bfloat16"},
    ]),
    "linear": (_linear_problem, [
        {"id": "focused_fp32", "B": 2, "N": 40, "M": 23, "H": 2, "D": 16, "Dv": 8, "kernel": "focused",
         "dtype": "float32", "dry": 1},
        {"id": "focused_bf16_p2.5_odd", "N": 70, "M": 131, "H": 2, "D": 12, "Dv": 20, "kernel": "focused",
         "p": 2.5, "dtype": "bfloat16", "dry": 1},
        {"id": "focused_bf16_swin_s1_B2", "B": 2, "N": 3136, "H": 3, "D": 32, "Dv": 32, "kernel": "focused",
         "dtype": "bfloat16"},
        {"id": "focused_fp16_pvt_s1_sr", "B": 2, "N": 3136, "M": 49, "H": 1, "D": 64, "Dv": 64,
         "kernel": "focused", "dtype": "float16"},
        {"id": "focused_fp16", "B": 2, "N": 40, "M": 23, "H": 2, "D": 16, "Dv": 8, "kernel": "focused",
         "dtype": "float16"},
        {"id": "relu_fp32", "B": 2, "N": 40, "M": 23, "H": 2, "D": 16, "Dv": 8, "kernel": "relu",
         "dtype": "float32"},
        {"id": "elu_bf16", "B": 2, "N": 40, "M": 23, "H": 2, "D": 16, "Dv": 8, "kernel": "elu", "dtype": "bfloat16"},
        {"id": "identity_fp16", "B": 2, "N": 40, "M": 23, "H": 2, "D": 16, "Dv": 8, "kernel": "identity",
         "dtype": "float16"},
    ]),
}


def _run_kernel_case(kernel: str, case: dict, dev: str, seed: int) -> dict[str, Any]:
    """Forward + every input gradient with impl="triton" (NaN-poisoned, guard-banded outputs) against the
    float64 reference on the same rounded inputs; then the same again for bitwise reproducibility."""
    torch = _torch()
    tol, poison = _tolerances()
    make, _ = KERNEL_CASES[kernel]
    tensors, grad, call = make(case, dev, seed)
    dtype = _dtype(case["dtype"])
    names = [n for n, t in tensors.items() if t is not None]

    def run(impl: str, cast):  # noqa: ANN001, ANN202
        ts = {}
        for n, t in tensors.items():
            # the reference sees every tensor in float64; the kernel sees q/k/v in the case dtype, rpb as given
            if t is None:
                ts[n] = None
                continue
            dt = torch.float64 if cast == torch.float64 else (t.dtype if n == "rpb" else cast)
            ts[n] = t.detach().to(dt).requires_grad_()
        out = call(ts, impl)
        gs = torch.autograd.grad(out, [ts[n] for n in names], grad.to(out.dtype))
        return [out, *gs]

    exp = run("reference", torch.float64)
    tri_mod = None
    if kernel == "neighborhood":  # its outputs come from a module-level allocator hook
        from mixerzoo.kernels.neighborhood import triton as tri_mod  # noqa: PLC0415
    hook = tri_mod._empty if tri_mod is not None else None
    with poison.poisoned_allocations():
        if tri_mod is not None:
            tri_mod._empty = poison._poisoned
        try:
            got = run("triton", dtype)
            got2 = run("triton", dtype)
        finally:
            if tri_mod is not None:
                tri_mod._empty = hook
    _sync(dev)
    n_buffers = poison.check_guards()
    rec: dict[str, Any] = {"errors": {}, "poisoned_buffers": n_buffers}
    failures = []
    for what, a, e in zip(["out"] + [f"d{n}" for n in names], got, exp):
        rec["errors"][what] = _finite(tol.rel_rmse(a, e)) if torch.isfinite(a).all() else None
        try:
            if what == "out" and a.dtype != dtype:
                raise AssertionError(f"out dtype {a.dtype} != {dtype}")
            tol.assert_close(a, e, dtype, grad=what != "out", what=what)
        except AssertionError as err:
            failures.append(str(err))
    if n_buffers == 0:
        failures.append("no kernel output was NaN-poisoned: the allocation hook missed them")
    rec["bitwise_reproducible"] = all(torch.equal(a, b) for a, b in zip(got, got2))
    rec["tolerance"] = tol.TOL[dtype]
    rec["ok"] = not failures
    rec["msg"] = "; ".join(failures)
    return rec


def job_kernels(frag: Fragment, dry: bool, kernel: str) -> None:
    torch = _torch()
    ops = triton_ops()
    frag.data["info"]["triton_ops"] = ops
    if kernel not in ops:
        frag.add({"id": kernel, "ok": False, "msg": f"no triton backend named {kernel!r} (have {sorted(ops)})"})
        return
    if kernel not in KERNEL_CASES:
        frag.add({"id": kernel, "ok": False, "msg": "a triton kernel with no device-check cases: add them"})
        return
    dev = "cpu" if dry else "cuda"
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 cases use IEEE dots, as in the CPU tests
    ran = 0
    for i, case in enumerate(KERNEL_CASES[kernel][1]):
        rid = f"{kernel}/{case['id']}"
        if dry and not case.get("dry"):
            continue
        if ran and not frag.can_start(2):  # the first case always runs: correctness is what matters most
            frag.skip(rid)
            continue
        ran += 1
        t0 = time.monotonic()
        try:
            rec = _run_kernel_case(kernel, case, dev, seed=1000 + i)
        except Exception as err:  # noqa: BLE001 - one case failing never stops the others
            rec = {"ok": False, "msg": _fmt_err(err), "traceback": traceback.format_exc()[-2000:]}
        rec.update(id=rid, kernel=kernel, op=ops[kernel], dtype=case["dtype"], case=case,
                   seconds=round(time.monotonic() - t0, 2))
        frag.add(rec)
        if rec["ok"] is False and not cuda_healthy():
            raise RuntimeError(f"the CUDA context is broken after {rid} (a kernel fault); later cases need a "
                               "fresh process")


# ================================================================================================ job: sanitizer


def job_sanitize_cases(frag: Fragment, dry: bool) -> None:
    """One small bf16 forward + backward per kernel (what compute-sanitizer watches)."""
    dev = "cpu" if dry else "cuda"
    for kernel in sorted(triton_ops()):
        if kernel not in KERNEL_CASES:
            continue
        case = next(c for c in KERNEL_CASES[kernel][1] if c.get("dry") and c["dtype"] == "bfloat16")
        if frag.left() < 1:
            frag.skip(f"{kernel}/{case['id']}")
            continue
        try:
            rec = _run_kernel_case(kernel, case, dev, seed=7)
        except Exception as err:  # noqa: BLE001
            rec = {"ok": False, "msg": _fmt_err(err)}
        frag.add({**rec, "id": f"{kernel}/{case['id']}"})


def job_sanitizer(frag: Fragment, dry: bool, tmp: Path) -> None:
    exe = shutil.which("compute-sanitizer")
    tools = ("memcheck", "racecheck")
    base = [sys.executable, str(Path(__file__).resolve()), "--job", "sanitize-cases", "--tmp", str(tmp)]
    if dry:
        base.append("--dry-run")
    frag.data["info"]["compute_sanitizer"] = exe
    if exe is None:
        # still run the cases the sanitizer would watch (in this process), so the path cannot rot
        sub = Fragment(tmp / "sanitize-cases.json", "sanitize-cases", frag.left())
        job_sanitize_cases(sub, dry)
        bad = [r["id"] for r in sub.data["records"] if r.get("ok") is False]
        frag.add({"id": "sanitizer/cases-without-sanitizer", "ok": not bad,
                  "msg": "compute-sanitizer not found; the cases ran plain" + (f"; failed: {bad}" if bad else "")})
        for t in tools:
            frag.skip(f"sanitizer/{t}", "compute-sanitizer not found")
        return
    for tool in tools:
        rid = f"sanitizer/{tool}"
        left = frag.left()
        if left < 10:
            frag.skip(rid)
            continue
        cmd = [exe, "--tool", tool, "--error-exitcode", "86", "--print-limit", "20", *base, "--budget", str(left)]
        t0 = time.monotonic()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=left)
            out = proc.stdout + proc.stderr
            summary = [ln for ln in out.splitlines() if "ERROR SUMMARY" in ln or "RACECHECK SUMMARY" in ln]
            unsupported = "not supported" in out.lower() and proc.returncode != 0
            cases = {r["id"]: r.get("ok") for r in _read_fragment(tmp / "sanitize-cases.json").get("records", [])}
            # rc 86: the sanitizer found errors; rc 1: a case's numerics failed under it; else a crash
            msg = ("device not supported by compute-sanitizer" if unsupported else
                   f"{summary[-1] if summary else 'no summary'}; rc {proc.returncode}; cases {cases}")
            frag.add({"id": rid, "ok": None if unsupported else proc.returncode == 0, "rc": proc.returncode,
                      "summary": summary, "cases": cases, "seconds": round(time.monotonic() - t0, 1), "msg": msg,
                      "output_tail": out[-3000:]})
        except subprocess.TimeoutExpired as err:
            frag.add({"id": rid, "ok": None, "skipped": f"timeout after {err.timeout:.0f}s"})


# ================================================================================================ job: families

FAMILY_MODELS: dict[str, list[str]] = {  # GPU representatives (the issue's "-T" variants where there is one)
    "attn_resnet": ["resnet18_cbam"],
    "biformer": ["biformer_tiny"],
    "biformer_stl": ["biformer_stl"],
    "flatten_cswin": ["flatten_cswin_tiny"],
    "flatten_pvt": ["flatten_pvt_tiny"],
    "flatten_pvt_v2": ["flatten_pvt_v2_b0"],
    "flatten_swin": ["flatten_swin_tiny"],
    "litv2": ["litv2_small"],
    "nat": ["nat_tiny", "dinat_tiny"],
    "nat_isotropic": ["nat_isotropic_small"],
    "poolformer": ["poolformer_s12"],
    "vit": ["vit_small_patch16_224"],
}
DRY_FAMILIES = ("flatten_pvt", "biformer", "nat")  # one family per Triton kernel, cheapest first
DRY_MODELS = {"nat": "test_nat"}  # else the family's first test variant
DRY_IMG = 32
CHANNELS_LAST_FAMILIES = ("attn_resnet", "poolformer")
# families whose mixers call a Triton op go first: when the budget runs out, plain families are what is lost
TRITON_FIRST = ("nat", "biformer", "flatten_swin", "flatten_pvt", "flatten_cswin", "flatten_pvt_v2", "biformer_stl",
                "nat_isotropic")
FAMILY_TOL = {"float32": {"logits": 1e-3, "grad": 1e-2}, "bfloat16": {"logits": 5e-2, "grad": 1.5e-1}}


def _models_for(family: str, dry: bool) -> list[str]:
    from mixerzoo.zoo import _registry, list_models  # noqa: PLC0415

    if dry:
        tests = [n for n in list_models(family=family, include_test=True) if _registry.get_entry(n).test]
        return [DRY_MODELS[family]] if family in DRY_MODELS else tests[:1]
    return FAMILY_MODELS.get(family) or list_models(family=family)[:1]


def _make_model(name: str, dev: str, dry: bool):  # noqa: ANN202
    from mixerzoo.zoo import create_model  # noqa: PLC0415

    model = create_model(name, num_classes=10 if dry else 1000).to(dev)
    size = int(model.pretrained_cfg.get("input_size", (3, 224, 224))[-1])
    if dry:  # the test variants' own sizes are their smallest valid inputs
        size = min(size, max(DRY_IMG, _min_size(model)))
    return model, size


def _min_size(model) -> int:  # noqa: ANN001
    """Smallest input the dry run uses for ``model``: 32, or its own cfg size for the NA families (the last
    stage needs a map of at least kernel x dilation)."""
    return int(model.pretrained_cfg.get("input_size", (3, 32, 32))[-1]) if type(model).__module__.endswith("nat") \
        else DRY_IMG


def _wake_layer_scales(model) -> int:  # noqa: ANN001
    """Set layer-scale vectors initialised to a tiny constant (1e-5, 1e-6) to 1: at their init the mixer
    branches barely reach the logits, and triton-vs-torch differences would vanish below fp32 rounding."""
    torch = _torch()
    n = 0
    with torch.no_grad():
        for p in model.parameters():
            if p.numel() > 1 and p.is_floating_point():
                lo, hi = p.min().item(), p.max().item()
                if lo == hi and 0 < abs(lo) <= 1e-4:
                    p.fill_(1.0)
                    n += 1
    return n


def _fwd_bwd(model, x, w, amp: bool, dev: str):  # noqa: ANN001, ANN202
    torch = _torch()
    model.zero_grad(set_to_none=True)
    ctx = torch.autocast(dev, dtype=torch.bfloat16) if amp else contextlib.nullcontext()
    with ctx:
        logits = model(x)
    (logits.float() * w).sum().backward()
    return logits.detach().float()


def job_families(frag: Fragment, dry: bool) -> None:
    torch = _torch()
    from mixerzoo.zoo import list_families  # noqa: PLC0415

    tol, _ = _tolerances()
    dev = "cpu" if dry else "cuda"
    ops = triton_ops()
    triton_op_names = set(ops.values())
    # families whose mixers call a Triton op first: if the budget runs out, plain families are what is lost
    every = list_families()
    families = list(DRY_FAMILIES) if dry else [f for f in TRITON_FIRST if f in every] + [
        f for f in every if f not in TRITON_FIRST]
    batch = 1 if dry else 2
    frag.data["info"].update(families=families, tolerance=FAMILY_TOL, triton_ops=ops, batch=batch)
    dtypes = ["float32"] if dry else ["float32", "bfloat16"]
    for family in families:
        for name in _models_for(family, dry):
            rid = f"{family}/{name}"
            if not frag.can_start(5 if dry else 6):
                frag.skip(rid)
                continue
            t0 = time.monotonic()
            rec: dict[str, Any] = {"id": rid, "family": family, "model": name, "compare": {}}
            failures: list[str] = []
            try:
                torch.manual_seed(0)
                model, size = _make_model(name, dev, dry)
                model.eval()  # no dropout / drop-path: both implementations see the same network
                rec["layer_scales_set_to_1"] = _wake_layer_scales(model)
                gen = torch.Generator().manual_seed(1)
                x = torch.randn(batch, 3, size, size, generator=gen).to(dev)
                w = torch.randn(batch, model.num_classes if hasattr(model, "num_classes") else 1000,
                                generator=gen).to(dev)
                params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
                pick = [params[0], params[len(params) // 2], params[-1]]
                rec["img_size"] = size
                # what auto picks (no forcing) in the training dtype (bf16 autocast on the GPU), and explain()
                explain_all(reset=True)
                with torch.no_grad(), (torch.autocast(dev, dtype=torch.bfloat16) if not dry
                                       else contextlib.nullcontext()):
                    model(x)
                rec["explain_auto"] = explain_all(reset=True)
                called = {op for op in rec["explain_auto"] if op in triton_op_names}
                rec["triton_ops_called"] = sorted(called)
                not_triton = [op for op in called if "ran 'triton'" not in rec["explain_auto"][op]]
                if not_triton:
                    failures.append(f"auto did not choose triton for {not_triton}")
                for dt in dtypes:
                    amp = dt == "bfloat16"
                    res = {}
                    for impl in ("torch", "triton"):
                        explain_all(reset=True)
                        with forced_impl(impl):
                            logits = _fwd_bwd(model, x, w, amp, dev)
                        res[impl] = (logits, [p.grad.detach().float().clone() if p.grad is not None else None
                                              for _, p in pick])
                        rec.setdefault("explain_forced", {})[f"{dt}/{impl}"] = explain_all(reset=True)
                    cmp = {"logits": tol.rel_rmse(res["triton"][0], res["torch"][0])}
                    for (pname, _), ga, gb in zip(pick, res["triton"][1], res["torch"][1]):
                        cmp[f"grad:{pname}"] = None if ga is None or gb is None else tol.rel_rmse(ga, gb)
                    rec["compare"][dt] = {k: _finite(v) for k, v in cmp.items()}
                    for k, v in cmp.items():
                        lim = FAMILY_TOL[dt]["logits" if k == "logits" else "grad"]
                        if v is None or not math.isfinite(v) or v > lim:
                            failures.append(f"{dt} {k}: rel-RMSE {v} > {lim}")
                    if not torch.isfinite(res["triton"][0]).all():
                        failures.append(f"{dt}: non-finite logits with triton")
                rec["ok"] = not failures
                rec["msg"] = "; ".join(failures)
                del model
            except Exception as err:  # noqa: BLE001
                rec.update(ok=False, msg=_fmt_err(err), traceback=traceback.format_exc()[-2000:])
            rec["seconds"] = round(time.monotonic() - t0, 2)
            frag.add(rec)
            if dev == "cuda":
                torch.cuda.empty_cache()


# ================================================================================================ job: speed


def _speed_problems(dry: bool) -> list[dict[str, Any]]:
    """Stage shapes at 224² (batch 64 on the GPU). NAT-T/DiNAT-T: heads 2/4/8/16, head dim 32, kernel 7;
    BiFormer-T: 7x7 regions, top-k 1/4/16, head dim 32; FLatten-Swin-T stages 1-2 and FLatten-PVT-T stage 1."""
    if dry:
        return [
            {"id": "na2d/tiny_d2", "kernel": "neighborhood", "B": 1, "hw": 12, "heads": 1, "hd": 16, "ks": 5, "dil": 2},
            {"id": "routed/tiny", "kernel": "routed", "B": 1, "R": 4, "T": 16, "H": 1, "D": 16, "K": 2},
            {"id": "linear/tiny", "kernel": "linear", "B": 1, "N": 64, "M": 64, "H": 1, "D": 16},
        ]
    B = 64
    return [
        {"id": "na2d/nat_t_s1", "kernel": "neighborhood", "B": B, "hw": 56, "heads": 2, "hd": 32, "ks": 7, "dil": 1},
        {"id": "na2d/dinat_t_s1_d8", "kernel": "neighborhood", "B": B, "hw": 56, "heads": 2, "hd": 32, "ks": 7,
         "dil": 8},
        {"id": "na2d/nat_t_s2", "kernel": "neighborhood", "B": B, "hw": 28, "heads": 4, "hd": 32, "ks": 7, "dil": 1},
        {"id": "na2d/dinat_t_s2_d4", "kernel": "neighborhood", "B": B, "hw": 28, "heads": 4, "hd": 32, "ks": 7,
         "dil": 4},
        {"id": "na2d/nat_t_s3", "kernel": "neighborhood", "B": B, "hw": 14, "heads": 8, "hd": 32, "ks": 7, "dil": 1},
        {"id": "na2d/nat_t_s4", "kernel": "neighborhood", "B": B, "hw": 7, "heads": 16, "hd": 32, "ks": 7, "dil": 1},
        {"id": "routed/biformer_t_s1", "kernel": "routed", "B": B, "R": 49, "T": 64, "H": 2, "D": 32, "K": 1},
        {"id": "routed/biformer_t_s2", "kernel": "routed", "B": B, "R": 49, "T": 16, "H": 4, "D": 32, "K": 4},
        {"id": "routed/biformer_t_s3", "kernel": "routed", "B": B, "R": 49, "T": 4, "H": 8, "D": 32, "K": 16},
        {"id": "linear/flatten_swin_t_s1", "kernel": "linear", "B": B, "N": 3136, "M": 3136, "H": 3, "D": 32},
        {"id": "linear/flatten_swin_t_s2", "kernel": "linear", "B": B, "N": 784, "M": 784, "H": 6, "D": 32},
        {"id": "linear/flatten_pvt_t_s1", "kernel": "linear", "B": B, "N": 3136, "M": 3136, "H": 1, "D": 64},
    ]


def _speed_inputs(p: dict, dev: str, dtype):  # noqa: ANN001, ANN202
    """(our op's inputs, fn(impl), dense q/k/v [B, H, N, D], useful FLOPs, dense FLOPs, boolean mask builder)."""
    torch = _torch()
    from mixerzoo.kernels import _flops  # noqa: PLC0415

    g = torch.Generator(device=dev).manual_seed(0)
    kern = p["kernel"]
    if kern == "neighborhood":
        shape = (p["B"], p["hw"], p["hw"], p["heads"], p["hd"])
        q, k, v = (torch.randn(shape, device=dev, dtype=dtype, generator=g) for _ in range(3))
        rpb = torch.randn(p["heads"], 2 * p["ks"] - 1, 2 * p["ks"] - 1, device=dev, dtype=torch.float32, generator=g)
        flops = _flops.na2d_flops(shape, shape, p["ks"])

        def ours(impl, q=q, k=k, v=v):  # noqa: ANN001, ANN202
            from mixerzoo.kernels import neighborhood_attention_2d  # noqa: PLC0415

            return neighborhood_attention_2d(q, k, v, p["ks"], p["dil"], rpb=rpb, impl=impl)

        N, H, D, B = p["hw"] ** 2, p["heads"], p["hd"], p["B"]
        dense = [t.reshape(B, N, H, D).transpose(1, 2) for t in (q, k, v)]
        return [q, k, v], ours, dense, flops, {"rpb": rpb}
    if kern == "routed":
        B, R, T, H, D, K = p["B"], p["R"], p["T"], p["H"], p["D"], p["K"]
        q, k, v = (torch.randn(B, R, T, H, D, device=dev, dtype=dtype, generator=g) for _ in range(3))
        idx = torch.rand(B, 1, R, R, device=dev, generator=g).topk(K, dim=-1).indices
        flops = _flops.routed_flops(q.shape, v.shape, K)
        scale = (H * D) ** -0.5

        def ours(impl, q=q, k=k, v=v):  # noqa: ANN001, ANN202
            from mixerzoo.kernels import routed_attention  # noqa: PLC0415

            return routed_attention(q, k, v, idx, scale=scale, impl=impl)

        dense = [t.reshape(B, R * T, H, D).transpose(1, 2) for t in (q, k, v)]
        return [q, k, v], ours, dense, flops, {"idx": idx, "scale": scale}
    B, N, M, H, D = p["B"], p["N"], p["M"], p["H"], p["D"]
    q = torch.randn(B, N, H, D, device=dev, dtype=dtype, generator=g)
    k, v = (torch.randn(B, M, H, D, device=dev, dtype=dtype, generator=g) for _ in range(2))
    flops = _flops.linear_attention_flops(q.shape, k.shape, v.shape)

    def ours(impl, q=q, k=k, v=v):  # noqa: ANN001, ANN202
        from mixerzoo.kernels import linear_attention  # noqa: PLC0415

        return linear_attention(q, k, v, kernel="focused", impl=impl)

    dense = [t.transpose(1, 2) for t in (q, k, v)]
    return [q, k, v], ours, dense, flops, {}


def _na_masks(p: dict, dev: str):  # noqa: ANN202
    """NATTEN's neighbourhood as a dense boolean [N, N] mask and as a flex mask_mod (+ rpb score_mod)."""
    torch = _torch()
    from mixerzoo.kernels.neighborhood.common import axis_neighbors  # noqa: PLC0415

    L, ks, d = p["hw"], p["ks"], p["dil"]
    nbr, bidx = axis_neighbors(L, ks, d, dev)  # [L, ks]: key index / bias index per query along one axis
    allowed = torch.zeros(L, L, dtype=torch.bool, device=dev)
    allowed.scatter_(1, nbr, True)
    bias_of = torch.full((L, L), 0, dtype=torch.long, device=dev)
    bias_of.scatter_(1, nbr, bidx)
    dense = (allowed[:, None, :, None] & allowed[None, :, None, :]).reshape(L * L, L * L)

    def mask_mod(b, h, qi, ki):  # noqa: ANN001, ANN202
        return allowed[qi // L, ki // L] & allowed[qi % L, ki % L]

    def score_mod_for(rpb):  # noqa: ANN001, ANN202
        def score_mod(score, b, h, qi, ki):  # noqa: ANN001, ANN202
            return score + rpb[h, bias_of[qi // L, ki // L], bias_of[qi % L, ki % L]]

        return score_mod

    return dense, mask_mod, score_mod_for


def _routed_masks(p: dict, idx, dev: str):  # noqa: ANN001, ANN202
    torch = _torch()
    B, R, T = p["B"], p["R"], p["T"]
    route = torch.zeros(B, R, R, dtype=torch.bool, device=dev)
    route.scatter_(2, idx[:, 0], True)
    dense = route[:, :, None, :, None].expand(B, R, T, R, T).reshape(B, 1, R * T, R * T)

    def mask_mod(b, h, qi, ki):  # noqa: ANN001, ANN202
        return route[b, qi // T, ki // T]

    return dense, mask_mod


def _perf(rec: dict, ms: float, flops: float, nbytes: float) -> dict:
    rec.update(ms=ms, flops=flops, tflops=flops / ms / 1e9, bytes=nbytes, gbps=nbytes / ms / 1e6,
               frac_peak_bf16=flops / ms / 1e-3 / PEAK_BF16_FLOPS, frac_hbm=nbytes / ms / 1e-3 / PEAK_HBM_BYTES)
    return rec


def job_speed(frag: Fragment, dry: bool) -> None:
    torch = _torch()
    import torch.nn.functional as F  # noqa: PLC0415

    dev = "cpu" if dry else "cuda"
    dtype = torch.float32 if dry else torch.bfloat16
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: PLC0415
    except ImportError:  # pragma: no cover - old torch
        SDPBackend = sdpa_kernel = None  # noqa: N806
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention  # noqa: PLC0415
    except ImportError as err:  # pragma: no cover
        create_block_mask = flex_attention = None
        frag.data["info"]["flex"] = f"unavailable: {_fmt_err(err)}"
    try:
        import natten  # noqa: F401, PLC0415

        has_natten = True
        frag.data["info"]["natten"] = getattr(natten, "__version__", "?")
    except Exception:  # noqa: BLE001
        has_natten = False
        frag.data["info"]["natten"] = ("not importable: no NATTEN wheel is built for this torch/CUDA pair "
                                       "that could be carried (NATTEN ships source or per-torch builds)")
    frag.data["info"].update(dtype=str(dtype), peak_bf16_flops=PEAK_BF16_FLOPS, peak_hbm_bytes=PEAK_HBM_BYTES,
                             flops_note="useful FLOPs of the sparse op (dense SDPA rows: the dense count); "
                             "fwd+bwd = 3.5x fwd (2.5x for linear)",
                             bytes_note="fewest HBM bytes: q, k, v read + out written; fwd+bwd adds dO, out, q, k, v "
                             "read and dq, dk, dv written")
    flex_jobs: list[tuple[str, Callable[[], Any], float, float, dict]] = []
    max_s = 0.05 if dry else 0.12
    flex_reserve = 0.0 if dry or flex_attention is None else 22.0  # compiled Flex for the stage-1 shapes at least
    for p in _speed_problems(dry):
        if frag.left() - flex_reserve < 3:
            frag.skip(p["id"])
            continue
        try:
            ins, ours, dense, flops, extra = _speed_inputs(p, dev, dtype)
        except Exception as err:  # noqa: BLE001
            frag.add({"id": p["id"], "ok": False, "msg": _fmt_err(err)})
            continue
        io_bytes = sum(t.numel() * t.element_size() for t in ins) + ins[0].numel() * ins[0].element_size()
        bwd_factor = 2.5 if p["kernel"] == "linear" else 3.5
        Bd, Hd, N, Dd = dense[0].shape
        dense_flops = 4 * Bd * Hd * N * dense[2].shape[2] * Dd
        grads = [torch.randn_like(ins[0] if p["kernel"] != "linear" else ins[0]) for _ in range(1)]

        def fb(fn, xs, g=grads[0]):  # noqa: ANN001, ANN202
            xs = [x.detach().requires_grad_() for x in xs]

            def run():  # noqa: ANN202
                out = fn(*xs)
                return torch.autograd.grad(out, xs, g.reshape(out.shape) if g.numel() == out.numel()
                                           else torch.ones_like(out))

            return run

        cands: list[tuple[str, Callable[[], Any], Callable[[], Any] | None, float]] = []
        for impl in ("triton", "torch"):
            cands.append((impl, lambda impl=impl: ours(impl), fb(lambda q, k, v, impl=impl: ours(impl, q, k, v), ins),
                          flops))
        sdpa_fwd = lambda q, k, v: F.scaled_dot_product_attention(q, k, v)  # noqa: E731
        cands.append(("sdpa_dense", lambda: _sdpa(sdpa_kernel, SDPBackend, "flash", dev, sdpa_fwd, dense),
                      fb(lambda q, k, v: _sdpa(sdpa_kernel, SDPBackend, "flash", dev, sdpa_fwd, [q, k, v]), dense),
                      dense_flops))
        mask_mod = score_mod = None
        if p["kernel"] in ("neighborhood", "routed"):
            if p["kernel"] == "neighborhood":
                mask, mask_mod, smf = _na_masks(p, dev)
                score_mod = smf(extra["rpb"])
                bias = torch.zeros(mask.shape, device=dev, dtype=dtype).masked_fill(~mask, float("-inf"))
                B_mask = None
            else:
                mask, mask_mod = _routed_masks(p, extra["idx"], dev)
                bias = mask
                B_mask = p["B"]
            scale = extra.get("scale")
            masked = lambda q, k, v, bias=bias, scale=scale: F.scaled_dot_product_attention(  # noqa: E731
                q, k, v, attn_mask=bias, scale=scale)
            cands.append(("sdpa_masked", lambda masked=masked: _sdpa(sdpa_kernel, SDPBackend, "efficient", dev, masked,
                                                                      dense),
                          fb(lambda q, k, v, masked=masked: _sdpa(sdpa_kernel, SDPBackend, "efficient", dev, masked,
                                                                  [q, k, v]), dense), flops))
            if flex_attention is not None:
                flex_jobs.append((p["id"], mask_mod, score_mod, B_mask, {"dense": dense, "flops": flops,
                                                                          "io": io_bytes, "bwd": bwd_factor,
                                                                          "scale": scale, "fb": fb,
                                                                          "ours": ours}))
            if p["kernel"] == "neighborhood" and has_natten and not dry:
                cands.append(("natten", lambda: _natten(ins, p, extra), None, flops))
        try:
            explain_all(reset=True)
            with torch.no_grad():
                ours("auto")
            frag.data["info"].setdefault("auto_choice", {})[p["id"]] = explain_all(reset=True)
        except Exception as err:  # noqa: BLE001
            frag.data["info"].setdefault("auto_choice", {})[p["id"]] = {"error": _fmt_err(err)}
        for name, fwd, fwdbwd, fl in cands:
            for mode, fn in (("fwd", fwd), ("fwd+bwd", fwdbwd)):
                rid = f"{p['id']}/{name}/{mode}"
                if fn is None:
                    continue
                if frag.left() - flex_reserve < 2:
                    frag.skip(rid)
                    continue
                rec = {"id": rid, "problem": p, "impl": name, "pass": mode}
                try:
                    with torch.no_grad() if mode == "fwd" else contextlib.nullcontext():
                        ms = bench(fn, dev, max_s=max_s, min_reps=1 if dry else 3)
                    f = fl * (1 if mode == "fwd" else bwd_factor)
                    nb = io_bytes * (1 if mode == "fwd" else 3)
                    _perf(rec, ms, f, nb)
                except Exception as err:  # noqa: BLE001 - a baseline that cannot run is information; ours is a bug
                    rec.update(error=_fmt_err(err), ok=False if name == "triton" else None)
                frag.add(rec)
        if dev == "cuda":
            torch.cuda.empty_cache()
    # FlexAttention last: it compiles per shape (tens of seconds), so it takes whatever budget is left, the
    # stage-1 shapes first
    flex_jobs.sort(key=lambda j: (not j[0].endswith("_s1"), not j[0].startswith("na2d")))
    if not dry:
        import torch._dynamo  # noqa: PLC0415

        for knob in ("cache_size_limit", "recompile_limit"):  # one compile per shape and grad mode
            if hasattr(torch._dynamo.config, knob):
                setattr(torch._dynamo.config, knob, max(64, getattr(torch._dynamo.config, knob)))
    for pid, mask_mod, score_mod, B_mask, d in flex_jobs:
        for mode in ("fwd", "fwd+bwd"):
            rid = f"{pid}/flex/{mode}"
            if dry and mode != "fwd":
                frag.skip(rid, "CPU FlexAttention is inference-only")
                continue
            if frag.left() < (2 if dry else 15):
                frag.skip(rid)
                continue
            rec: dict[str, Any] = {"id": rid, "impl": "flex", "pass": mode, "compiled": not dry}
            try:
                q, _, _ = d["dense"]
                N = q.shape[2]
                bm = create_block_mask(mask_mod, B_mask, None, N, N, device=dev)
                fx = flex_attention if dry else _compiled_flex(flex_attention)
                call = lambda q, k, v, bm=bm, fx=fx: fx(q, k, v, score_mod=score_mod, block_mask=bm,  # noqa: E731
                                                      scale=d["scale"])
                if mode == "fwd":
                    with torch.no_grad():
                        ms = bench(lambda: call(*d["dense"]), dev, max_s=max_s, min_reps=1 if dry else 3)
                        ref = d["ours"]("auto").float()  # the block mask must express the same op
                        got = call(*d["dense"]).transpose(1, 2).reshape(ref.shape).float()
                        rec["max_abs_vs_ours"] = (got - ref).abs().max().item()
                else:
                    ms = bench(d["fb"](call, d["dense"]), dev, max_s=max_s)
                rec["block_sparsity"] = float(bm.sparsity()) if hasattr(bm, "sparsity") else None
                _perf(rec, ms, d["flops"] * (1 if mode == "fwd" else d["bwd"]), d["io"] * (1 if mode == "fwd" else 3))
            except Exception as err:  # noqa: BLE001
                rec.update(error=_fmt_err(err))
            frag.add(rec)
    frag.data["info"]["natten_timed"] = has_natten and not dry
    frag.data["info"]["fastest"] = fastest_table(frag.data["records"])
    frag.flush()


def fastest_table(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per problem and pass: the fastest implementation among those that compute the same sparse op (ours,
    masked SDPA, Flex, NATTEN; dense SDPA computes more and is listed apart) and triton's time over it — the
    numbers that decide what ``auto`` should pick on CUDA."""
    same_op = ("triton", "torch", "sdpa_masked", "flex", "natten")
    best: dict[str, dict[str, Any]] = {}
    for r in records:
        if "ms" not in r or r.get("impl") not in (*same_op, "sdpa_dense"):
            continue
        key = r["id"].rsplit("/", 2)[0] + "/" + r["pass"]
        row = best.setdefault(key, {"times_ms": {}})
        row["times_ms"][r["impl"]] = r["ms"]
    for row in best.values():
        t = {k: v for k, v in row["times_ms"].items() if k in same_op}
        if t:
            row["fastest"] = min(t, key=t.get)
            if "triton" in t:
                row["triton_over_fastest"] = t["triton"] / t[row["fastest"]]
        if "sdpa_dense" in row["times_ms"] and "triton" in t:
            row["triton_over_dense_sdpa"] = t["triton"] / row["times_ms"]["sdpa_dense"]
    return best


_FLEX: dict[str, Any] = {}


def _compiled_flex(flex_attention):  # noqa: ANN001, ANN202
    if "fn" not in _FLEX:
        _FLEX["fn"] = _torch().compile(flex_attention, dynamic=False)
    return _FLEX["fn"]


def _sdpa(sdpa_kernel, backends, which: str, dev: str, fn, qkv):  # noqa: ANN001, ANN202
    if dev != "cuda" or sdpa_kernel is None:
        return fn(*qkv)
    be = backends.FLASH_ATTENTION if which == "flash" else backends.EFFICIENT_ATTENTION
    with sdpa_kernel(be):
        return fn(*qkv)


def _natten(ins, p, extra):  # noqa: ANN001, ANN202
    import natten  # noqa: PLC0415

    q, k, v = ins
    return natten.na2d(q, k, v, kernel_size=p["ks"], dilation=p["dil"])


# ================================================================================================ job: models

BASELINES = ("timm:resnet50", "timm:swin_tiny_patch4_window7_224")
DRY_BASELINES = ("timm:resnet18",)  # the same path on the CPU, cheaper


def job_models(frag: Fragment, dry: bool) -> None:
    torch = _torch()
    import timm  # noqa: PLC0415
    from mixerzoo.zoo import list_families  # noqa: PLC0415

    dev = "cpu" if dry else "cuda"
    batch = 2 if dry else 64
    every = list_families()
    families = list(DRY_FAMILIES[:1]) if dry else [f for f in TRITON_FIRST if f in every] + [
        f for f in every if f not in TRITON_FIRST]
    names = [(f, n) for f in families for n in _models_for(f, dry)]
    order = [("timm", b) for b in (DRY_BASELINES if dry else BASELINES)] + names
    frag.data["info"].update(batch=batch, amp="bfloat16" if not dry else "none (CPU dry run: fp32)",
                             channels_last=list(CHANNELS_LAST_FAMILIES) + ["timm:resnet50"])
    for family, name in order:
        rid = f"{family}/{name}"
        if not frag.can_start(2 if dry else 8):
            frag.skip(rid)
            continue
        rec: dict[str, Any] = {"id": rid, "family": family, "model": name, "batch": batch}
        t0 = time.monotonic()
        try:
            torch.manual_seed(0)
            if name.startswith("timm:"):
                tname = name[5:]
                model = timm.create_model(tname, num_classes=10 if dry else 1000).to(dev)
                size = DRY_IMG if dry else 224
                cl = "resnet" in tname
            else:
                model, size = _make_model(name, dev, dry)
                cl = family in CHANNELS_LAST_FAMILIES
            mf = torch.channels_last if cl else torch.contiguous_format
            model = model.to(memory_format=mf)
            x = torch.randn(batch, 3, size, size, device=dev).contiguous(memory_format=mf)
            y = torch.randint(0, 1000 if not dry else 10, (batch,), device=dev) % _num_classes(model)
            rec.update(img_size=size, channels_last=cl, params_m=sum(p.numel() for p in model.parameters()) / 1e6)
            def autocast():  # noqa: ANN202 - bf16 on the GPU; the CPU dry run stays fp32
                return torch.autocast(dev, dtype=torch.bfloat16) if not dry else contextlib.nullcontext()

            def infer():  # noqa: ANN202
                with torch.no_grad(), autocast():
                    return model(x)

            model.eval()
            explain_all(reset=True)
            if dev == "cuda":
                torch.cuda.reset_peak_memory_stats()
            ms = bench(infer, dev, max_s=0.4 if not dry else 0.05, min_reps=3 if not dry else 1, max_reps=15)
            rec["infer_img_s"] = batch / ms * 1e3
            rec["infer_ms"] = ms
            if dev == "cuda":
                rec["infer_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
            rec["explain"] = explain_all(reset=True)
            model.train()
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4, **({"fused": True} if dev == "cuda" else {}))

            def step():  # noqa: ANN202
                opt.zero_grad(set_to_none=True)
                with autocast():
                    loss = torch.nn.functional.cross_entropy(model(x).float(), y)
                loss.backward()
                opt.step()
                return loss

            if dev == "cuda":
                torch.cuda.reset_peak_memory_stats()
            ms = bench(step, dev, max_s=0.8 if not dry else 0.05, min_reps=3 if not dry else 1, max_reps=10)
            rec["train_img_s"] = batch / ms * 1e3
            rec["train_ms"] = ms
            if dev == "cuda":
                rec["train_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
            del model, opt
        except Exception as err:  # noqa: BLE001
            rec.update(ok=False, msg=_fmt_err(err), traceback=traceback.format_exc()[-2000:])
        rec["seconds"] = round(time.monotonic() - t0, 2)
        frag.add(rec)
        if dev == "cuda":
            torch.cuda.empty_cache()


def _num_classes(model) -> int:  # noqa: ANN001
    return int(getattr(model, "num_classes", 1000) or 1000)


# ================================================================================================ job: train


def _tiny_digits_folder(root: Path, per_class: int = 8) -> Path:
    """A small ImageFolder cut from the bundled digits (the dry run's epoch must take seconds)."""
    import numpy as np  # noqa: PLC0415
    from PIL import Image  # noqa: PLC0415
    from sklearn.datasets import load_digits  # noqa: PLC0415

    d = load_digits()
    counts: dict[int, int] = {}
    for img, t in zip(d.images, d.target):
        if counts.get(int(t), 0) >= per_class:
            continue
        counts[int(t)] = counts.get(int(t), 0) + 1
        folder = root / str(int(t))
        folder.mkdir(parents=True, exist_ok=True)
        arr = np.clip(img * (255.0 / 16.0), 0, 255).astype(np.uint8)
        Image.fromarray(arr).convert("RGB").save(folder / f"{counts[int(t)]}.png")
    return root


def job_train(frag: Fragment, dry: bool, tmp: Path) -> None:
    from mixerzoo.cli import main  # noqa: PLC0415

    out = tmp / "train-run"
    if dry:
        data = str(_tiny_digits_folder(tmp / "digits-tiny"))
        argv = ["train", "--model", "test_poolformer", "--data", data, "--img-size", "32", "--batch-size", "16",
                "--device", "cpu", "--workers", "0"]
    else:
        argv = ["train", "--model", "nat_mini", "--data", "digits", "--img-size", "112", "--batch-size", "64",
                "--device", "cuda", "--amp", "bf16", "--workers", "6"]
    argv += ["--epochs", "1", "--warmup-epochs", "0", "--output", str(out), "--overwrite", "--no-save-model",
             "--quiet"]
    frag.data["info"]["argv"] = ["mixerzoo", *argv]
    frag.flush()
    t0 = time.monotonic()
    explain_all(reset=True)
    try:
        rc = main(argv)
    except SystemExit as err:
        rc = int(err.code or 0) if isinstance(err.code, int) else 2
    rec: dict[str, Any] = {"id": "train/" + argv[2], "rc": rc, "seconds": round(time.monotonic() - t0, 1),
                           "explain": explain_all(reset=True)}
    metrics = out / "metrics.jsonl"
    if metrics.exists():
        epochs = [json.loads(ln) for ln in metrics.read_text().splitlines() if '"event": "epoch"' in ln]
        if epochs:
            rec["epoch"] = {k: epochs[-1].get(k) for k in ("train_loss", "val_top1", "img_per_s", "epoch_seconds")}
    loss = (rec.get("epoch") or {}).get("train_loss")
    rec["ok"] = rc == 0 and loss is not None and math.isfinite(loss)
    rec["msg"] = "" if rec["ok"] else f"rc={rc}, epoch record {rec.get('epoch')}"
    frag.add(rec)


# ================================================================================================ child entry


def cuda_healthy() -> bool:
    """False once a kernel fault (illegal address, launch failure) has poisoned this process's CUDA context."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return True
    try:
        torch.cuda.synchronize()
        torch.zeros(1, device="cuda").add_(1).item()
    except Exception:  # noqa: BLE001
        return False
    return True


def run_job(job: str, dry: bool, tmp: Path, budget: float, deadline: float | None = None, reserve: float = 0.0) -> int:
    frag = Fragment(tmp / f"{job}.json", job, budget, deadline=deadline, reserve=reserve)
    try:
        if frag.budget < 1 and job != "env":
            frag.skip(job, "whole-run budget exhausted")
        elif job == "env":
            job_env(frag, dry)
        elif job.startswith("kernels."):
            job_kernels(frag, dry, job.split(".", 1)[1])
        elif job == "families":
            job_families(frag, dry)
        elif job == "speed":
            job_speed(frag, dry)
        elif job == "models":
            job_models(frag, dry)
        elif job == "train":
            job_train(frag, dry, tmp)
        elif job == "sanitizer":
            job_sanitizer(frag, dry, tmp)
        elif job == "sanitize-cases":
            job_sanitize_cases(frag, dry)
        elif job == "_crash":  # self-tests of the driver: a job whose process dies, and one that passes
            os._exit(3)
        elif job == "_noop":
            frag.add({"id": "noop", "ok": True})
        else:
            raise ValueError(f"--job {job!r} is not a job")
    except Exception as err:  # noqa: BLE001 - recorded; the driver decides the part's status
        frag.data["error"] = _fmt_err(err)
        frag.data["traceback"] = traceback.format_exc()[-3000:]
        log(f"{job}: ERROR {frag.data['error']}")
    frag.data["done"] = True
    frag.flush()
    bad = any(r.get("ok") is False for r in frag.data["records"])
    return 1 if frag.data["error"] or bad else 0


# ================================================================================================ driver


def _read_fragment(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _part_status(frag: dict[str, Any], timed_out: bool) -> str:
    """A job's status from its fragment: fail = a record failed; error = the job raised or its process died;
    timeout = its process was killed at the deadline before it finished."""
    recs = frag.get("records", [])
    if not frag.get("done", False):
        return "timeout" if timed_out else "error"
    if frag.get("error"):
        return "error"
    if any(r.get("ok") is False for r in recs):
        return "fail"
    if recs and all(r.get("skipped") for r in recs):
        return "skipped"
    return "ok"


def _kernel_jobs() -> list[str]:
    base = ROOT / "mixerzoo" / "kernels"
    return [f"kernels.{p.name}" for p in sorted(base.iterdir())
            if p.is_dir() and (p / "triton.py").exists() and not p.name.startswith("_")]


def plan(dry: bool, only: list[str] | None) -> list[tuple[str, float]]:
    """The jobs to run, with budgets; kernel jobs are discovered from the source tree."""
    budgets = {name: (d if dry else g) for name, g, d in JOBS}
    jobs: list[tuple[str, float]] = []
    for name, _, _ in JOBS:
        if name.startswith("kernels."):
            if name != "kernels.neighborhood":
                continue
            for kj in _kernel_jobs():
                jobs.append((kj, budgets.get(kj, budgets["kernels.routed"])))
            continue
        jobs.append((name, budgets[name]))
    if only:  # env always runs: it names the device and the versions
        jobs = [(n, b) for n, b in jobs if n == "env" or any(n == o or n.startswith(o + ".") for o in only)]
    return jobs


def _child_env(dry: bool) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.pop("MIXERZOO_KERNEL_IMPL", None)
    if dry:
        env["TRITON_INTERPRET"] = "1"
        env.setdefault("CUDA_VISIBLE_DEVICES", "")
    return env


def _spawn(jobs: list[tuple[str, float]], dry: bool, tmp: Path, timeout: float, logf) -> tuple[int | None, bool]:  # noqa: ANN001
    """Run ``jobs`` in one child process, echoing its output (unbuffered, also to ``logf``); kill its whole
    process group at ``timeout``. Returns (exit status or None when killed, timed out)."""
    import selectors  # noqa: PLC0415

    cmd = [sys.executable, "-u", str(Path(__file__).resolve()), "--tmp", str(tmp),
           "--job", ",".join(j for j, _ in jobs), "--budget", ",".join(f"{b:.1f}" for _, b in jobs),
           "--deadline", f"{time.time() + timeout - GRACE_S:.1f}"]
    if dry:
        cmd.append("--dry-run")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=_child_env(dry),
                            cwd=str(ROOT), start_new_session=True)
    fd = proc.stdout.fileno()
    sel = selectors.DefaultSelector()
    sel.register(fd, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    exited_at = None
    timed_out = False
    while True:
        now = time.monotonic()
        if now >= deadline:
            timed_out = proc.poll() is None
            break
        if exited_at is None and proc.poll() is not None:
            exited_at = now
        if exited_at is not None and now - exited_at > 3:  # a grandchild holds the pipe: stop reading
            break
        if sel.select(timeout=0.5):
            chunk = os.read(fd, 65536)  # whatever is there: partial lines never block the pump
            if not chunk:
                break
            text = chunk.decode("utf-8", "replace")
            sys.stdout.write(text)
            sys.stdout.flush()
            logf.write(text)
            logf.flush()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, 9)  # the child's whole group: compute-sanitizer, data-loader workers, ...
    proc.wait()
    proc.stdout.close()
    return (None if timed_out else proc.returncode), timed_out


def _groups(jobs: list[tuple[str, float]], dry: bool) -> list[list[str]]:
    """Which jobs share a child process. Dry run: one child (interpreter start-up is the cost). GPU: env with the
    kernel jobs, then one child per job (a CUDA fault poisons its context; a child that dies or is killed hands
    its remaining jobs to a fresh one)."""
    names = [n for n, _ in jobs]
    if dry:
        return [names]
    first = [n for n in names if n == "env" or n.startswith("kernels.")]
    return ([first] if first else []) + [[n] for n in names if n not in first]


def drive(out_dir: Path, dry: bool, total_budget: float, only: list[str] | None,
          jobs: list[tuple[str, float]] | None = None) -> dict[str, Any]:
    """Run ``jobs`` (default: :func:`plan`) in child processes within ``total_budget`` seconds; write the report."""
    out_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    started = _now()
    tmp = Path(tempfile.mkdtemp(prefix="mixerzoo-devcheck-"))
    jobs = jobs if jobs is not None else plan(dry, only)
    budgets = dict(jobs)
    log(f"{'dry run (CPU, TRITON_INTERPRET=1)' if dry else 'GPU run'}: {len(jobs)} jobs, budget {total_budget:.0f}s, "
        f"report -> {out_dir}")
    parts: dict[str, Any] = {}
    pending = [n for n, _ in jobs]
    queue = _groups(jobs, dry)
    with open(out_dir / "device-check.log", "w") as logf:
        while pending:
            group = [n for n in (queue.pop(0) if queue else pending) if n in pending]
            if not group:
                continue
            left = total_budget - (time.monotonic() - t_start)
            later = 5.0 * sum(1 for n in pending if n not in group)  # keep a few seconds for every later job
            want = sum(budgets[n] for n in group)
            if left - later < 5:
                for n in group:
                    parts[n] = {"status": "skipped", "budget_s": 0.0, "wall_s": 0.0, "records": [], "info": {},
                                "error": "whole-run budget exhausted"}
                    pending.remove(n)
                continue
            scale = min(1.0, (left - later) / want)
            plan_g = [(n, budgets[n] * scale) for n in group]
            log(f"start {', '.join(group)} (budget {want * scale:.0f}s)")
            t0 = time.monotonic()
            rc, timed_out = _spawn(plan_g, dry, tmp, want * scale + GRACE_S, logf)
            wall = time.monotonic() - t0
            seen = False
            for n, b in plan_g:
                frag = _read_fragment(tmp / f"{n}.json")
                if not frag:  # never started: an earlier job of this child took it down; it gets a fresh child
                    continue
                seen = True
                why = None if frag.get("done") else f"child {'timed out' if timed_out else f'exited rc={rc}'} here"
                parts[n] = {"status": _part_status(frag, timed_out), "budget_s": round(b, 1),
                            "wall_s": float(frag.get("wall_s", round(wall, 1))), "records": frag.get("records", []),
                            "info": frag.get("info", {}), "error": frag.get("error") or why}
                if frag.get("traceback"):
                    parts[n]["traceback"] = frag["traceback"]
                pending.remove(n)
            if not seen:  # the child died before its first job wrote anything: charge that job
                n, b = plan_g[0]
                parts[n] = {"status": "timeout" if timed_out else "error", "budget_s": round(b, 1),
                            "wall_s": round(wall, 1), "records": [], "info": {},
                            "error": f"child {'timed out' if timed_out else f'exited rc={rc}'} before writing"}
                pending.remove(n)
            rest = [n for n in group if n in pending]
            if rest:
                log(f"child ended early; {', '.join(rest)} get a fresh process")
                queue.insert(0, rest)
    report = build_report(parts, dry, started, time.monotonic() - t_start, total_budget)
    (out_dir / "device-report.json").write_text(json.dumps(report, indent=1, default=str))
    (out_dir / "device-report.md").write_text(render_markdown(report))
    shutil.rmtree(tmp, ignore_errors=True)
    md = render_markdown(report)
    print("\n" + md[: md.find("\n## ", md.find("| part |"))].strip() + "\n", flush=True)  # the overview table
    log(f"done in {report['wall_s']:.0f}s: {report['summary']['counts']} -> {out_dir / 'device-report.json'}")
    return report


def build_report(parts: dict[str, Any], dry: bool, started: str, wall: float, budget: float) -> dict[str, Any]:
    env = parts.get("env", {})
    info = env.get("info", {})
    device = DRY_DEVICE if dry else str(info.get("gpu") or "cuda (unknown: env job failed)")
    order = [n for n, _ in plan(dry, None)]
    parts = {k: parts[k] for k in sorted(parts, key=lambda k: order.index(k) if k in order else 99)}
    counts = {s: sum(1 for p in parts.values() if p["status"] == s) for s in PART_STATUSES}
    failed = [f"{name}:{r['id']}" for name, p in parts.items() for r in p["records"] if r.get("ok") is False]
    failed += [f"{name}:{p['status']}" for name, p in parts.items() if p["status"] in ("error", "timeout")]
    return {
        "schema": SCHEMA_VERSION,
        "device": device,
        "dry_run": dry,
        "started": started,
        "wall_s": round(wall, 1),
        "budget_s": budget,
        "env": info,
        "parts": parts,
        "summary": {"ok": not failed and counts["ok"] > 0, "counts": counts, "failed": failed},
    }


REQUIRED_TOP = {"schema": int, "device": str, "dry_run": bool, "started": str, "wall_s": float, "budget_s": float,
                "env": dict, "parts": dict, "summary": dict}
REQUIRED_PART = {"status": str, "budget_s": float, "wall_s": float, "records": list, "info": dict}


def validate_report(report: dict[str, Any]) -> list[str]:
    """Schema problems of a report (empty list = valid)."""
    errs = []
    for key, typ in REQUIRED_TOP.items():
        if key not in report:
            errs.append(f"missing top-level key {key!r}")
        elif not isinstance(report[key], typ) and not (typ is float and isinstance(report[key], int)):
            errs.append(f"{key!r} is {type(report[key]).__name__}, expected {typ.__name__}")
    for name, part in report.get("parts", {}).items():
        for key, typ in REQUIRED_PART.items():
            if key not in part:
                errs.append(f"part {name!r}: missing {key!r}")
            elif not isinstance(part[key], typ) and not (typ is float and isinstance(part[key], int)):
                errs.append(f"part {name!r}: {key!r} is {type(part[key]).__name__}")
        if part.get("status") not in PART_STATUSES:
            errs.append(f"part {name!r}: status {part.get('status')!r} not in {PART_STATUSES}")
        for rec in part.get("records", []):
            if not isinstance(rec.get("id"), str) or rec.get("ok") not in (True, False, None):
                errs.append(f"part {name!r}: record without a string id and ok in (true, false, null): {rec}")
                break
    summ = report.get("summary", {})
    for key in ("ok", "counts", "failed"):
        if key not in summ:
            errs.append(f"summary: missing {key!r}")
    return errs


def _fnum(x: Any, fmt: str = ".3g") -> str:
    return "—" if x is None else format(x, fmt) if isinstance(x, (int, float)) else str(x)


def render_markdown(r: dict[str, Any]) -> str:
    env = r["env"]
    lines = [
        f"# mixerzoo device check — {r['device']}",
        "",
        f"{r['started']}, {r['wall_s']:.0f} s of a {r['budget_s']:.0f} s budget. torch {env.get('torch')}, "
        f"triton {env.get('triton')}, timm {env.get('timm')}, CUDA {env.get('cuda_runtime')}"
        + (f", capability {env['capability']}, {env.get('gpu_memory_gib')} GiB" if env.get("capability") else "") + ".",
        "",
        f"**Overall: {'OK' if r['summary']['ok'] else 'NOT OK'}** — parts {r['summary']['counts']}",
        "",
        "| part | status | wall s | budget s | records (ok / fail / info) | note |",
        "|---|---|---|---|---|---|",
    ]
    for name, p in r["parts"].items():
        recs = p["records"]
        n_ok = sum(1 for x in recs if x.get("ok") is True)
        n_bad = sum(1 for x in recs if x.get("ok") is False)
        note = (p.get("error") or "")[:120].replace("|", "/")
        lines.append(f"| {name} | {p['status']} | {p['wall_s']:.0f} | {p['budget_s']:.0f} | {n_ok} / {n_bad} / "
                     f"{len(recs) - n_ok - n_bad} | {note} |")
    if r["summary"]["failed"]:
        lines += ["", "## Failed", ""] + [f"- `{f}`" for f in r["summary"]["failed"][:60]]
    for name, p in r["parts"].items():
        if name.startswith("kernels."):
            lines += ["", f"## {name}", "", "| case | ok | out | grads | reproducible | s |", "|---|---|---|---|---|---|"]
            for x in p["records"]:
                errs = x.get("errors") or {}
                g = ", ".join(f"{k} {_fnum(v)}" for k, v in errs.items() if k != "out")
                lines.append(f"| {x['id']} | {x.get('ok')} | {_fnum(errs.get('out'))} | {g} | "
                             f"{x.get('bitwise_reproducible', '—')} | {_fnum(x.get('seconds'))} |")
    fam = r["parts"].get("families")
    if fam:
        lines += ["", "## Families (triton vs torch kernels, rel-RMSE)", "",
                  "| model | ok | fp32 logits | bf16 logits | worst grad | auto chose |", "|---|---|---|---|---|---|"]
        for x in fam["records"]:
            c = x.get("compare", {})
            grads = [v for d in c.values() for k, v in d.items() if k.startswith("grad:") and v is not None]
            auto = "; ".join(x.get("explain_auto", {}).values())[:160].replace("|", "/")
            lines.append(f"| {x['id']} | {x.get('ok')} | {_fnum(c.get('float32', {}).get('logits'))} | "
                         f"{_fnum(c.get('bfloat16', {}).get('logits'))} | {_fnum(max(grads) if grads else None)} | "
                         f"{auto} |")
    sp = r["parts"].get("speed")
    if sp:
        lines += ["", "## Kernel speed", "", "| problem / impl / pass | ms | TFLOP/s | GB/s | % bf16 peak | % HBM |",
                  "|---|---|---|---|---|---|"]
        for x in sp["records"]:
            if "ms" in x:
                lines.append(f"| {x['id']} | {_fnum(x['ms'])} | {_fnum(x['tflops'])} | {_fnum(x['gbps'], '.4g')} | "
                             f"{_fnum(100 * x['frac_peak_bf16'], '.2f')} | {_fnum(100 * x['frac_hbm'], '.2f')} |")
            else:
                lines.append(f"| {x['id']} | {x.get('error') or x.get('skipped') or x.get('msg')} | | | | |")
    if sp and sp["info"].get("fastest"):
        lines += ["", "### Fastest implementation of the same op (what `auto` should pick on CUDA)", "",
                  "| problem / pass | fastest | triton / fastest | triton / dense SDPA |", "|---|---|---|---|"]
        for key, row in sp["info"]["fastest"].items():
            lines.append(f"| {key} | {row.get('fastest', '—')} | {_fnum(row.get('triton_over_fastest'))} | "
                         f"{_fnum(row.get('triton_over_dense_sdpa'))} |")
    mo = r["parts"].get("models")
    if mo:
        lines += ["", "## Models", "", "| model | batch | img | train img/s | infer img/s | train peak MiB | note |",
                  "|---|---|---|---|---|---|---|"]
        for x in mo["records"]:
            lines.append(f"| {x['id']} | {x.get('batch')} | {x.get('img_size')} | {_fnum(x.get('train_img_s'), '.4g')} "
                         f"| {_fnum(x.get('infer_img_s'), '.4g')} | {_fnum(x.get('train_peak_mib'), '.5g')} | "
                         f"{x.get('msg') or x.get('skipped') or ''} |")
    tr = r["parts"].get("train")
    if tr:
        for x in tr["records"]:
            lines += ["", "## Train epoch", "", f"`{' '.join(tr['info'].get('argv', []))}`: rc {x.get('rc')}, "
                      f"{x.get('seconds')} s, epoch {x.get('epoch')}"]
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", nargs="?", default=None, help="report folder (default: $OUT, else ./device-check-out)")
    ap.add_argument("--out", dest="out_opt", default=None, help="report folder (same as the positional argument)")
    ap.add_argument("--dry-run", action="store_true", help="CPU: TRITON_INTERPRET=1, tiny shapes, one family each")
    ap.add_argument("--budget", default=None, help="whole-run seconds (default 345 on the GPU, 90 dry)")
    ap.add_argument("--only", default=None, help="comma-separated jobs (env, kernels, kernels.routed, speed, ...)")
    ap.add_argument("--job", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--tmp", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--deadline", type=float, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.job:  # child: run the listed jobs in order, each with its own budget
        tmp = Path(args.tmp or tempfile.mkdtemp())
        names = args.job.split(",")
        budgets = [float(b) for b in (args.budget or "60").split(",")]
        budgets += [budgets[-1]] * (len(names) - len(budgets))
        if names == ["_hang"]:  # self-test of the driver's timeout: a partial line, then nothing
            print("hanging without a newline", end="", flush=True)
            time.sleep(3600)
        rc = 0
        t0 = time.monotonic()
        if not all(n.startswith("_") for n in names):
            import torch  # noqa: F401, PLC0415 - start-up (imports, registries) is not charged to the first job

            import mixerzoo.zoo  # noqa: F401, PLC0415

        log(f"child ready in {time.monotonic() - t0:.1f}s: {', '.join(names)}")
        for i, (name, b) in enumerate(zip(names, budgets)):
            rc |= run_job(name, args.dry_run, tmp, b, args.deadline, reserve=3.0 * (len(names) - i - 1))
            if not cuda_healthy():  # the remaining jobs get a fresh process from the driver
                log(f"{name}: CUDA context broken; this child stops here")
                sys.stdout.flush()
                os._exit(70)
        return rc
    out = Path(args.out_opt or args.out or os.environ.get("OUT") or "device-check-out")
    try:
        budget = float(args.budget) if args.budget else (90.0 if args.dry_run else 345.0)
    except ValueError:
        print(f"device_check: error: --budget must be a number of seconds, got {args.budget!r}", file=sys.stderr)
        return 2
    only = args.only.split(",") if args.only else None
    if not args.dry_run and os.environ.get("TRITON_INTERPRET") == "1":
        print("device_check: error: TRITON_INTERPRET=1 is set; use --dry-run for the CPU run", file=sys.stderr)
        return 2
    report = drive(out, args.dry_run, budget, only)
    problems = validate_report(report)
    if problems:
        log(f"report schema problems: {problems}")
        return 3
    return 0 if report["summary"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
