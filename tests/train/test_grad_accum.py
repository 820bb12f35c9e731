"""--grad-accum-steps: the same global batch in micro-batches gives the same weights as one batch."""

from __future__ import annotations

import pytest
import torch

from mixerzoo.train import RecipeError
from mixerzoo.train._cli import recipe_from_args
from mixerzoo.train.loop import fit

from _train_helpers import TINY, make_image_folder


def test_accumulated_micro_batches_match_the_full_batch(tmp_path):
    data = make_image_folder(tmp_path / "data", n_per_class=6)  # per-sample norms (GroupNorm): batch-independent
    weights = {}
    for accum in (1, 4):
        recipe = recipe_from_args([*TINY, "--data", str(data), "--epochs", "1", "--no-save-model",
                                   "--grad-accum-steps", str(accum), "--opt", "sgd", "--lr", "0.5",  # SGD: the
                                   "--output", str(tmp_path / f"a{accum}")])  # gradient's scale matters
        result = fit(recipe)
        weights[accum] = {k: v.detach().clone() for k, v in result.model.state_dict().items()}
        assert result.history[-1]["global_step"] == 2  # optimizer steps do not depend on accumulation
    for k, v in weights[1].items():
        torch.testing.assert_close(weights[4][k], v, rtol=1e-5, atol=1e-6, msg=f"{k} differs with accumulation")


def test_accumulation_must_divide_the_batch():
    with pytest.raises(RecipeError, match="batch_size=6 is not divisible by grad_accum_steps=4"):
        recipe_from_args([*TINY, "--batch-size", "6", "--grad-accum-steps", "4"])
    with pytest.raises(RecipeError, match="grad_accum_steps must be in"):
        recipe_from_args([*TINY, "--grad-accum-steps", "0"])
