"""Pathfinder: "are the two dots connected by one dashed path?", generated procedurally from a seed.

After the Pathfinder task of Linsley et al., "Learning long-range spatial dependencies with horizontal gated
recurrent units" (NeurIPS 2018), as used in the Long Range Arena (Tay et al., arXiv:2011.04006). Every image
shows ``1 + distractors`` dashed curves and two dots, each dot at one end of a curve. Label 1 ("connected"):
both dots lie at the two ends of the *same* curve. Label 0: they lie on two different curves. Both classes have
the same number of curves, dots and dashes, so the only cue is whether one can follow a dashed line from one dot
to the other, which needs information from the whole image: local texture does not tell (the reason token
mixers differ on it).

Generation is vectorised numpy (about 5,000 images at 32² in well under a second), deterministic for a seed
(the same seed and knobs give byte-identical images on every platform numpy supports), with exactly balanced
labels. Images are ``uint8`` ``(N, size, size)`` grayscale, or ``(N, size, size, 3)`` with ``channels=3``.

Difficulty knobs (:class:`PathfinderConfig`):

* ``length``: the arc length of each curve as a fraction of the image side (longer: harder).
* ``curvature``: standard deviation, in radians, of the turn between consecutive segments (more: harder).
* ``segment``: segment length in pixels (the curve is a random walk of such segments, folded back at the borders).
* ``dash`` / ``gap``: pixels drawn / skipped along each curve (a larger gap is harder to follow).
* ``distractors``: curves besides the one carrying the first dot (at least 1, so that a negative exists;
  more: harder).
* ``thickness``: stroke width in pixels; ``dot``: side of the square dots in pixels.

As a data source of the training recipe: ``pathfinder:32`` or ``pathfinder:64?n=4000&val=800&seed=0&gap=3``
(any knob as a query option; ``n`` training images, ``val`` validation images generated from an independent
seed). Digit-style recipe defaults fit it: no random-resized crop, no mixup/cutmix (``mixerzoo compare``
applies :data:`RECIPE_DEFAULTS` to pathfinder data).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["RECIPE_DEFAULTS", "PathfinderConfig", "generate", "parse_source", "pathfinder_sources"]

# Recipe values suited to the task (the curves must stay whole: no crops that cut a dot, no mixing of images)
RECIPE_DEFAULTS: dict[str, Any] = {
    "crop_pct": 1.0,
    "scale": (1.0, 1.0),
    "ratio": (1.0, 1.0),
    "hflip": 0.5,
    "aug": "none",
    "reprob": 0.0,
    "mixup": 0.0,
    "cutmix": 0.0,
    "smoothing": 0.0,
    "batch_size": 64,
    "lr": 2e-3,
    "warmup_epochs": 1.0,
    "epochs": 10,
}


@dataclass(frozen=True)
class PathfinderConfig:
    """The difficulty knobs (see the module docstring)."""

    size: int = 32
    length: float = 1.2
    curvature: float = 0.35
    segment: float = 2.0
    dash: int = 2
    gap: int = 2
    distractors: int = 2
    thickness: int = 1
    dot: int = 3

    def __post_init__(self) -> None:
        checks = {
            "size": (self.size, 8, 1024), "length": (self.length, 0.05, 20.0), "curvature": (self.curvature, 0.0, 3.2),
            "segment": (self.segment, 0.5, 64.0), "dash": (self.dash, 1, 1024), "gap": (self.gap, 0, 1024),
            "distractors": (self.distractors, 1, 64), "thickness": (self.thickness, 1, 16), "dot": (self.dot, 1, 32),
        }  # fmt: skip
        for name, (value, lo, hi) in checks.items():
            integer = isinstance(lo, int)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (not integer or
                                                                                     isinstance(value, int))
            if not ok or not (lo <= value <= hi) or (isinstance(value, float) and not math.isfinite(value)):
                kind = "an int" if integer else "a number"
                raise ValueError(f"pathfinder {name} must be {kind} in [{lo}, {hi}], got {value!r}")


def _fold(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Reflect coordinates into ``[lo, hi]`` (a curve leaving the image bounces back off the border)."""
    w = hi - lo
    t = np.mod(x - lo, 2 * w)
    return lo + (w - np.abs(t - w))


def generate(n: int, config: PathfinderConfig | None = None, *, seed: int = 0, channels: int = 1,
             **knobs: Any) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images and their labels (``n // 2`` of each class when ``n`` is even; the odd one is a 1).

    Args:
        n: number of images.
        config: the knobs; or pass them as keyword arguments (``size=64, gap=3``).
        seed: the whole output is a function of ``(seed, config, n)``.
        channels: 1 (``(N, H, W)``) or 3 (``(N, H, W, 3)``, the gray value repeated).

    Returns:
        ``(images uint8, labels int64)``.
    """
    cfg = dataclasses.replace(config or PathfinderConfig(), **knobs)
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"pathfinder n must be a positive int, got {n!r}")
    if channels not in (1, 3):
        raise ValueError(f"pathfinder channels must be 1 or 3, got {channels!r}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x9A7F]))
    size, k = cfg.size, 1 + cfg.distractors
    margin = cfg.dot / 2 + 1.0
    lo, hi = margin, size - 1 - margin
    n_seg = max(1, round(cfg.length * size / cfg.segment))

    # curves: random walks with a smoothly turning heading, folded back into the image
    start = rng.uniform(lo, hi, size=(n, k, 1, 2))
    heading = rng.uniform(0, 2 * np.pi, size=(n, k, 1)) + np.cumsum(
        rng.normal(0.0, cfg.curvature, size=(n, k, n_seg)), axis=-1)
    steps = cfg.segment * np.stack([np.cos(heading), np.sin(heading)], axis=-1)  # (n, k, S, 2)
    verts = np.concatenate([start, start + np.cumsum(steps, axis=2)], axis=2)  # (n, k, S+1, 2), unfolded
    # dense samples along each segment (< half a pixel apart), their arc length decides dash or gap
    sub = max(2, math.ceil(cfg.segment * 2))
    frac = np.arange(sub) / sub
    a, b = verts[:, :, :-1, None, :], verts[:, :, 1:, None, :]
    pts = (a + (b - a) * frac[None, None, None, :, None]).reshape(n, k, n_seg * sub, 2)
    pts = np.concatenate([pts, verts[:, :, -1:, :]], axis=2)
    arc = np.arange(pts.shape[2]) * (cfg.segment / sub)
    on = np.mod(arc, cfg.dash + cfg.gap) < cfg.dash  # (P,)
    pts = _fold(pts, lo, hi)
    ends = pts[:, :, [0, -1], :]  # (n, k, 2, 2): the folded end points

    img = np.zeros((n, size, size), dtype=np.uint8)
    ii = np.broadcast_to(np.arange(n)[:, None, None], (n, k, int(on.sum()))).ravel()
    drawn = pts[:, :, on, :]
    off = np.arange(cfg.thickness) - (cfg.thickness - 1) // 2
    for dy in off:
        for dx in off:
            y = np.clip(np.rint(drawn[..., 1]).astype(np.int64) + dy, 0, size - 1).ravel()
            x = np.clip(np.rint(drawn[..., 0]).astype(np.int64) + dx, 0, size - 1).ravel()
            img[ii, y, x] = 160

    # labels: exactly balanced, in a seeded order; positives: both ends of curve 0, negatives: one end of curve 0
    # and one end of curve 1
    labels = (np.arange(n) < (n + 1) // 2).astype(np.int64)
    rng.shuffle(labels)
    dot1 = ends[:, 0, 0, :]
    dot2 = np.where(labels[:, None] == 1, ends[:, 0, 1, :], ends[:, 1, 1, :])
    d_off = np.arange(cfg.dot) - (cfg.dot - 1) // 2
    rows = np.arange(n)
    for dot in (dot1, dot2):
        cy, cx = np.rint(dot[:, 1]).astype(np.int64), np.rint(dot[:, 0]).astype(np.int64)
        for dy in d_off:
            for dx in d_off:
                img[rows, np.clip(cy + dy, 0, size - 1), np.clip(cx + dx, 0, size - 1)] = 255
    if channels == 3:
        img = np.repeat(img[..., None], 3, axis=-1)
    return img, labels


# ------------------------------------------------------------------------------------------- data source

_INT_KNOBS = {"dash", "gap", "distractors", "thickness", "dot"}
_FLOAT_KNOBS = {"length", "curvature", "segment"}
_OPTIONS = ("n", "val", "seed", *sorted(_INT_KNOBS | _FLOAT_KNOBS))


def parse_source(spec: str) -> tuple[PathfinderConfig, int, int, int]:
    """``'pathfinder:64?n=4000&gap=3'`` → (config, n_train, n_val, seed); ValueError (one line) on a bad spec."""
    if not spec.startswith("pathfinder:"):
        raise ValueError(f"data {spec!r}: a pathfinder source is 'pathfinder:SIZE[?n=N&val=N&seed=S&KNOB=V...]'")
    body, _, query = spec[len("pathfinder:"):].partition("?")
    try:
        size = int(body)
    except ValueError:
        raise ValueError(f"data {spec!r}: size must be an int such as 32 or 64, got {body!r}") from None
    knobs: dict[str, Any] = {}
    n, n_val, seed = 4000, None, 0
    for part in filter(None, query.split("&")):
        key, eq, value = part.partition("=")
        if key not in _OPTIONS or not eq or not value:
            raise ValueError(f"data {spec!r}: unknown or empty option {part!r} (options: "
                             f"{', '.join(k + '=...' for k in _OPTIONS)})")
        try:
            num: Any = float(value) if key in _FLOAT_KNOBS else int(value)
        except ValueError:
            raise ValueError(f"data {spec!r}: option {key} must be a number, got {value!r}") from None
        if key == "n":
            n = num
        elif key == "val":
            n_val = num
        elif key == "seed":
            seed = num
        else:
            knobs[key] = num
    if n < 2 or (n_val is not None and n_val < 2) or seed < 0:
        raise ValueError(f"data {spec!r}: n and val must be >= 2 and seed >= 0")
    return PathfinderConfig(size=size, **knobs), n, n_val if n_val is not None else max(2, n // 5), seed


def pathfinder_sources(spec: str) -> tuple[Any, Any]:
    """(train, val) :class:`mixerzoo.train.data.Source` of a ``pathfinder:`` data spec (3-channel images)."""
    from mixerzoo.train.data import Source
    from mixerzoo.train.recipe import RecipeError

    try:
        cfg, n, n_val, seed = parse_source(spec)
    except ValueError as e:
        raise RecipeError(str(e)) from None
    classes = ["disconnected", "connected"]
    x, y = generate(n, cfg, seed=seed, channels=3)
    xv, yv = generate(n_val, cfg, seed=seed + 1_000_003, channels=3)
    return (Source(list(x), y.tolist(), classes, f"pathfinder{cfg.size}/train"),
            Source(list(xv), yv.tolist(), classes, f"pathfinder{cfg.size}/val"))
