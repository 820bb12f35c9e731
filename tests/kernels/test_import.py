"""``import mixerzoo`` and every public kernel op must work where triton cannot be imported.

A fresh subprocess installs a ``sys.meta_path`` finder that makes ``import triton`` (and ``triton.*``)
raise ImportError, imports ``mixerzoo`` and ``mixerzoo.kernels``, checks triton was never imported, and
runs every op in ``mixerzoo.kernels._LAZY`` forward and backward on CPU with ``impl="auto"``.
A new public op needs an entry in ``SAMPLE_CALLS`` (the test fails until it has one).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

# name -> Python source of a call on CPU tensors (q, k, v from ``qkv(shape)``); must return a tensor
SAMPLE_CALLS = {
    "routed_attention": (
        "q, k, v = qkv((2, 4, 6, 2, 8)); "
        "out = K.routed_attention(q, k, v, torch.tensor([[0, 1], [1, 2], [2, 3], [3, 0]]).expand(2, 1, 4, 2), "
        "key_padding_mask=torch.zeros(1, 4, 6, dtype=torch.bool), impl='auto')"
    ),
    "linear_attention": "q, k, v = qkv((2, 10, 2, 8)); out = K.linear_attention(q, k, v, kernel='focused', impl='auto')",
    "neighborhood_attention_2d": "q, k, v = qkv((1, 7, 8, 2, 8)); out = K.neighborhood_attention_2d(q, k, v, 3, impl='auto')",
    "window_attention_2d": "q, k, v = qkv((1, 4, 6, 2, 8)); out = K.window_attention_2d(q, k, v, 2, impl='auto')",
    "window_attention_2d_qkv": (
        "q, k, v = qkv((1, 4, 6, 2, 8)); "
        "out = K.window_attention_2d_qkv(torch.stack((q, k, v), 3), 2, shift=1, impl='auto')"
    ),
}

SCRIPT = textwrap.dedent(
    """
    import importlib.abc, sys

    class _BlockTriton(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "triton" or name.startswith("triton."):
                raise ModuleNotFoundError(f"No module named {name!r} (blocked by test_import)", name=name)
            return None

    sys.meta_path.insert(0, _BlockTriton())
    import warnings
    warnings.simplefilter("error")  # no warnings at import
    import mixerzoo
    import mixerzoo.kernels as K
    warnings.resetwarnings()
    assert "triton" not in sys.modules, "importing mixerzoo imported triton"
    import torch
    torch.manual_seed(0)

    def qkv(shape):
        return [torch.randn(shape, requires_grad=True) for _ in range(3)]

    calls = CALLS
    missing = sorted(set(K._LAZY) - set(calls))
    assert not missing, f"add a sample call to tests/kernels/test_import.py for {missing}"
    for name in sorted(K._LAZY):
        ns = {"K": K, "torch": torch, "qkv": qkv}
        exec(calls[name], ns)
        out = ns["out"]
        assert torch.isfinite(out).all(), name
        out.square().mean().backward()
        assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in (ns["q"], ns["k"], ns["v"])), name
        print("ran", name, K.explain(name))
    assert "triton" not in sys.modules
    print("IMPORT-OK")
    """
)


def test_kernels_work_without_triton() -> None:
    code = SCRIPT.replace("CALLS", repr(SAMPLE_CALLS))
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "MIXERZOO_KERNEL_IMPL")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0 and "IMPORT-OK" in proc.stdout, f"{proc.stdout}\n{proc.stderr[-4000:]}"
    for name in SAMPLE_CALLS:
        assert f"ran {name}" in proc.stdout
