"""``torch.jit.trace`` for one tiny variant of every family: the traced module matches eager at another batch size.

Fast paths that a trace cannot record (oneDNN's private fused ops in LITv2, BiFormer's in-place ``scatter_``,
FLatten's ``out=`` writes into views, loops over the batch) step aside while tracing; sizes read while tracing are
traced tensors, so host code that chooses a window from the map size converts them first.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import mixerzoo
from mixerzoo.zoo import get_entry

TINY = mixerzoo.list_models("test_*", include_test=True)
ONE_PER_FAMILY = sorted({get_entry(n).family: n for n in reversed(TINY)}.values())


@pytest.mark.parametrize("name", ONE_PER_FAMILY)
def test_jit_trace_matches_eager(name: str) -> None:
    model = mixerzoo.create_model(name).eval()
    size = model.pretrained_cfg["input_size"]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated in favour of compile/export
        traced = torch.jit.trace(model, torch.randn(1, *size), check_trace=False)
        x = torch.randn(2, *size)  # another batch size: nothing may have fixed it
        torch.testing.assert_close(traced(x), model(x), rtol=1e-4, atol=1e-5)


NOT_SCRIPTABLE = ["test_litv2", "test_flatten_swin", "test_flatten_pvt", "test_flatten_pvt_v2", "test_flatten_cswin"]


@pytest.mark.parametrize("name", NOT_SCRIPTABLE)
def test_jit_script_refuses_with_one_line(name: str) -> None:
    model = mixerzoo.create_model(name, device="meta")
    with pytest.raises(RuntimeError) as err, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(model)
    msg = str(err.value)
    assert f"mz_{name}" in msg and "torch.jit.trace" in msg and "\n" not in msg, msg
