"""Shared fixtures-as-functions for tests/train: tiny image folders and a subprocess environment."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def make_image_folder(root: Path, n_per_class: int = 8, classes: tuple[str, ...] = ("a", "b"), size: int = 16,
                      seed: int = 0) -> Path:
    """``root/<class>/<i>.png``: class ``a`` bright top half, class ``b`` bright bottom half (learnable)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            img = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
            half = slice(0, size // 2) if c % 2 == 0 else slice(size // 2, size)
            img[half] += np.uint8(150 + 40 * (c // 2))
            Image.fromarray(img).save(d / f"{i}.png")
    return root


def subprocess_env() -> dict[str, str]:
    """Deterministic, single-threaded children that import this checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    env["MKL_NUM_THREADS"] = "1"
    env.pop("WORLD_SIZE", None)
    env.pop("RANK", None)
    return env


PYTHON = sys.executable

# Flags for tiny deterministic runs: no mixup (batch-level, not DDP-equivalent), tiny model, no workers.
TINY = ["--model", "test_poolformer", "--img-size", "16", "--batch-size", "4", "--workers", "0",
        "--mixup", "0", "--cutmix", "0", "--drop-path", "0", "--quiet", "--warmup-epochs", "0.5",
        "--lr", "1e-3"]
