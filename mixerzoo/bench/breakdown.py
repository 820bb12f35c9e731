"""Where a step's time goes: ``torch.profiler`` self time bucketed by op type.

Buckets (:data:`BUCKETS`):

* ``gemm``: matrix products and convolutions (``mm``, ``addmm``, ``bmm``, ``baddbmm``, ``linear``,
  ``matmul``, ``einsum``, ``conv*``, oneDNN's fused ``_linear_pointwise`` / ``_convolution_pointwise``)
  and their backward ops;
* ``attention``: the attention kernels: ``scaled_dot_product_*`` ops, the ``mixerzoo::`` kernel ops, and
  everything that runs inside a call of a public :mod:`mixerzoo.kernels` op (their CPU paths are built
  from dense aten ops: those are charged here, not to ``gemm``/``copy``), including the backward of the
  ops run inside such a call (matched by the autograd sequence number);
* ``norm``: layer/batch/group/RMS norm, forward and backward;
* ``copy``: copies, layout changes and views (``copy_``, ``contiguous``, ``clone``, ``permute``,
  ``transpose``, ``reshape``, ``cat``, ``index``, ``gather``, ``pad``, ``roll``, ...);
* ``elementwise``: point-wise maths and activations (``add``, ``mul``, ``gelu``, ``softmax``, ...) and
  their backward ops;
* ``other``: everything else (pooling, reductions, allocation, the autograd engine, ...).

An op is put in the bucket of its own name; an op whose name says nothing (``empty``, ``as_strided``,
``resize_``, an autograd node, ...) takes the bucket of its nearest classified parent. Self time is CPU
time on CPU and device (kernel) time on CUDA. Shares are of the summed self time of all ops, so Python
time between ops (not inside any op) is not in them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

__all__ = [
    "BUCKETS",
    "KERNEL_RANGE_PREFIX",
    "Breakdown",
    "classify_op",
    "format_breakdown",
    "kernel_ranges",
    "op_breakdown",
]

BUCKETS: tuple[str, ...] = ("gemm", "attention", "norm", "copy", "elementwise", "other")
SHORT = {"gemm": "gemm", "attention": "attn", "norm": "norm", "copy": "copy", "elementwise": "elt", "other": "other"}
KERNEL_RANGE_PREFIX = "mixerzoo.kernels."
KERNEL_OPS: tuple[str, ...] = (
    "linear_attention",
    "neighborhood_attention_2d",
    "routed_attention",
    "window_attention_2d",
    "window_attention_2d_qkv",
)

_GEMM = frozenset({
    "mm", "addmm", "bmm", "baddbmm", "addbmm", "linear", "matmul", "einsum", "dot", "mv", "addmv", "tensordot",
    "_addmm_activation", "conv1d", "conv2d", "conv3d", "convolution", "_convolution", "conv_transpose2d",
    "mkldnn_convolution", "_convolution_pointwise", "_linear_pointwise", "mkldnn_linear", "_mkldnn_linear",
    "convolution_backward", "mkldnn_convolution_backward", "linear_backward", "mkldnn_linear_backward",
    "cudnn_convolution", "_slow_conv2d_forward", "_slow_conv2d_backward", "thnn_conv2d", "_int_mm", "_scaled_mm",
    "matmul_backward",
})  # fmt: skip
_NORM_WORDS = ("layer_norm", "batch_norm", "group_norm", "rms_norm", "instance_norm", "batchnorm", "layernorm")
_COPY = frozenset({
    "copy_", "_copy_from", "_copy_from_and_resize", "to", "_to_copy", "contiguous", "clone", "permute", "transpose",
    "t", "view", "_unsafe_view", "reshape", "_reshape_alias", "flatten", "unflatten", "expand", "expand_as",
    "squeeze", "unsqueeze", "movedim", "moveaxis", "cat", "_cat", "stack", "index", "index_select", "gather",
    "scatter", "scatter_add", "index_put", "_index_put_impl", "index_add", "index_copy", "take_along_dim",
    "narrow", "narrow_copy", "slice", "select", "split", "split_with_sizes", "chunk", "unbind", "pad",
    "constant_pad_nd", "reflection_pad2d", "replicate_pad2d", "roll", "repeat", "repeat_interleave", "tile",
    "unfold", "im2col", "col2im", "flip", "pixel_shuffle", "pixel_unshuffle", "channel_shuffle", "masked_select",
    "slice_backward", "select_backward", "index_select_backward", "unfold_backward", "gather_backward",
    "permute_copy", "transpose_copy", "view_as", "unsafe_split", "alias", "masked_scatter", "embedding",
    "embedding_backward", "embedding_dense_backward", "_embedding_bag", "diagonal", "triu", "tril",
})  # fmt: skip
_ELEMENTWISE = frozenset({
    "add", "sub", "rsub", "mul", "div", "neg", "abs", "exp", "exp2", "log", "log1p", "expm1", "sqrt", "rsqrt",
    "pow", "square", "reciprocal", "sign", "clamp", "clamp_min", "clamp_max", "clip", "minimum", "maximum",
    "where", "masked_fill", "fill", "lerp", "addcmul", "addcdiv", "relu", "relu6", "gelu", "silu", "sigmoid",
    "tanh", "hardswish", "hardsigmoid", "hardtanh", "elu", "leaky_relu", "softplus", "mish", "erf", "threshold",
    "softmax", "_softmax", "log_softmax", "_log_softmax", "_safe_softmax", "dropout", "native_dropout",
    "bernoulli", "feature_dropout", "floor", "ceil", "round", "trunc", "frac", "fmod", "remainder", "cos", "sin",
    "atan2", "sinh", "cosh", "eq", "ne", "lt", "le", "gt", "ge", "logical_and", "logical_or", "logical_not",
    "bitwise_and", "bitwise_or", "bitwise_not", "isnan", "isinf", "nan_to_num", "elu_backward", "glu",
    "threshold_backward", "gelu_backward", "silu_backward", "sigmoid_backward", "tanh_backward",
    "hardswish_backward", "hardsigmoid_backward", "leaky_relu_backward", "_softmax_backward_data",
    "_log_softmax_backward_data", "native_dropout_backward", "softplus_backward", "mish_backward", "mul_scalar",
    "add_scalar", "div_scalar", "_foreach_add", "_foreach_mul", "_foreach_addcmul", "_foreach_addcdiv",
    "_foreach_lerp", "_foreach_sqrt", "_foreach_div", "_foreach_sub", "_foreach_maximum", "_fused_sgd",
    "_fused_adamw", "_fused_adam", "hardtanh_backward", "relu_backward", "erfinv", "xlogy", "heaviside",
})  # fmt: skip
_OTHER_NAMED = frozenset({
    "sum", "mean", "amax", "amin", "max", "min", "argmax", "argmin", "topk", "sort", "argsort", "cumsum", "prod",
    "norm", "linalg_vector_norm", "var", "std", "var_mean", "std_mean", "logsumexp", "avg_pool2d",
    "adaptive_avg_pool2d", "max_pool2d", "max_pool2d_with_indices", "_adaptive_avg_pool2d", "mean_backward",
    "avg_pool2d_backward", "_adaptive_avg_pool2d_backward", "max_pool2d_with_indices_backward", "nll_loss",
    "nll_loss_forward", "nll_loss_backward", "cross_entropy_loss", "nll_loss_nd", "adaptive_max_pool2d",
    "upsample_bilinear2d", "upsample_nearest2d", "grid_sampler_2d", "deform_conv2d", "interpolate",
    "_upsample_bilinear2d_aa", "upsample_bilinear2d_backward", "grid_sampler_2d_backward", "arange", "linspace",
    "randn", "rand", "randint", "normal_", "uniform_", "zero", "zeros", "ones", "full",
})  # fmt: skip


def _base_name(name: str) -> str:
    """``aten::add_`` -> ``add``; ``mkldnn::_linear_pointwise`` -> ``_linear_pointwise``."""
    base = name.rsplit("::", 1)[-1].strip()
    if base.endswith("_") and not base.endswith("__") and base != "copy_":
        base = base[:-1]
    return base


def classify_op(name: str) -> str | None:
    """The bucket of one profiler event by its name, or ``None`` when the name says nothing (the event
    takes its parent's bucket)."""
    if name.startswith((KERNEL_RANGE_PREFIX, "mixerzoo::", "mixerzoo_flops::")):
        return "attention"
    low = name.lower()
    if "scaled_dot_product" in low or "flash_attention" in low or "efficient_attention" in low:
        return "attention"
    if name.startswith("autograd::engine::") or name.endswith(("Backward0", "Backward1")):
        return None
    if any(w in low for w in _NORM_WORDS):
        return "norm"
    base = _base_name(name)
    if base in _GEMM or base.startswith(("conv", "cudnn_conv", "mkldnn_conv")):
        return "gemm"
    if base in _COPY:
        return "copy"
    if base in _ELEMENTWISE or base.startswith("_foreach_"):
        return "elementwise"
    if base in _OTHER_NAMED:
        return "other"
    if "gemm" in low or "sgemm" in low or "cutlass" in low or "cublas" in low:  # CUDA kernel names
        return "gemm"
    return None


@dataclasses.dataclass(frozen=True)
class Breakdown:
    """Shares of self time per bucket (sum 1 over :data:`BUCKETS`), the total in ms per step, and the
    ``top`` ops by self time as ``(op name, bucket, share)``."""

    shares: dict[str, float]
    total_ms: float
    top: tuple[tuple[str, str, float], ...] = ()
    time_kind: str = "cpu"  # "cpu" (self CPU time) or "cuda" (self device time)
    steps: int = 1

    def top_outside(self, buckets: Sequence[str] = ("gemm",)) -> tuple[str, str, float] | None:
        """The op with the largest share outside ``buckets`` (what holds a model back besides its GEMMs)."""
        return next((t for t in self.top if t[1] not in buckets), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "shares": dict(self.shares), "total_ms": self.total_ms, "top": [list(t) for t in self.top],
            "time_kind": self.time_kind, "steps": self.steps,
        }  # fmt: skip


def format_breakdown(shares: dict[str, float] | None, *, sep: str = " ") -> str:
    """``gemm 62 attn 20 norm 3 copy 8 elt 5 other 2`` (percent, buckets in :data:`BUCKETS` order)."""
    if not shares:
        return "–"
    return sep.join(f"{SHORT[b]} {100 * shares.get(b, 0.0):.0f}" for b in BUCKETS)


# ------------------------------------------------------------------------------ kernel ranges
def _wrap(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    label = KERNEL_RANGE_PREFIX + name

    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        with torch.profiler.record_function(label):
            return fn(*args, **kwargs)

    wrapped.__mixerzoo_kernel_range__ = True  # type: ignore[attr-defined]
    return wrapped


@contextlib.contextmanager
def kernel_ranges() -> Iterator[int]:
    """While active, every call of a public :mod:`mixerzoo.kernels` op runs inside a profiler range named
    ``mixerzoo.kernels.<op>``. The ops are re-bound in every loaded ``mixerzoo`` module that refers to them
    (the mixers import them by name) and restored on exit. Yields the number of bindings wrapped."""
    import mixerzoo.kernels as K  # noqa: PLC0415, N812

    originals: dict[int, tuple[str, Callable[..., Any]]] = {}
    for name in KERNEL_OPS:
        try:
            fn = getattr(K, name)
        except (AttributeError, ImportError):
            continue
        if getattr(fn, "__mixerzoo_kernel_range__", False):  # nested use: already wrapped
            continue
        originals[id(fn)] = (name, fn)
    patched: list[tuple[Any, str, Any]] = []
    wrappers = {key: _wrap(name, fn) for key, (name, fn) in originals.items()}
    try:
        for mod_name, mod in list(sys.modules.items()):
            if mod is None or not (mod_name == "mixerzoo" or mod_name.startswith("mixerzoo.")):
                continue
            for attr, value in list(vars(mod).items()):
                if id(value) in originals and value is originals[id(value)][1]:
                    setattr(mod, attr, wrappers[id(value)])
                    patched.append((mod, attr, value))
        yield len(patched)
    finally:
        for mod, attr, value in reversed(patched):
            setattr(mod, attr, value)


# ---------------------------------------------------------------------------------- profiling
def _self_time(event: Any, cuda: bool) -> float:
    if cuda:
        # kernels appear twice: as device events and in their launching CPU op's device time; count the op
        dt = getattr(event, "device_type", None)
        if dt is not None and dt != torch.autograd.DeviceType.CPU:
            return 0.0
        return float(getattr(event, "self_device_time_total", None) or getattr(event, "self_cuda_time_total", 0.0))
    return float(event.self_cpu_time_total)


def bucket_events(events: Sequence[Any], *, cuda: bool = False, top: int = 8) -> tuple[dict[str, float], float, list]:
    """Self time (µs) per bucket of profiler ``FunctionEvent``s, their total, and the top ops by self time
    as ``(name, bucket, µs)``. Exposed for tests (any objects with ``name``, ``cpu_parent``,
    ``sequence_nr``, ``fwd_thread`` and the self-time attributes)."""
    bucket_of: dict[int, str | None] = {}
    attention_seq: set[tuple[int, int]] = set()

    def own(ev: Any) -> str | None:
        key = id(ev)
        if key not in bucket_of:
            bucket_of[key] = classify_op(ev.name)
        return bucket_of[key]

    def resolve(ev: Any) -> str:
        chain = []
        node = ev
        while node is not None:
            chain.append(node)
            node = node.cpu_parent
        # the attention kernel owns everything it runs, whatever the op
        if any(own(n) == "attention" for n in chain):
            return "attention"
        for n in chain:
            seq = getattr(n, "sequence_nr", -1)
            if (
                n.name.startswith("autograd::engine::evaluate_function")
                and seq >= 0
                and (getattr(n, "fwd_thread", 0), seq) in attention_seq
            ):
                return "attention"
        for n in chain:
            b = own(n)
            if b is not None:
                return b
        return "other"

    # forward ops inside an attention range: their autograd nodes' backward is attention too
    for ev in events:
        seq = getattr(ev, "sequence_nr", -1)
        if seq is None or seq < 0 or ev.name.startswith("autograd::engine::"):
            continue
        node = ev.cpu_parent
        inside = own(ev) == "attention"
        while not inside and node is not None:
            inside = own(node) == "attention"
            node = node.cpu_parent
        if inside:
            attention_seq.add((getattr(ev, "thread", 0), seq))
    per_bucket = dict.fromkeys(BUCKETS, 0.0)
    per_op: dict[tuple[str, str], float] = {}
    for ev in events:
        t = _self_time(ev, cuda)
        if t <= 0:
            continue
        b = resolve(ev)
        per_bucket[b] += t
        per_op[(ev.name, b)] = per_op.get((ev.name, b), 0.0) + t
    total = sum(per_bucket.values())
    tops = sorted(((n, b, t) for (n, b), t in per_op.items()), key=lambda x: -x[2])[:top]
    return per_bucket, total, tops


def op_breakdown(
    step: Callable[[], Any], *, device: str | torch.device = "cpu", steps: int = 1, top: int = 8
) -> Breakdown:
    """Profile ``steps`` calls of ``step`` (already warmed up) and bucket the ops' self time.

    Public kernel ops run inside ``mixerzoo.kernels.<op>`` ranges (:func:`kernel_ranges`), so their
    building blocks are charged to ``attention``.
    """
    from torch.profiler import ProfilerActivity, profile  # noqa: PLC0415

    if steps < 1:
        raise ValueError(f"steps must be >= 1, got steps={steps}")
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    for mod in ("mixerzoo.kernels." + m for m in ("linear", "neighborhood", "routed", "window")):
        with contextlib.suppress(ImportError):
            importlib.import_module(mod)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with kernel_ranges():
        if cuda:
            torch.cuda.synchronize(dev)
        with profile(activities=activities) as prof:
            for _ in range(steps):
                step()
            if cuda:
                torch.cuda.synchronize(dev)
    per_bucket, total, tops = bucket_events(prof.events(), cuda=cuda, top=top)
    shares = {b: (t / total if total > 0 else 0.0) for b, t in per_bucket.items()}
    top_shares = tuple((n, b, t / total) for n, b, t in tops) if total > 0 else ()
    return Breakdown(shares, total / 1e3 / steps, top_shares, "cuda" if cuda else "cpu", steps)
