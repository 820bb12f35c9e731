"""The mixer contract, for every mixer in the registry: shape-preserving on its declared layout,
gradients reach the input and every parameter, unknown options raise TypeError, meta device, torch.fx."""

from __future__ import annotations

import pytest
import torch
import torch.fx

from mixerzoo import plugins

DIM, HEADS, H, W = 32, 2, 14, 14
MIXERS = plugins.list_mixers()


def _example(spec: plugins.MixerSpec, device: str = "cpu") -> torch.Tensor:
    shape = {"nchw": (2, DIM, H, W), "nhwc": (2, H, W, DIM), "nlc": (2, H * W, DIM)}[spec.layout]
    return torch.randn(*shape, device=device)


def _call(mixer: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return mixer(x, hw=(H, W)) if getattr(mixer, "needs_hw", False) else mixer(x)


def test_builtins_present() -> None:
    assert {"attention", "pooling", "identity", "cbam", "triplet"} <= set(MIXERS)


@pytest.mark.parametrize("name", MIXERS)
def test_declares_contract(name: str) -> None:
    spec = plugins.mixer_spec(name)
    plugins.check_mixer_class(spec.cls)
    assert spec.kind in plugins.KINDS and spec.layout in plugins.LAYOUTS


@pytest.mark.parametrize("name", MIXERS)
def test_shape_preserving_with_gradients(name: str) -> None:
    spec = plugins.mixer_spec(name)
    mixer = plugins.create_mixer(name, DIM, num_heads=HEADS).train()
    x = _example(spec).requires_grad_(True)
    y = _call(mixer, x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    y.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    missing = [n for n, p in mixer.named_parameters() if p.grad is None]
    assert not missing, f"{name}: parameters without gradient {missing}"


@pytest.mark.parametrize("name", MIXERS)
def test_unknown_option_raises_type_error(name: str) -> None:
    with pytest.raises(TypeError):
        plugins.create_mixer(name, DIM, num_heads=HEADS, definitely_not_an_option=3)


@pytest.mark.parametrize("name", MIXERS)
def test_meta_device(name: str) -> None:
    spec = plugins.mixer_spec(name)
    with torch.device("meta"):
        mixer = plugins.create_mixer(name, DIM, num_heads=HEADS).eval()
    y = _call(mixer, _example(spec, "meta"))
    assert y.is_meta and y.shape == _example(spec, "meta").shape


@pytest.mark.parametrize("name", MIXERS)
def test_fx_trace_matches_eager(name: str) -> None:
    spec = plugins.mixer_spec(name)
    mixer = plugins.create_mixer(name, DIM, num_heads=HEADS).eval()
    if getattr(mixer, "needs_hw", False):
        pytest.skip("needs_hw mixers take a python tuple argument; traced inside their host backbone instead")
    from timm.models import get_notrace_functions, get_notrace_modules

    leaves = tuple(get_notrace_modules())

    class _Tracer(torch.fx.Tracer):  # timm's convention: registered notrace modules stay leaf calls
        def is_leaf_module(self, m: torch.nn.Module, qualname: str) -> bool:
            return isinstance(m, leaves) or super().is_leaf_module(m, qualname)

    # a mixer registered as an fx leaf (data-dependent kernel dispatch) is traced as one call inside a host
    root = torch.nn.Sequential(mixer) if isinstance(mixer, leaves) else mixer
    tracer = _Tracer(autowrap_functions=tuple(get_notrace_functions()))
    graph = tracer.trace(root)
    traced = torch.fx.GraphModule(root, graph)
    x = _example(spec)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), mixer(x))


@pytest.mark.parametrize("name", MIXERS)
def test_torch_compile_matches_eager(name: str) -> None:
    """Dynamo can capture the mixer (aot_eager backend: graph capture + autograd, no C++ build)."""
    spec = plugins.mixer_spec(name)
    mixer = plugins.create_mixer(name, DIM, num_heads=HEADS).eval()
    x = _example(spec)
    compiled = torch.compile(mixer, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(_call(compiled, x), _call(mixer, x), rtol=1e-4, atol=1e-5)
