"""``torch.fx`` feature extraction on the families whose mixers have shape-dependent code (padding, window and
kernel choices, fast-path dispatch): NAT, BiFormer, FLatten, LITv2.

Plain ``torch.fx.symbolic_trace`` stops at that code (``symbolically traced variables cannot be used as inputs to
control flow``). The supported way is the one timm uses for its own models: the modules and functions holding such
code are registered with ``timm.layers.register_notrace_module`` / ``register_notrace_function`` and traced as
leaves. timm's fx feature extractor (``features_only=True, feature_cls="fx"``, ``timm.models.create_feature_extractor``)
passes them to the tracer itself; torchvision's ``create_feature_extractor`` takes them as ``tracer_kwargs``.
"""

from __future__ import annotations

import pytest
import timm
import torch
from timm.models import get_notrace_functions, get_notrace_modules

import mixerzoo  # noqa: F401 - registers the mz_ models

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning")]

MODELS = [
    "mz_test_nat",
    "mz_test_dinat",
    "mz_test_nat_isotropic",
    "mz_test_biformer",
    "mz_test_biformer_stl",
    "mz_test_flatten_swin",
    "mz_test_flatten_pvt",
    "mz_test_flatten_pvt_v2",
    "mz_test_flatten_cswin",
    "mz_test_litv2",
]


def _input(model: torch.nn.Module) -> torch.Tensor:
    return torch.randn(2, *model.pretrained_cfg["input_size"])


def _stage_outputs(model: torch.nn.Module, stages: list[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each feature module's own eager output (NHWC families give NHWC maps, as timm's Swin does)."""
    out: dict[str, torch.Tensor] = {}
    hooks = [
        model.get_submodule(stage).register_forward_hook(lambda _m, _i, y, stage=stage: out.__setitem__(stage, y))
        for stage in stages
    ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return out


@pytest.mark.parametrize("name", MODELS)
def test_timm_fx_feature_extractor(name: str) -> None:
    fx_net = timm.create_model(name, features_only=True, feature_cls="fx").eval()
    model = timm.create_model(name).eval()
    prefix = "graph_module."
    state = {k[len(prefix) :]: v for k, v in fx_net.state_dict().items() if k.startswith(prefix)}
    assert not model.load_state_dict(state, strict=False).unexpected_keys  # the fx net: the model up to its features
    stages = fx_net.feature_info.module_name()
    x = _input(model)
    with torch.no_grad():
        got = fx_net(x)
    want = _stage_outputs(model, stages, x)
    assert len(got) == len(stages)
    for g, stage in zip(got, stages):
        torch.testing.assert_close(g, want[stage], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_torchvision_create_feature_extractor_with_timm_leaves(name: str) -> None:
    from torchvision.models.feature_extraction import create_feature_extractor

    model = timm.create_model(name).eval()
    stages = [info["module"] for info in model.feature_info]
    leaves = {"leaf_modules": list(get_notrace_modules()), "autowrap_functions": list(get_notrace_functions())}
    extractor = create_feature_extractor(model, return_nodes={stage: stage for stage in stages}, tracer_kwargs=leaves)
    x = _input(model)
    with torch.no_grad():
        got = extractor(x)
    want = _stage_outputs(model, stages, x)
    assert list(got) == stages
    for stage in stages:
        torch.testing.assert_close(got[stage], want[stage], atol=1e-5, rtol=1e-5)
