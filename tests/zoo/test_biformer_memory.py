"""BiFormer's memory-saving MLP sub-layer (``mixerzoo/zoo/biformer.py::_NormMlpFunction``).

It must compute exactly ``mlp(norm2(x))`` with the same gradients as eager autograd while saving only the
sub-layer input and fc1's output. Run: ``pytest tests/zoo/test_biformer_memory.py``.
"""

from __future__ import annotations

import torch
from torch import nn

from mixerzoo.zoo import biformer as bz


def _parts(dtype: torch.dtype = torch.float32) -> tuple[nn.LayerNorm, bz.Mlp]:
    torch.manual_seed(0)
    norm, mlp = nn.LayerNorm(6, eps=1e-6).to(dtype), bz.Mlp(6, 18).to(dtype)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.2, 0.2)
    return norm, mlp


def test_same_output_and_grads_as_eager() -> None:
    norm, mlp = _parts()
    x = torch.randn(2, 3, 4, 6)
    params = [*norm.parameters(), *mlp.parameters()]
    results = []
    for fn in (lambda t: mlp(norm(t)), lambda t: bz._norm_mlp(t, norm, mlp)):
        xs = x.clone().requires_grad_()
        y = fn(xs)
        grads = torch.autograd.grad((y * torch.linspace(-1, 1, 6)).sum(), [xs, *params])
        results.append((y, grads))
    (y0, g0), (y1, g1) = results
    assert y1.grad_fn is not None and "NormMlp" in type(y1.grad_fn).__name__  # the memory-saving path ran
    torch.testing.assert_close(y1, y0, rtol=0, atol=0)
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_gradcheck_fp64() -> None:
    norm, mlp = _parts(torch.float64)
    x = torch.randn(1, 2, 2, 6, dtype=torch.float64, requires_grad=True)
    params = (norm.weight, norm.bias, mlp.fc1.weight, mlp.fc1.bias, mlp.fc2.weight, mlp.fc2.bias)
    fn = lambda a, *p: bz._NormMlpFunction.apply(a, 1e-6, *p)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, *params))


def test_saves_input_and_hidden_only() -> None:
    norm, mlp = _parts()
    x = torch.randn(2, 4, 4, 6, requires_grad=True)
    saved: list[tuple[int, ...]] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(tuple(t.shape)) or t, lambda t: t):
        bz._norm_mlp(x, norm, mlp)
    activations = [s for s in saved if s[:-1] == (2, 4, 4)]
    assert sorted(activations) == [(2, 4, 4, 6), (2, 4, 4, 18)], saved  # x and fc1(x); eager keeps 4 tensors


def test_no_grad_and_inference_use_the_plain_modules() -> None:
    norm, mlp = _parts()
    x = torch.randn(1, 2, 2, 6)
    with torch.no_grad():
        y = bz._norm_mlp(x, norm, mlp)
    assert y.grad_fn is None
    torch.testing.assert_close(y, mlp(norm(x)).detach(), rtol=0, atol=0)
