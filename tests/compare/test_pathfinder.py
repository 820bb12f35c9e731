"""The procedural Pathfinder task: deterministic for a seed, balanced, shaped, and its knobs matter."""

from __future__ import annotations

import numpy as np
import pytest

from mixerzoo.compare.pathfinder import PathfinderConfig, generate, parse_source, pathfinder_sources
from mixerzoo.train.recipe import RecipeError


def test_same_seed_same_images_other_seed_other_images() -> None:
    a, la = generate(64, seed=3)
    b, lb = generate(64, seed=3)
    c, _ = generate(64, seed=4)
    assert np.array_equal(a, b) and np.array_equal(la, lb)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("size", [32, 64])
def test_shapes_dtype_and_exact_balance(size: int) -> None:
    x, y = generate(200, size=size, seed=0)
    assert x.shape == (200, size, size) and x.dtype == np.uint8
    assert y.dtype == np.int64 and set(np.unique(y)) == {0, 1} and int(y.sum()) == 100
    x3, y3 = generate(200, size=size, seed=0, channels=3)
    assert x3.shape == (200, size, size, 3) and np.array_equal(x3[..., 1], x) and np.array_equal(y3, y)
    # two dots (255) and dashed curves (160) in every image, nothing else
    assert set(np.unique(x)) <= {0, 160, 255}
    assert ((x == 255).reshape(200, -1).sum(1) >= 1).all() and ((x == 160).reshape(200, -1).sum(1) > 5).all()


@pytest.mark.parametrize("knob", [{"gap": 5}, {"curvature": 1.0}, {"distractors": 4}, {"length": 2.0},
                                  {"dash": 4}, {"thickness": 2}])
def test_each_knob_changes_the_images(knob: dict[str, float]) -> None:
    base, _ = generate(32, seed=1)
    other, _ = generate(32, seed=1, **knob)
    assert not np.array_equal(base, other)


def test_more_gap_fewer_and_more_distractors_more_drawn_pixels() -> None:
    dense = (generate(128, seed=0, gap=0)[0] > 0).mean()
    sparse = (generate(128, seed=0, gap=4)[0] > 0).mean()
    crowded = (generate(128, seed=0, distractors=5)[0] > 0).mean()
    assert sparse < dense < crowded


def test_bad_knob_is_one_line_naming_it() -> None:
    with pytest.raises(ValueError, match=r"pathfinder gap must be an int in \[0, 1024\], got -1"):
        PathfinderConfig(gap=-1)
    with pytest.raises(ValueError, match="distractors"):
        generate(4, distractors=0)


def test_data_source_spec_and_recipe_data() -> None:
    cfg, n, n_val, seed = parse_source("pathfinder:64?n=100&val=20&seed=5&gap=3&curvature=0.5")
    assert (cfg.size, cfg.gap, cfg.curvature, n, n_val, seed) == (64, 3, 0.5, 100, 20, 5)
    from mixerzoo.train.data import open_sources

    train, val = open_sources("pathfinder:32?n=40&val=10")
    assert len(train) == 40 and len(val) == 10 and train.classes == ["disconnected", "connected"]
    assert train.load(0).shape == (32, 32, 3) and sum(train.labels) == 20
    assert not np.array_equal(np.stack(train.items[:10]), np.stack(val.items))  # independent seeds
    with pytest.raises(RecipeError, match=r"unknown or empty option 'wobble=2'"):
        pathfinder_sources("pathfinder:32?wobble=2")
    with pytest.raises(RecipeError, match=r"size must be an int"):
        pathfinder_sources("pathfinder:big")
