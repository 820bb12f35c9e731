"""Shared loader for the official-code test vectors in ``tests/expect/{litv2,flatten}/`` (see the tests)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from torch import Tensor

EXPECT = Path(__file__).resolve().parent.parent / "expect"


def load_vector(rel: str) -> tuple[dict[str, Tensor], Tensor, Tensor]:
    """``(official state dict in fp32, input image, official logits)`` from one vector file.

    The file stores the official tiny model's weights (fp16-representable values, stored as fp16), a small
    input image (fp16) that is nearest-upsampled by the factor in the metadata, and the official fp32 logits.
    """
    with safe_open(str(EXPECT / rel), framework="pt") as f:
        factor = int(f.metadata()["upsample"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no iterator
    state = {k[len("state.") :]: (v.float() if v.is_floating_point() else v) for k, v in tensors.items() if k.startswith("state.")}
    image = tensors["input_small"].float().repeat_interleave(factor, 2).repeat_interleave(factor, 3)
    return state, image, tensors["logits"]
