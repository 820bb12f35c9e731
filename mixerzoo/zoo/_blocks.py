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

from mixerzoo.plugins import create_mixer, mixer_spec

__all__ = [
    "DropPath",
    "FusedMlp",
    "Mlp",
    "PatchEmbedNHWC",
    "fused_cpu_inference",
    "fused_mlp_residual",
    "inference_chunk_size",
    "factory",
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


def stage_dpr(depths: Sequence[int], drop_path_rate: float) -> list[list[float]]:
    """Per-stage drop-path rates, linear in the global block index from 0 to ``drop_path_rate``."""
    total = sum(depths)
    rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
    out, start = [], 0
    for d in depths:
        out.append(rates[start : start + d])
        start += d
    return out


# ---- shared by the NHWC families (LITv2, FLatten-Swin, FLatten-PVT)
_ONEDNN_FUSED = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def fused_cpu_inference(x: Tensor, module: nn.Module) -> bool:
    """True where oneDNN's fused linear/conv + GELU kernels may replace eager ops (same maths, no autograd):
    CPU fp32 inference (no grad needed), outside scripting/compilation."""
    if not _ONEDNN_FUSED or x.device.type != "cpu" or x.dtype != torch.float32:
        return False
    if torch.jit.is_scripting() or torch.compiler.is_compiling():
        return False
    return not (torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in module.parameters())))


@register_notrace_module  # a leaf for torch.fx (shape-dependent padding / dispatch)
class FusedMlp(nn.Module):
    """fc1 → GELU → fc2 (timm's ``Mlp`` keys); fc1 + GELU fused by oneDNN in CPU fp32 inference."""

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
        parts = _mmap_free_parts(x, self.fc1.out_features)
        if parts > 1:  # autograd on CPU: keep every hidden buffer below glibc's mmap threshold (see below)
            return torch.cat([self._forward(c) for c in x.chunk(parts)])
        return self._forward(x)

    def _forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


_MMAP_MAX = 32 << 20  # glibc's largest dynamic mmap threshold: bigger blocks are mmapped (and page-fault) per call


def _mmap_free_parts(x: Tensor, hidden: int) -> int:
    """Batch slices for an MLP whose ``[tokens, hidden]`` activations would be mmap-sized on CPU (e.g. the
    first FLatten-Swin/PVT stage at batch 8: 38–51 MiB). Each of the four such buffers of a training step (fc1
    output, GELU output and their gradients) then costs ~10k page faults; below the threshold glibc reuses its
    heap. 1 = whole."""
    if x.device.type != "cpu" or x.dim() < 3 or isinstance(x, torch.fx.Proxy):
        return 1
    if torch.jit.is_scripting() or torch.compiler.is_compiling():
        return 1
    hidden_bytes = x.numel() // x.shape[-1] * hidden * x.element_size()
    parts = -(-hidden_bytes // _MMAP_MAX)
    return min(parts, x.shape[0])


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
    if isinstance(x, torch.fx.Proxy) or torch.jit.is_scripting() or torch.compiler.is_compiling():
        return None
    if x.device.type != "cpu" or x.dim() == 0:
        return None
    if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in module.parameters())):
        return None
    n = max(1, _CHUNK_BYTES // max(int(image_bytes), 1))
    return n if n < x.shape[0] else None


_MLP_TILE_BYTES = 3 << 19  # hidden tile ≈ 1.5 MiB: stays in cache, never an mmap-sized (> 32 MiB) buffer


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
    if isinstance(x, torch.fx.Proxy) or not (isinstance(norm, nn.LayerNorm) and isinstance(mlp, FusedMlp)):
        return None  # fx tracing records the eager path
    if not x.is_contiguous() or x.device.type != "cpu" or x.dtype != torch.float32 or torch.is_autocast_enabled("cpu"):
        return None
    if torch.jit.is_scripting() or torch.compiler.is_compiling():
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
    tile = min(rows, max(256, _MLP_TILE_BYTES // (4 * hidden)))
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
