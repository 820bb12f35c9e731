"""Measure models: parameters, GMACs (multiply-accumulates), throughput, latency and peak memory.

* GMACs: ``torch.utils.flop_counter.FlopCounterMode`` at batch 1, on the ``meta`` device when the model
  allows it (no memory, no compute), else on CPU. The kernels' sparse attention ops are charged what they
  compute (``mixerzoo.kernels._flops``); ``torchvision::deform_conv2d`` is charged as the equivalent
  convolution. FLOPs / 2 = MACs, the unit the papers call "FLOPs".
* Speed: warm-up, then ``runs`` timed runs of ``iters`` steps each, alternating model and yardstick
  (timm's ``resnet50``, same batch/size/dtype/mode) so that load on a shared machine hits both alike;
  the medians give latency, throughput and the throughput ratio to the yardstick.
* MFU (``mfu=True``): the achieved FLOP/s (forward FLOPs per image x images/s, x3 for a training step)
  over a square GEMM of the same dtype timed in alternation with the model (``mixerzoo.bench.mfu``).
* Breakdown (``breakdown=True``): one profiled step after the timed ones, its self time bucketed by op type
  (``mixerzoo.bench.breakdown``).
* Memory: CUDA ``max_memory_allocated`` around one step; on CPU the peak RSS of a child process over one
  step (Linux ``/proc/self/clear_refs`` resets the high-water mark after a warm-up step), minus the
  child's RSS before the model was built (so: weights + activations + workspace).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import logging
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from mixerzoo.bench import mfu as _mfu
from mixerzoo.kernels import _flops

__all__ = [
    "DTYPES",
    "YARDSTICK",
    "BenchConfig",
    "BenchResult",
    "Profile",
    "bench_models",
    "build_model",
    "count_flops",
    "count_params",
    "default_img_size",
    "expand_models",
    "flop_counter",
    "profile_model",
]

_log = logging.getLogger("mixerzoo.bench")

YARDSTICK = "timm:resnet50"
TIMM_PREFIX = "timm:"
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16", "float": "float32"}


# ----------------------------------------------------------------------------------------- models
def expand_models(patterns: Sequence[str], *, include_test: bool = False) -> list[str]:
    """Model names (registry order, de-duplicated) for names/fnmatch patterns; ``timm:<name>`` passes
    through. A pattern matching nothing raises ``ValueError`` naming it. No pattern = every model."""
    import mixerzoo  # noqa: PLC0415 - registers the zoo

    if not patterns:
        return mixerzoo.list_models(include_test=include_test)
    out: list[str] = []
    for pat in patterns:
        if pat.startswith(TIMM_PREFIX):
            import timm  # noqa: PLC0415

            names = [TIMM_PREFIX + n for n in timm.list_models(pat[len(TIMM_PREFIX) :])]
        else:
            tests = include_test or not _is_pattern(pat) or pat.startswith("test_")  # hidden tiny variants by name
            names = mixerzoo.list_models(pat, include_test=tests)
        if not names:
            import difflib  # noqa: PLC0415

            close = difflib.get_close_matches(pat, mixerzoo.list_models(include_test=True), n=3, cutoff=0.5)
            hint = f"; close: {', '.join(close)}" if close else ""
            raise ValueError(f"model pattern {pat!r} matches no model{hint} (see mixerzoo.list_models())")
        out.extend(n for n in names if n not in out)
    return out


def _is_pattern(s: str) -> bool:
    return any(c in s for c in "*?[")


def _split(name: str) -> tuple[bool, str]:
    return (True, name[len(TIMM_PREFIX) :]) if name.startswith(TIMM_PREFIX) else (False, name)


def build_model(name: str, **kwargs: Any) -> torch.nn.Module:
    """``mixerzoo.create_model(name)``, or ``timm.create_model`` for ``timm:<name>``."""
    is_timm, arch = _split(name)
    if is_timm:
        import timm  # noqa: PLC0415

        return timm.create_model(arch, **kwargs)
    import mixerzoo  # noqa: PLC0415

    return mixerzoo.create_model(arch, **kwargs)


def default_img_size(name: str) -> int:
    """The square input size of the model's default pretrained cfg (224 if it has none)."""
    is_timm, arch = _split(name)
    try:
        if is_timm:
            import timm  # noqa: PLC0415

            cfg = timm.models.get_pretrained_cfg(arch)
        else:
            import timm  # noqa: PLC0415

            cfg = timm.models.get_pretrained_cfg("mz_" + arch)
        size = cfg.input_size if cfg is not None else None
    except Exception:  # noqa: BLE001 - a missing cfg means "use 224"
        size = None
    return int(size[-1]) if size else 224


# -------------------------------------------------------------------------------------- counting
def count_params(model: torch.nn.Module) -> int:
    """Number of parameters (shared parameters once)."""
    return sum(p.numel() for p in model.parameters())


def _deform_conv2d_flops(x, weight, offset, mask, bias, *args: Any, out_shape=None, **kw: Any) -> int:  # noqa: ANN001
    # torchvision::deform_conv2d(input, weight, offset, mask, bias, stride_h, ...): MACs of the equivalent
    # convolution (out_numel * Cin/groups * kh * kw); the bilinear sampling is not counted (LITv2's counter).
    cin_g, kh, kw = weight[1], weight[2], weight[3]
    return 2 * math.prod(out_shape) * cin_g * kh * kw


def _sdpa_cpu_flops(q, k, v, *args: Any, out_shape=None, **kwargs: Any) -> int:  # noqa: ANN001
    from torch.utils.flop_counter import sdpa_flop_count  # noqa: PLC0415

    return sdpa_flop_count(q, k, v)


def _sdpa_cpu_backward_flops(grad_out, q, k, v, *args: Any, out_shape=None, **kwargs: Any) -> int:  # noqa: ANN001
    from torch.utils.flop_counter import sdpa_backward_flop_count  # noqa: PLC0415

    return sdpa_backward_flop_count(grad_out, q, k, v)


def _mkldnn_linear_flops(x, *args: Any, out_shape=None, **kw: Any) -> int:  # noqa: ANN001
    # mkldnn::_linear_pointwise(X, W, B, attr, ...) and .binary(X, other, W, B, ...): fused linear + pointwise
    return 2 * math.prod(out_shape) * x[-1]


def _mkldnn_conv_flops(x, a1, a2, *args: Any, out_shape=None, **kw: Any) -> int:  # noqa: ANN001
    # mkldnn::_convolution_pointwise(X, W, ...) and .binary(X, other, W, ...): fused conv + pointwise
    weight = a2 if tuple(a1) == tuple(out_shape) else a1
    return 2 * math.prod(out_shape) * math.prod(weight[1:])


def _custom_mapping() -> dict[Any, Callable[..., int]]:
    from torch.utils.flop_counter import flop_registry  # noqa: PLC0415

    mapping: dict[Any, Callable[..., int]] = {}
    # torch 2.14 has no formula for the CPU flash SDPA kernels (they would count 0 on CPU tensors)
    for name, fn in (
        ("_scaled_dot_product_flash_attention_for_cpu", _sdpa_cpu_flops),
        ("_scaled_dot_product_flash_attention_for_cpu_backward", _sdpa_cpu_backward_flops),
    ):
        packet = getattr(torch.ops.aten, name, None)
        if packet is not None and packet not in flop_registry:
            mapping[packet] = fn
    # the families' fused CPU inference paths (oneDNN linear/conv + activation)
    for name, fn in (("_linear_pointwise", _mkldnn_linear_flops), ("_convolution_pointwise", _mkldnn_conv_flops)):
        packet = getattr(torch.ops.mkldnn, name, None) if hasattr(torch.ops, "mkldnn") else None
        if packet is not None and packet not in flop_registry:
            mapping[packet] = fn
    try:
        import torchvision  # noqa: F401, PLC0415 - registers torch.ops.torchvision

        mapping[torch.ops.torchvision.deform_conv2d] = _deform_conv2d_flops
    except Exception:  # noqa: BLE001 - no torchvision: nothing to add
        pass
    return mapping


def _load_kernel_ops() -> None:
    """Define the kernels' torch.library ops now: a counter snapshots the formula registry when it is built,
    so an op first defined during the counted forward (lazy import) would be counted as 0."""
    import importlib  # noqa: PLC0415

    for mod in ("mixerzoo.kernels.neighborhood.triton",):  # defines mixerzoo::na2d_*, imports no triton
        try:
            importlib.import_module(mod)
        except ImportError:
            pass


def flop_counter() -> FlopCounterMode:
    """A ``FlopCounterMode`` (no display) that knows the kernels' and torchvision's extra ops."""
    _load_kernel_ops()
    _flops.register_kernel_formulas()
    return FlopCounterMode(display=False, custom_mapping=_custom_mapping())


def count_flops(
    model: torch.nn.Module, input_size: Sequence[int], *, device: Any = "meta", dtype: torch.dtype = torch.float32,
    train: bool = False,
) -> int:
    """Forward FLOPs (2 per MAC) of ``model`` on one input of ``input_size`` (``(B, C, H, W)``); with
    ``train=True`` forward + backward of ``output.sum()``."""
    x = torch.zeros(tuple(input_size), device=device, dtype=dtype) if str(device) != "meta" else torch.empty(
        tuple(input_size), device="meta", dtype=dtype
    )
    counter = flop_counter()
    grad = torch.enable_grad() if train else torch.no_grad()
    with grad, counter:
        out = model(x)
        if train:
            out = out[0] if isinstance(out, (tuple, list)) else out
            out.float().sum().backward()
    return int(counter.get_total_flops())


class _NoInitMode(TorchDispatchMode):
    """Skips in-place ops on meta tensors (random weight init), whose slow meta kernels dominate building a
    large model on ``meta``; in-place ops never change shapes, so the model's structure is unaffected."""

    _KEEP = frozenset({"resize_", "set_", "as_strided_", "resize_as_", "squeeze_", "unsqueeze_", "transpose_", "t_"})

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        name = func._overloadpacket.__name__
        first = args[0] if args else None
        if (
            name.endswith("_")
            and not name.startswith("_")
            and name not in self._KEEP
            and isinstance(first, torch.Tensor)
            and first.device.type == "meta"
        ):
            return first
        return func(*args, **kwargs)


@dataclasses.dataclass(frozen=True)
class Profile:
    """Static figures of one model."""

    params: int
    flops: int  # forward, batch 1
    img_size: int
    flops_device: str  # "meta" or "cpu"

    @property
    def params_m(self) -> float:
        return self.params / 1e6

    @property
    def gmacs(self) -> float:
        return self.flops / 2e9


def profile_model(name: str, img_size: int | None = None, *, allow_cpu_fallback: bool = True,
                  model_kwargs: dict[str, Any] | None = None) -> Profile:
    """Parameters and forward GMACs of a model at ``img_size`` (default: its pretrained cfg's size).

    Builds and counts on ``meta``; if that fails (an op without a meta kernel), on CPU at batch 1.
    """
    size = img_size or default_img_size(name)
    try:
        with _NoInitMode():
            model = build_model(name, device="meta", **(model_kwargs or {}))
        model.eval()
        return Profile(count_params(model), count_flops(model, (1, 3, size, size), device="meta"), size, "meta")
    except Exception as err:
        if not allow_cpu_fallback:
            raise
        _log.info("%s: counting on meta failed (%s: %s); counting on CPU", name, type(err).__name__, err)
    model = build_model(name, **(model_kwargs or {})).eval()
    return Profile(count_params(model), count_flops(model, (1, 3, size, size), device="cpu"), size, "cpu")


# -------------------------------------------------------------------------------------- speed
@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """How to run the speed/memory part of a bench."""

    batch: int = 8
    img_size: int | None = None  # None: each model's default size
    device: str = "cpu"
    dtype: str = "float32"
    compile: bool = False
    train: bool = False
    warmup: int = 2
    runs: int = 5
    iters: int = 1
    threads: int | None = None
    memory: bool = True
    yardstick: str | None = YARDSTICK
    timeout_s: float = 600.0  # per child process (CPU memory)
    clock: str = "wall"  # "wall" (perf_counter) or "cpu" (process CPU time / threads: robust on a shared CPU)
    autocast: bool = False  # inference in bf16/fp16: autocast over fp32 weights instead of casting the model
    mfu: bool = False  # time a same-dtype GEMM alternately and report MFU
    gemm_size: int | None = None  # side of the reference GEMM (None: mfu.default_gemm_size)
    breakdown: bool = False  # profile one step and bucket its self time by op type
    # a model spec's constructor kwargs (mixers, mixer_options, architecture overrides; mixerzoo.spec.ModelSpec.kwargs)
    # for every benched model; never applied to the yardstick
    model_kwargs: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.batch < 1:
            raise ValueError(f"batch must be >= 1, got batch={self.batch}")
        if self.img_size is not None and self.img_size < 1:
            raise ValueError(f"img_size must be >= 1, got img_size={self.img_size}")
        dt = _DTYPE_ALIASES.get(self.dtype, self.dtype)
        if dt not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got dtype={self.dtype!r}")
        object.__setattr__(self, "dtype", dt)
        if self.warmup < 1:
            raise ValueError(f"warmup must be >= 1 (the first step is never timed), got warmup={self.warmup}")
        if self.runs < 1 or self.iters < 1:
            raise ValueError(f"runs and iters must be >= 1, got runs={self.runs}, iters={self.iters}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got threads={self.threads}")
        torch.device(self.device)  # raises on a malformed device string
        if self.clock not in ("wall", "cpu"):
            raise ValueError(f"clock must be 'wall' or 'cpu', got clock={self.clock!r}")
        if self.clock == "cpu" and torch.device(self.device).type != "cpu":
            raise ValueError(f"clock='cpu' only makes sense on device='cpu', got device={self.device!r}")
        if self.gemm_size is not None and self.gemm_size < 1:
            raise ValueError(f"gemm_size must be >= 1, got gemm_size={self.gemm_size}")

    @property
    def gemm_n(self) -> int:
        """Side of the reference GEMM for this device and dtype."""
        return self.gemm_size or _mfu.default_gemm_size(self.device, DTYPES[self.dtype])

    @property
    def mode(self) -> str:
        return "train" if self.train else "infer"


@dataclasses.dataclass
class BenchResult:
    """One row of a bench run (throughputs in images/s; ``ratio`` = throughput / yardstick's)."""

    model: str
    family: str = ""
    mode: str = "infer"
    device: str = "cpu"
    dtype: str = "float32"
    compiled: bool = False
    clock: str = "wall"
    batch: int = 0
    img_size: int = 0
    threads: int = 0
    params_m: float | None = None
    gmacs: float | None = None
    latency_ms: float | None = None
    throughput: float | None = None
    yardstick_throughput: float | None = None
    ratio: float | None = None
    peak_mem_mb: float | None = None
    mem_kind: str = ""
    top1: float | None = None
    top1_source: str = ""
    status: str = "ok"
    error: str = ""
    autocast: bool = False
    gflops_per_s: float | None = None  # achieved: forward FLOPs/image x img/s (x3 for train)
    gemm_gflops_per_s: float | None = None  # the reference GEMM, median of the samples alternating with this row
    gemm_size: int | None = None
    mfu: float | None = None  # gflops_per_s / gemm_gflops_per_s
    breakdown: dict[str, float] | None = None  # share of profiled self time per op bucket
    breakdown_top: list[list[Any]] = dataclasses.field(default_factory=list)  # [op, bucket, share], largest first
    times_ms: list[float] = dataclasses.field(default_factory=list)
    gemm_times_ms: list[float] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Step:
    """One inference or training step of a model on a fixed random batch."""

    def __init__(self, name: str, cfg: BenchConfig, img_size: int) -> None:
        self.device = torch.device(cfg.device)
        dtype = DTYPES[cfg.dtype]
        self.train = cfg.train
        spec_kw = cfg.model_kwargs if cfg.model_kwargs and name != cfg.yardstick else {}
        model = build_model(name, device=self.device, **spec_kw)
        self.autocast_dtype = None
        if cfg.train:
            model.train()
            self.autocast_dtype = dtype if dtype != torch.float32 else None
            self.x = torch.randn(cfg.batch, 3, img_size, img_size, device=self.device)
            self.target = torch.randint(0, 1000, (cfg.batch,), device=self.device)
            self.opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
        elif cfg.autocast:
            model.eval()
            self.autocast_dtype = dtype if dtype != torch.float32 else None
            self.x = torch.randn(cfg.batch, 3, img_size, img_size, device=self.device)
        else:
            model.eval().to(dtype)
            self.x = torch.randn(cfg.batch, 3, img_size, img_size, device=self.device, dtype=dtype)
        self.model = torch.compile(model) if cfg.compile else model
        self.clock = time.process_time if cfg.clock == "cpu" else time.perf_counter
        # CPU seconds are summed over threads: divide by the thread count to compare with wall time
        self.clock_div = max(1, torch.get_num_threads()) if cfg.clock == "cpu" else 1

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def __call__(self) -> None:
        if not self.train:
            with torch.inference_mode(), self._autocast():
                self.model(self.x)
            return
        with self._autocast():
            out = self.model(self.x)
            out = out[0] if isinstance(out, (tuple, list)) else out
            loss = torch.nn.functional.cross_entropy(out.float(), self.target % out.shape[-1])
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def timed(self, iters: int) -> float:
        """Seconds per step over ``iters`` steps."""
        _sync(self.device)
        t0 = self.clock()
        for _ in range(iters):
            self()
        _sync(self.device)
        return (self.clock() - t0) / iters / self.clock_div


@contextlib.contextmanager
def _cuda_peak(device: torch.device) -> Iterator[list[float]]:
    """On CUDA, yields a list that receives the peak MiB allocated inside the block beyond what was
    allocated before it (so other live models, e.g. the yardstick, are not counted)."""
    out: list[float] = []
    if device.type != "cuda":
        yield out
        return
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    yield out
    torch.cuda.synchronize(device)
    out.append((torch.cuda.max_memory_allocated(device) - base) / 2**20)


def _describe(err: BaseException) -> tuple[str, str]:
    if isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower():
        return "oom", f"out of memory: {str(err).splitlines()[0][:200] if str(err) else type(err).__name__}"
    msg = str(err).splitlines()[0] if str(err) else ""
    return "error", f"{type(err).__name__}: {msg[:300]}"


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------- CPU peak memory
def _proc_status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _child_memory(name: str, cfg: BenchConfig, img_size: int) -> dict[str, Any]:
    """Runs in the child: peak RSS (MiB) over one step after a warm-up step."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    base = _proc_status_kb("VmRSS") or 0
    step = _Step(name, cfg, img_size)
    step()  # warm-up: lazy allocations, optimizer state
    gc.collect()
    exact = _reset_hwm()
    step()
    if exact:
        peak = _proc_status_kb("VmHWM") or 0
        kind = "cpu_peak_rss"
    else:  # whole-process high-water mark (includes building the model)
        import resource  # noqa: PLC0415

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        kind = "cpu_maxrss"
    return {"peak_mem_mb": (peak - base) / 1024.0, "mem_kind": kind}


def _memory_in_child(name: str, cfg: BenchConfig, img_size: int) -> dict[str, Any]:
    payload = json.dumps({"name": name, "cfg": dataclasses.asdict(cfg), "img_size": img_size})
    env = dict(os.environ)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "mixerzoo.bench.measure", "--child", payload],
            capture_output=True, text=True, timeout=cfg.timeout_s, env=env, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return {"status": "error", "error": f"memory child timed out after {cfg.timeout_s:.0f} s"}
    if proc.returncode != 0:
        tail = (proc.stderr or "").strip().splitlines()[-1:] or [""]
        if proc.returncode < 0:
            why = f"memory child killed by signal {-proc.returncode} (out of memory?)"
            return {"status": "oom" if proc.returncode == -9 else "error", "error": why}
        return {"status": "error", "error": f"memory child failed (rc={proc.returncode}): {tail[0][:300]}"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    return json.loads(lines[-1])


def _child_main(argv: Sequence[str]) -> int:
    payload = json.loads(argv[argv.index("--child") + 1])
    cfg = BenchConfig(**payload["cfg"])
    try:
        out = _child_memory(payload["name"], cfg, int(payload["img_size"]))
    except BaseException as err:  # noqa: BLE001 - reported to the parent as a row status
        status, msg = _describe(err)
        out = {"status": status, "error": msg}
    sys.stdout.write(json.dumps(out) + "\n")
    return 0


# ------------------------------------------------------------------------------------ the bench
def _family(name: str) -> str:
    is_timm, arch = _split(name)
    if is_timm:
        return "timm"
    from mixerzoo.zoo._registry import get_entry  # noqa: PLC0415

    return get_entry(arch).family


def _official(name: str) -> tuple[float | None, str]:
    from mixerzoo.bench.official import OFFICIAL  # noqa: PLC0415

    _, arch = _split(name)
    entry = OFFICIAL.get(arch) if not name.startswith(TIMM_PREFIX) else None
    if entry is None or entry.top1 is None:
        return None, ""
    return entry.top1, entry.source


def _set_mfu(res: BenchResult, cfg: BenchConfig, flops_per_image: int | None, gemm_times: Sequence[float]) -> None:
    """Fill the row's achieved GFLOP/s, the GEMM's GFLOP/s (median of ``gemm_times``) and the MFU."""
    if not cfg.mfu or not gemm_times:
        return
    n = cfg.gemm_n
    gemm = _mfu.median_gemm_flops_per_s(n, gemm_times)
    res.gemm_size, res.gemm_gflops_per_s = n, gemm / 1e9
    res.gemm_times_ms = [t * 1e3 for t in gemm_times]
    if flops_per_image and res.throughput:
        res.gflops_per_s = _mfu.achieved_flops_per_s(flops_per_image, res.throughput, train=cfg.train) / 1e9
        res.mfu = _mfu.mfu(flops_per_image, res.throughput, gemm, train=cfg.train)


def _set_breakdown(res: BenchResult, step: Callable[[], Any], device: torch.device) -> None:
    from mixerzoo.bench.breakdown import op_breakdown  # noqa: PLC0415

    bd = op_breakdown(step, device=device)
    res.breakdown = {k: round(v, 6) for k, v in bd.shares.items()}
    res.breakdown_top = [[n, b, round(share, 6)] for n, b, share in bd.top]


def _new_row(name: str, cfg: BenchConfig, img: int, family: str = "") -> BenchResult:
    return BenchResult(
        model=name, family=family, mode=cfg.mode, device=str(torch.device(cfg.device)), dtype=cfg.dtype,
        compiled=cfg.compile, clock=cfg.clock, batch=cfg.batch, img_size=img, threads=torch.get_num_threads(),
        autocast=cfg.autocast and cfg.dtype != "float32" and not cfg.train,
    )  # fmt: skip


def _measure_one(
    name: str, cfg: BenchConfig, yard: _Step | None, yard_times: list[float],
    gemm: _mfu.GemmStep | None = None, gemm_times: list[float] | None = None,
) -> BenchResult:
    device = torch.device(cfg.device)
    img = cfg.img_size or default_img_size(name)
    res = _new_row(name, cfg, img)
    flops = None
    try:
        res.family = _family(name)
        res.top1, res.top1_source = _official(name)
        prof = profile_model(name, img, model_kwargs=cfg.model_kwargs)
        res.params_m, res.gmacs = prof.params_m, prof.gmacs
        flops = prof.flops
    except Exception as err:  # noqa: BLE001 - the row reports it, the run goes on
        res.status, res.error = _describe(err)
        return res
    row_gemm: list[float] = []
    step = None
    try:
        with _cuda_peak(device) as peak:
            step = _Step(name, cfg, img)
            for _ in range(cfg.warmup):
                step()
        if peak:
            res.peak_mem_mb, res.mem_kind = peak[0], "cuda_max_allocated"
        if yard is not None:
            yard()
        times: list[float] = []
        for _ in range(cfg.runs):
            times.append(step.timed(cfg.iters))
            if yard is not None:
                yard_times.append(yard.timed(cfg.iters))
            if gemm is not None:
                row_gemm.append(gemm.timed(cfg.iters))
        med = statistics.median(times)
        res.times_ms = [t * 1e3 for t in times]
        res.latency_ms = med * 1e3
        res.throughput = cfg.batch / med
        _set_mfu(res, cfg, flops, row_gemm)
        if cfg.breakdown:
            try:
                _set_breakdown(res, step, device)
            except Exception as err:  # noqa: BLE001 - the timing stands; the row says why
                res.error = f"breakdown failed: {_describe(err)[1]}"
    except BaseException as err:  # noqa: BLE001 - includes torch.OutOfMemoryError; KeyboardInterrupt re-raised
        if isinstance(err, KeyboardInterrupt):
            raise
        res.status, res.error = _describe(err)
    finally:
        del step
        _free(device)
        if gemm_times is not None:
            gemm_times.extend(row_gemm)
    if res.status == "ok" and cfg.memory and device.type == "cpu":
        mem = _memory_in_child(name, cfg, img)
        if "peak_mem_mb" in mem:
            res.peak_mem_mb, res.mem_kind = mem["peak_mem_mb"], mem["mem_kind"]
        else:
            res.error = mem.get("error", "")  # speed is valid; only memory failed
            res.mem_kind = mem.get("status", "error")
    return res


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    prev = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def bench_models(
    names: Sequence[str], cfg: BenchConfig, *, progress: bool | None = None,
    on_result: Callable[[BenchResult], None] | None = None,
) -> list[BenchResult]:
    """Bench every model in ``names`` (plus the yardstick, first row) and return one row per model.

    A model that fails (exception, out of memory) gets ``status`` ``"error"``/``"oom"`` and its message in
    ``error``; the run goes on. Throughput ratios use the yardstick's median over the whole run, sampled
    alternately with every model.
    """
    from tqdm.auto import tqdm  # noqa: PLC0415

    device = torch.device(cfg.device)
    with _threads(cfg.threads):
        yard: _Step | None = None
        yard_row: BenchResult | None = None
        yard_times: list[float] = []
        yard_flops: int | None = None
        gemm: _mfu.GemmStep | None = None
        gemm_times: list[float] = []
        if cfg.mfu:
            gemm = _mfu.GemmStep(cfg.gemm_n, device, DTYPES[cfg.dtype], clock=cfg.clock)
            for _ in range(cfg.warmup):
                gemm()
        if cfg.yardstick:
            yard_img = cfg.img_size or default_img_size(cfg.yardstick)
            yard_row = _new_row(cfg.yardstick, cfg, yard_img, family="timm")
            try:
                prof = profile_model(cfg.yardstick, yard_img)
                yard_row.params_m, yard_row.gmacs = prof.params_m, prof.gmacs
                yard_flops = prof.flops
                with _cuda_peak(device) as peak:
                    yard = _Step(cfg.yardstick, cfg, yard_img)
                    for _ in range(cfg.warmup):
                        yard()
                if peak:
                    yard_row.peak_mem_mb, yard_row.mem_kind = peak[0], "cuda_max_allocated"
            except BaseException as err:  # noqa: BLE001
                if isinstance(err, KeyboardInterrupt):
                    raise
                yard_row.status, yard_row.error = _describe(err)
                yard = None
        rows: list[BenchResult] = []
        bar = tqdm(list(names), desc=f"bench {cfg.mode}", unit="model", disable=progress is False, leave=False)
        for name in bar:
            bar.set_postfix_str(name)
            row = _measure_one(name, cfg, yard, yard_times, gemm, gemm_times)
            rows.append(row)
            if on_result is not None:
                on_result(row)
        bar.close()
        if yard_row is not None:
            if yard is not None and not yard_times:  # no model ran: time the yardstick alone (with the GEMM)
                for _ in range(cfg.runs):
                    yard_times.append(yard.timed(cfg.iters))
                    if gemm is not None:
                        gemm_times.append(gemm.timed(cfg.iters))
            if yard_times:
                med = statistics.median(yard_times)
                yard_row.latency_ms, yard_row.throughput = med * 1e3, cfg.batch / med
                yard_row.times_ms = [t * 1e3 for t in yard_times]
                yard_row.ratio = 1.0
                _set_mfu(yard_row, cfg, yard_flops, gemm_times)
                if cfg.breakdown and yard is not None:
                    try:
                        _set_breakdown(yard_row, yard, device)
                    except Exception as err:  # noqa: BLE001 - the timing stands; the row says why
                        yard_row.error = f"breakdown failed: {_describe(err)[1]}"
            del yard, gemm
            _free(device)
            if yard_row.status == "ok" and cfg.memory and device.type == "cpu":
                mem = _memory_in_child(cfg.yardstick, cfg, yard_row.img_size)
                yard_row.peak_mem_mb, yard_row.mem_kind = mem.get("peak_mem_mb"), mem.get("mem_kind", "")
            for row in rows:
                row.yardstick_throughput = yard_row.throughput
                if row.throughput and yard_row.throughput:
                    row.ratio = row.throughput / yard_row.throughput
            rows.insert(0, yard_row)
    return rows


if __name__ == "__main__":  # the CPU-memory child: python -m mixerzoo.bench.measure --child JSON
    sys.exit(_child_main(sys.argv))
