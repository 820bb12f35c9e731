"""Shared non-mixer primitives for the families: construction context, mixer resolution and layout
adaptation, drop-path schedules. Families import this module, never each other."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, register_notrace_module, trunc_normal_
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from mixerzoo.plugins import create_mixer, mixer_spec

__all__ = [
    "DropPath",
    "FusedMlp",
    "Mlp",
    "PatchEmbedNHWC",
    "eager_only",
    "fused_cpu_inference",
    "fused_mlp_residual",
    "inference_chunk_size",
    "factory",
    "init_weights",
    "make_mixer",
    "resolve_mixers",
    "run_mixer",
    "stage_dpr",
    "trunc_normal_",
]


@contextlib.contextmanager
def factory(device: Any = None) -> Iterator[None]:
    """Create parameters directly on ``device`` (e.g. ``"meta"``) while building a model."""
    if device is None:
        yield
    else:
        with torch.device(device):
            yield


def resolve_mixers(
    mixers: str | Sequence[str], num_stages: int, *, host: str, kinds: Sequence[str], layouts: Sequence[str]
) -> tuple[str, ...]:
    """Expand ``mixers`` (one name, or one per stage) and check each against the host's needs.

    Raises ``ValueError`` naming the host and the mixer when a combination cannot work.
    """
    if isinstance(mixers, str):
        names = (mixers,) * num_stages
    else:
        names = tuple(mixers)
        if len(names) != num_stages or not all(isinstance(n, str) for n in names):
            raise ValueError(
                f"mixers={mixers!r}: {host} needs one mixer name or {num_stages} names (one per stage)"
            )
    for n in names:
        spec = mixer_spec(n)
        if spec.kind not in kinds:
            raise ValueError(
                f"mixer {n!r} is a {spec.kind!r}; {host} takes mixers of kind {' or '.join(map(repr, kinds))}"
            )
        if spec.layout not in layouts:
            raise ValueError(
                f"mixer {n!r} works on layout {spec.layout!r}; {host} can feed only {', '.join(map(repr, layouts))}"
            )
    return names


def make_mixer(name: str, dim: int, options: dict[str, Any] | None, **defaults: Any) -> nn.Module:
    """``create_mixer`` with host defaults that the mixer accepts, overridden by user ``options``."""
    import inspect

    cls = mixer_spec(name).cls
    params = inspect.signature(cls.__init__).parameters
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kw = {k: v for k, v in defaults.items() if accepts_any or k in params}
    kw.update(options or {})
    return create_mixer(name, dim, **kw)


def run_mixer(mixer: nn.Module, x: Tensor, host_layout: str) -> Tensor:
    """Call ``mixer`` on ``x`` held in ``host_layout``, converting to and from the mixer's layout."""
    lay = mixer.layout
    if lay == host_layout:
        return mixer(x)
    if host_layout == "nchw":
        if lay == "nhwc":
            return mixer(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        B, C, H, W = x.shape
        t = x.flatten(2).transpose(1, 2)
        y = mixer(t, hw=(H, W)) if getattr(mixer, "needs_hw", False) else mixer(t)
        return y.transpose(1, 2).reshape(B, C, H, W)
    if host_layout == "nhwc":
        if lay == "nchw":
            return mixer(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        B, H, W, C = x.shape
        t = x.reshape(B, H * W, C)
        y = mixer(t, hw=(H, W)) if getattr(mixer, "needs_hw", False) else mixer(t)
        return y.reshape(B, H, W, C)
    raise ValueError(f"cannot feed a {lay!r} mixer from a {host_layout!r} host")


def stage_options(
    mixer_options: Mapping[str, Any] | Sequence[Mapping[str, Any] | None] | None, num_stages: int
) -> list[dict[str, Any]]:
    """Per-stage mixer options from one dict (every stage) or one dict|None per stage; each a fresh dict."""
    if mixer_options is None or isinstance(mixer_options, Mapping):
        return [dict(mixer_options or {}) for _ in range(num_stages)]
    opts = [dict(o or {}) for o in mixer_options]
    if len(opts) != num_stages:
        raise ValueError(f"mixer_options={mixer_options!r}: need one dict or {num_stages} (one per stage)")
    return opts


def init_weights(model: nn.Module, fn: Any) -> None:
    """``model.apply(fn)``, skipped on the meta device: a meta build only sizes the model (hub checks, config
    round trips), and the initialisers would only trace through meta kernels."""
    first = next(model.parameters(), None)
    if first is None or not first.is_meta:
        model.apply(fn)


def stage_dpr(depths: Sequence[int], drop_path_rate: float) -> list[list[float]]:
    """Per-stage drop-path rates, linear in the global block index from 0 to ``drop_path_rate``."""
    total = sum(depths)
    rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
    out, start = [], 0
    for d in depths:
        out.append(rates[start : start + d])
        start += d
    return out


def eager_only(x: Any) -> bool:
    """True where hand-written fast paths (fused oneDNN ops, custom autograd functions, in-place tiling, batch
    chunking) must step aside for the plain ops: ``torch.fx`` proxies, TorchScript scripting and tracing,
    ``torch.compile``/``torch.export``, and autocast on ``x``'s device (autocast only casts the plain ops; a
    fused path would mix bf16 activations with fp32 weights)."""
    if not isinstance(x, Tensor) or torch.jit.is_scripting() or torch.jit.is_tracing():
        return True
    if torch.compiler.is_compiling():
        return True
    return _autocast_on(x.device.type)


def _autocast_on(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except RuntimeError:  # a device type without autocast (meta, ...)
        return False


# ---- shared by the NHWC families (LITv2, FLatten-Swin, FLatten-PVT)
_ONEDNN_FUSED = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def fused_cpu_inference(x: Tensor, module: nn.Module) -> bool:
    """True where oneDNN's fused linear/conv + GELU kernels may replace eager ops (same maths, no autograd):
    CPU fp32 inference (no grad needed), outside scripting/tracing/compilation/autocast (:func:`eager_only`)."""
    if not _ONEDNN_FUSED or eager_only(x) or x.device.type != "cpu" or x.dtype != torch.float32 or x.numel() == 0:
        return False
    return not (torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in module.parameters())))


@register_notrace_module  # a leaf for torch.fx (shape-dependent padding / dispatch)
class FusedMlp(nn.Module):
    """fc1 → GELU → fc2 (timm's ``Mlp`` keys); fc1 + GELU fused by oneDNN in CPU fp32 inference; CPU fp32 training
    keeps one hidden buffer (:class:`_CpuMlpFunction`)."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.drop = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        if fused_cpu_inference(x, self):
            x = torch.ops.mkldnn._linear_pointwise(x, self.fc1.weight, self.fc1.bias, "gelu", [], "none")
            return self.drop(self.fc2(self.drop(x)))
        if _cpu_mlp_train(x, self):
            shape = x.shape
            y = _CpuMlpFunction.apply(
                x.reshape(-1, shape[-1]), self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias
            )
            return y.view(*shape[:-1], y.shape[-1])
        return self._forward(x)

    def _forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


_MLP_TILE_BYTES = 8 << 20  # hidden tile of the training MLP: far below glibc's 32 MiB mmap threshold
_MLP_MIN_TILE = 256  # rows: smaller tiles make the weight-gradient GEMMs inefficient


def _cpu_mlp_train(x: Tensor, mlp: FusedMlp) -> bool:
    """True where :class:`_CpuMlpFunction` replaces the eager MLP: CPU fp32 with autograd, exact GELU, no
    active dropout, no autocast, outside tracing/scripting/compilation."""
    if eager_only(x) or x.device.type != "cpu" or x.dtype != torch.float32 or x.dim() < 2 or x.numel() == 0:
        return False
    if not torch.is_grad_enabled() or not (x.requires_grad or any(p.requires_grad for p in mlp.parameters())):
        return False
    if mlp.training and mlp.drop.p > 0:
        return False
    if not (isinstance(mlp.act, nn.GELU) and mlp.act.approximate == "none"):
        return False
    return all(p.dtype == torch.float32 for p in mlp.parameters())


class _CpuMlpFunction(torch.autograd.Function):
    """``fc2(GELU(fc1(x)))`` on ``[N, C]`` for CPU training, with one ``[N, hidden]`` buffer per step.

    Eager autograd keeps two ``[N, hidden]`` activations (fc1 output, GELU output) and allocates two more in
    backward (their gradients). On CPU the early-stage ones are tens of MiB: mmap-backed or trimmed back to the
    OS on free, they page-fault on every call, which measured up to 3× slower GEMMs on them. Here only the fc1
    output ``h`` is kept; GELU runs on row tiles of ``h`` in two reused cache-sized buffers, in forward (→ fc2)
    and again in backward (→ fc2's weight gradient and the GELU backward), and the weight gradients accumulate
    over the tiles. Same maths as eager (fp32), not bit-identical (GEMM blocking differs); once differentiable.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, w1: Tensor, b1: Tensor | None, w2: Tensor, b2: Tensor | None) -> Tensor:
        x = x.contiguous()
        rows, hidden = x.shape[0], w1.shape[0]
        tiles = -(-rows // max(_MLP_MIN_TILE, _MLP_TILE_BYTES // (4 * hidden)))
        tile = -(-rows // tiles)  # equal tiles (no ragged small GEMM at the end)
        h = torch.addmm(b1, x, w1.t()) if b1 is not None else torch.mm(x, w1.t())
        y = x.new_empty(rows, w2.shape[0])
        a = x.new_empty(tile, hidden)
        for s in range(0, rows, tile):
            e = min(s + tile, rows)
            at = a[: e - s]
            torch.ops.aten.gelu.out(h[s:e], out=at)
            if b2 is not None:
                torch.addmm(b2, at, w2.t(), out=y[s:e])
            else:
                torch.mm(at, w2.t(), out=y[s:e])
        ctx.save_for_backward(x, h, w1, w2)
        ctx.tile = tile
        ctx.biases = (b1 is not None, b2 is not None)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        x, h, w1, w2 = ctx.saved_tensors
        g = g.contiguous()
        rows, hidden, tile = x.shape[0], h.shape[1], ctx.tile
        need_x, need_w1, need_b1, need_w2, need_b2 = ctx.needs_input_grad
        dx = torch.empty_like(x) if need_x else None
        dw1 = x.new_zeros(w1.shape) if need_w1 else None
        dw2 = x.new_zeros(w2.shape) if need_w2 else None
        db1 = x.new_zeros(hidden) if need_b1 else None
        a, da = x.new_empty(tile, hidden), x.new_empty(tile, hidden)
        for s in range(0, rows, tile):
            e = min(s + tile, rows)
            ht, gt, dat = h[s:e], g[s:e], da[: e - s]
            if need_w2:
                at = a[: e - s]
                torch.ops.aten.gelu.out(ht, out=at)
                dw2.addmm_(gt.t(), at)
            torch.mm(gt, w2, out=dat)
            torch.ops.aten.gelu_backward.grad_input(dat, ht, grad_input=dat)  # dh, in place
            if need_w1:
                dw1.addmm_(dat.t(), x[s:e])
            if need_b1:
                db1 += dat.sum(0)
            if need_x:
                torch.mm(dat, w1, out=dx[s:e])
        db2 = g.sum(0) if need_b2 else None
        return dx, dw1, db1 if ctx.biases[0] else None, dw2, db2 if ctx.biases[1] else None


_CHUNK_BYTES = 3 << 20  # per-chunk activation budget of inference_chunk_size (≈ 3 MiB)


def inference_chunk_size(x: Tensor, image_bytes: int, module: nn.Module) -> int | None:
    """Images per chunk for running the early, high-resolution stages of a CPU inference batch in slices,
    or ``None`` (run the batch whole).

    ``image_bytes``: one image's activation at the first stage. Slices of ≈ 3 MiB keep every intermediate
    small enough to be served from the allocator's free lists and the cache: whole-batch intermediates of
    tens of MiB are mmap-backed or trimmed back to the OS on free, and page-fault on every call (measured
    10–20 % of a FLatten-Swin-T forward at batch 8). Each image is computed exactly as in the batched call
    (token-wise and per-image ops only), so outputs are unchanged. Only for CPU without autograd, outside
    tracing, scripting and compilation.
    """
    if eager_only(x) or x.device.type != "cpu" or x.dim() == 0:
        return None
    if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in module.parameters())):
        return None
    n = max(1, _CHUNK_BYTES // max(int(image_bytes), 1))
    return n if n < x.shape[0] else None


_RESIDUAL_TILE_BYTES = 3 << 19  # hidden tile of the inference MLP residual ≈ 1.5 MiB: stays in cache


def fused_mlp_residual(x: Tensor, norm: nn.Module, mlp: FusedMlp, block: nn.Module) -> Tensor | None:
    """``x + mlp(norm(x))`` for CPU fp32 inference, in row tiles that overwrite ``x`` in place; ``None`` = not
    applicable (the caller runs the eager path).

    Per tile of rows: LayerNorm → ``addmm`` (fc1) → in-place exact GELU → ``x_tile += h @ fc2ᵀ + b2``. The
    hidden activation lives in one reused cache-sized buffer instead of a fresh ``[tokens, hidden]`` tensor (on
    CPU the large ones are mmap-backed and page-fault on every call), and the norm output, fc2 output and
    residual sum are never materialised for the whole map. Same maths as the eager path (fp32, row-wise
    independent), not bit-identical (GEMM blocking differs). ``x`` must be a fresh contiguous tensor the
    caller owns (e.g. the result of the previous residual add); ``block``'s parameters decide whether
    autograd is needed. Applies only with no dropout/drop-path active and no autocast.
    """
    if eager_only(x) or not (isinstance(norm, nn.LayerNorm) and isinstance(mlp, FusedMlp)):
        return None  # fx / TorchScript / compile / autocast record or run the eager path
    if not x.is_contiguous() or x.device.type != "cpu" or x.dtype != torch.float32 or x.numel() == 0:
        return None
    if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in block.parameters())):
        return None
    drop_mods = (m for m in block.modules() if isinstance(m, (nn.Dropout, DropPath)))
    if block.training and any(getattr(m, "p", getattr(m, "drop_prob", 0.0)) for m in drop_mods):
        return None
    if not (isinstance(mlp.act, nn.GELU) and mlp.act.approximate == "none") or norm.weight is None:
        return None
    C = x.shape[-1]
    x2 = x.view(-1, C)
    rows, hidden = x2.shape[0], mlp.fc1.out_features
    tile = min(rows, max(256, _RESIDUAL_TILE_BYTES // (4 * hidden)))
    h = torch.empty(tile, hidden, dtype=x.dtype)
    w1t, w2t, b1, b2 = mlp.fc1.weight.t(), mlp.fc2.weight.t(), mlp.fc1.bias, mlp.fc2.bias
    for start in range(0, rows, tile):
        xt = x2[start : start + tile]
        ht = h[: xt.shape[0]]
        xn = F.layer_norm(xt, (C,), norm.weight, norm.bias, norm.eps)
        if b1 is None:
            torch.mm(xn, w1t, out=ht)
        else:
            torch.addmm(b1, xn, w1t, out=ht)
        torch.ops.aten.gelu_(ht)
        xt.addmm_(ht, w2t)
        if b2 is not None:
            xt.add_(b2)
    return x


@register_notrace_module  # a leaf for torch.fx (shape-dependent padding / dispatch)
class PatchEmbedNHWC(nn.Module):
    """Conv ``p×p`` stride ``p`` → LayerNorm; ``[B, C, H, W]`` → ``[B, ⌈H/p⌉, ⌈W/p⌉, D]``."""

    def __init__(self, in_chans: int, dim: int, patch_size: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, dim, patch_size, patch_size)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        p = self.patch_size
        if x.shape[2] % p or x.shape[3] % p:
            x = F.pad(x, (0, (-x.shape[3]) % p, 0, (-x.shape[2]) % p))
        return self.norm(self.proj(x).permute(0, 2, 3, 1))
