"""CBAM and triplet-attention gates: semantics against straightforward re-statements of the maths,
contract (kind, layout, options), init quirks, and the paths a mixer must support (meta, bf16, fx, compile)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from mixerzoo.plugins import create_mixer, list_mixers, mixer_spec
from mixerzoo.plugins.gates import CBAM, TripletAttention, ZPoolGate


def _randomize(gate: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial parameters and BN statistics (the init's zero BN weight would hide the spatial maps)."""
    g = torch.Generator().manual_seed(seed)
    for name, t in gate.state_dict().items():
        if not t.is_floating_point():
            continue
        if name.endswith("running_var"):
            t.copy_(torch.rand(t.shape, generator=g) + 0.5)
        elif name.endswith(("bn.weight",)):
            t.copy_(torch.rand(t.shape, generator=g) + 0.5)
        else:
            t.copy_(torch.randn(t.shape, generator=g) * 0.3)
    return gate


def _zpool_gate_ref(t: torch.Tensor, zg: ZPoolGate) -> torch.Tensor:
    """sigmoid(BN(conv([max over dim 1, mean over dim 1]))) — Z-pool with max first; eval-mode BN."""
    z = torch.cat([t.max(dim=1, keepdim=True).values, t.mean(dim=1, keepdim=True)], dim=1)
    s = F.conv2d(z, zg.conv.weight, padding=zg.conv.padding)
    bn = zg.bn
    s = (s - bn.running_mean.view(1, -1, 1, 1)) / torch.sqrt(bn.running_var.view(1, -1, 1, 1) + bn.eps)
    s = s * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)
    return torch.sigmoid(s)


def cbam_ref(x: torch.Tensor, gate: CBAM) -> torch.Tensor:
    """CBAM from the paper's equations (official order): channel gate, then spatial gate on its output."""
    ch = gate.channel

    def mlp(v: torch.Tensor) -> torch.Tensor:
        return F.linear(torch.relu(F.linear(v, ch.fc1.weight, ch.fc1.bias)), ch.fc2.weight, ch.fc2.bias)

    avg = F.adaptive_avg_pool2d(x, 1).flatten(1)
    mx = F.adaptive_max_pool2d(x, 1).flatten(1)
    x1 = x * torch.sigmoid(mlp(avg) + mlp(mx)).view(x.shape[0], -1, 1, 1)
    if gate.spatial is None:
        return x1
    return x1 * _zpool_gate_ref(x1, gate.spatial)


def triplet_ref(x: torch.Tensor, gate: TripletAttention) -> torch.Tensor:
    """Triplet attention as the official data flow: permute, gate over dim 1, permute back, average."""
    t1 = x.permute(0, 2, 1, 3)  # (B, H, C, W): pool over H, conv on C×W
    b1 = (t1 * _zpool_gate_ref(t1, gate.cw)).permute(0, 2, 1, 3)
    t2 = x.permute(0, 3, 2, 1)  # (B, W, H, C): pool over W, conv on H×C
    b2 = (t2 * _zpool_gate_ref(t2, gate.hc)).permute(0, 3, 2, 1)
    if gate.hw is None:
        return (b1 + b2) / 2
    b3 = x * _zpool_gate_ref(x, gate.hw)
    return (b1 + b2 + b3) / 3


SHAPES = [(2, 32, 5, 9), (1, 48, 12, 7), (3, 16, 1, 6)]


def test_registered_as_gates() -> None:
    assert {"cbam", "triplet"} <= set(list_mixers(kind="gate", layout="nchw"))
    for name, cls in (("cbam", CBAM), ("triplet", TripletAttention)):
        spec = mixer_spec(name)
        assert spec.cls is cls and spec.kind == "gate" and spec.layout == "nchw" and spec.builtin


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("opts", [{}, {"reduction": 8, "kernel_size": 3}, {"no_spatial": True}])
def test_cbam_matches_restatement(shape: tuple[int, ...], opts: dict) -> None:
    torch.manual_seed(0)
    gate = _randomize(create_mixer("cbam", shape[1], **opts)).eval()
    x = torch.randn(shape)
    with torch.no_grad():
        torch.testing.assert_close(gate(x), cbam_ref(x, gate), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("opts", [{}, {"kernel_size": 3}, {"no_spatial": True}])
def test_triplet_matches_permute_restatement(shape: tuple[int, ...], opts: dict) -> None:
    torch.manual_seed(0)
    gate = _randomize(create_mixer("triplet", shape[1], **opts)).eval()
    x = torch.randn(shape)
    with torch.no_grad():
        torch.testing.assert_close(gate(x), triplet_ref(x, gate), rtol=1e-5, atol=1e-6)


def test_pooling_order_is_max_first() -> None:
    """A conv that reads only input channel 0 must see the max (official ChannelPool/ZPool order)."""
    zg = ZPoolGate(1).eval()
    with torch.no_grad():
        zg.conv.weight.copy_(torch.tensor([1.0, 0.0]).view(1, 2, 1, 1))
        zg.bn.weight.fill_(1.0)
    x = torch.randn(2, 8, 4, 5)
    cbam = CBAM(8, reduction=8, kernel_size=1).eval()
    cbam.spatial.load_state_dict(zg.state_dict())
    with torch.no_grad():
        ones = torch.ones(2, 8, 1, 1)
        cbam.channel.forward = lambda t: ones  # type: ignore[method-assign]  # isolate the spatial gate
        expected = x * torch.sigmoid(x.amax(1, keepdim=True) / (1 + 1e-5) ** 0.5)
        torch.testing.assert_close(cbam(x), expected)


def test_triplet_branch_orientation() -> None:
    """Each branch pools the documented dim: cw over H, hc over W, hw over C (checked one branch at a time)."""
    x = torch.randn(2, 6, 5, 7)
    gate = _randomize(TripletAttention(6)).eval()
    with torch.no_grad():
        for keep in ("cw", "hc", "hw"):
            g = _randomize(TripletAttention(6), seed=1).eval()
            for name in ("cw", "hc", "hw"):
                if name != keep:  # a branch whose map is sigmoid(-inf) = 0 contributes nothing
                    getattr(g, name).bn.bias.fill_(-1e4)
            z = {"cw": (x.amax(2), x.mean(2)), "hc": (x.amax(3).transpose(1, 2), x.mean(3).transpose(1, 2)),
                 "hw": (x.amax(1), x.mean(1))}[keep]  # fmt: skip
            zg = getattr(g, keep)
            m = torch.sigmoid(zg.bn(zg.conv(torch.stack(z, 1))))[:, 0]
            m = {"cw": m[:, :, None, :], "hc": m.transpose(1, 2)[:, :, :, None], "hw": m[:, None]}[keep]
            torch.testing.assert_close(g(x), x * m / 3)
    assert gate(x).shape == x.shape


def test_init_quirks() -> None:
    c = CBAM(32)
    assert torch.equal(c.spatial.bn.weight, torch.zeros(1))  # official key contains "SpatialGate"
    assert (c.spatial.bn.momentum, c.spatial.bn.eps) == (0.01, 1e-5)
    assert torch.equal(c.channel.fc1.bias, torch.zeros(2)) and c.channel.fc1.bias.shape == (2,)
    t = TripletAttention(32)
    assert torch.equal(t.hw.bn.weight, torch.zeros(1))  # official SpatialGate branch
    assert torch.equal(t.cw.bn.weight, torch.ones(1)) and torch.equal(t.hc.bn.weight, torch.ones(1))
    assert all(z.bn.momentum == 0.01 and z.bn.eps == 1e-5 and z.conv.bias is None for z in (t.cw, t.hc, t.hw))
    assert sum(p.numel() for p in t.parameters()) == 3 * (98 + 2)
    assert t.cw.conv.weight.shape == (1, 2, 7, 7)


def test_options_and_errors() -> None:
    assert create_mixer("cbam", 64, num_heads=4).channel.fc1.out_features == 4  # num_heads ignored
    assert create_mixer("triplet", 64, num_heads=4, kernel_size=3).cw.conv.weight.shape == (1, 2, 3, 3)
    with pytest.raises(TypeError):
        create_mixer("cbam", 64, heads=2)
    with pytest.raises(TypeError):
        create_mixer("triplet", 64, reduction=16)
    with pytest.raises(ValueError, match="reduction=16.*dim=8"):
        create_mixer("cbam", 8)
    with pytest.raises(ValueError, match="kernel_size=4"):
        create_mixer("triplet", 8, kernel_size=4)


class _FullSizeCounter(TorchDispatchMode):
    """Counts the ops whose output has as many elements as the gate's input (materialised full tensors)."""

    def __init__(self, numel: int) -> None:
        super().__init__()
        self.numel, self.ops = numel, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor) and out.numel() >= self.numel:
            self.ops.append(str(func))
        return out


def test_no_full_size_permuted_copies() -> None:
    x = torch.randn(2, 16, 6, 10)
    for gate, most in ((TripletAttention(16).eval(), 3), (CBAM(16).eval(), 2)):
        with torch.no_grad(), _FullSizeCounter(x.numel()) as c:
            gate(x)
        full = [op for op in c.ops if "view" not in op and "permute" not in op and "transpose" not in op]
        assert len(full) <= most, full  # triplet: (g_cw + g_hc), + g_hw, x * scale; official code makes 10+


@pytest.mark.parametrize("name", ["cbam", "triplet"])
def test_backward_every_parameter(name: str) -> None:
    gate = create_mixer(name, 32).train()
    _randomize(gate)
    x = torch.randn(2, 32, 7, 9, requires_grad=True)
    gate(x).square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for pname, p in gate.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", ["cbam", "triplet"])
def test_meta_bf16_fx_compile(name: str) -> None:
    with torch.device("meta"):
        g = create_mixer(name, 32)
        assert g(torch.empty(2, 32, 7, 9)).shape == (2, 32, 7, 9)
    gate = _randomize(create_mixer(name, 32)).eval()
    x = torch.randn(2, 32, 7, 9)
    with torch.no_grad():
        ref = gate(x)
        y = copy.deepcopy(gate).to(torch.bfloat16)(x.bfloat16())
        assert y.dtype == torch.bfloat16
        torch.testing.assert_close(y.float(), ref, rtol=5e-2, atol=5e-2)
        traced = torch.fx.symbolic_trace(gate)
        torch.testing.assert_close(traced(x), ref)
        compiled = torch.compile(gate, backend="aot_eager", fullgraph=True)
        torch.testing.assert_close(compiled(x), ref)


@pytest.mark.parametrize("name", ["cbam", "triplet"])
@pytest.mark.parametrize("grad", [False, True])
def test_channels_last_same_result_and_format(name: str, grad: bool) -> None:
    """The channels_last path (reductions on the NHWC view) matches the re-statement and keeps the format."""
    gate = _randomize(create_mixer(name, 32)).eval()
    x = torch.randn(2, 32, 6, 11)
    ref = (cbam_ref if name == "cbam" else triplet_ref)(x, gate).detach()
    xl = x.contiguous(memory_format=torch.channels_last).requires_grad_(grad)
    with torch.set_grad_enabled(grad):
        y = gate(xl)
        traced = torch.fx.symbolic_trace(gate)(xl)
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y.detach(), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(traced.detach(), ref, rtol=1e-5, atol=1e-6)
    if grad:
        y.sum().backward()
        g_ref = torch.autograd.grad((cbam_ref if name == "cbam" else triplet_ref)(x.requires_grad_(), gate).sum(), x)[0]
        torch.testing.assert_close(xl.grad, g_ref, rtol=1e-4, atol=1e-5)
