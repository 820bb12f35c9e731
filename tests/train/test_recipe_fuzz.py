"""Every numeric recipe key fed 0, -1, NaN, inf, huge and wrong-type values through the CLI, a YAML file and the
Recipe constructor: a one-line error naming the key (exit status 2, no traceback), or a value inside the key's
documented range. Nothing here trains: the command fails while the recipe is built."""

from __future__ import annotations

import math

import pytest

from mixerzoo.train import Recipe, RecipeError, build_recipe
from mixerzoo.train._cli import main, recipe_from_args
from mixerzoo.train.recipe import RANGES, field_types

NUMERIC = sorted(RANGES)
# keys for which 0 is a meaningful value (off / none / from the start); every other numeric key refuses 0
ZERO_OK = {"drop_path", "drop_rate", "freeze_stages", "workers", "hflip", "aug_ops", "aug_magnitude", "reprob",
           "mixup", "cutmix", "mixup_prob", "mixup_switch_prob", "smoothing", "momentum", "weight_decay",
           "warmup_epochs", "warmup_lr", "min_lr", "ema_decay", "seed", "ckpt_every"}
BASE = ["--model", "test_poolformer", "--lr", "1e-3"]


def test_the_table_covers_every_numeric_key():
    from mixerzoo.train.recipe import _base_type

    numeric = {k for k, t in field_types().items() if _base_type(t)[0] in (int, float)}
    assert numeric == set(RANGES)


def _cli_error(capsys, key, values):
    flag = "--" + key.replace("_", "-")
    given = [f"{flag}={values[0]}"] if len(values) == 1 else [flag, *values]  # '=' so '-inf' is a value
    base = BASE if key != "lr" else BASE[:2]
    argv = ["train", *base, *given, "--output", "/nonexistent/never-written"]
    try:
        recipe_from_args(argv[1:])
    except RecipeError as e:
        msg = str(e)
        assert "\n" not in msg and key in msg, msg
        code = main(argv)
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and key in err and "Traceback" not in err, err
        return msg
    return None


@pytest.mark.parametrize("key", NUMERIC)
def test_cli_numeric_key_fuzz(capsys, key):
    is_int = field_types()[key] in (int, int | None)
    huge = "1" + "0" * 30 if is_int else "1e30"
    for value in ("-1", "nan", "inf", "-inf", huge, "abc", "1e400", ""):
        assert _cli_error(capsys, key, [value]) is not None, f"--{key} {value!r} was accepted"
    zero = _cli_error(capsys, key, ["0"])
    assert (zero is None) == (key in ZERO_OK), f"--{key} 0: {zero}"


@pytest.mark.parametrize("key", ["scale", "ratio"])
def test_cli_pair_fuzz(capsys, key):
    for lo, hi in (("0", "1"), ("-1", "1"), ("-0.5", "1"), ("nan", "1"), ("0.5", "inf"), ("1e30", "1e30"), ("abc", "1"),
                   ("0.9", "0.5")):
        assert _cli_error(capsys, key, [lo, hi]) is not None, f"--{key} {lo} {hi} was accepted"
    assert _cli_error(capsys, key, ["0.5", "1"]) is None


@pytest.mark.parametrize("key", NUMERIC)
def test_yaml_and_python_numeric_key_fuzz(tmp_path, key):
    cfg = tmp_path / "r.yaml"
    for text, value in (("-1", -1), (".nan", math.nan), ("1.0e+300", 1e300), ("abc", "abc"), ("true", True),
                        ("[1, 2]", [1, 2]), (".inf", math.inf)):
        cfg.write_text(f"model: test_poolformer\nlr: 0.001\n{key}: {text}\n")
        with pytest.raises(RecipeError) as e:
            build_recipe(config=cfg)
        assert key in str(e.value) and "\n" not in str(e.value)
        with pytest.raises(RecipeError) as e:
            Recipe(**{"lr": 1e-3, key: value})
        assert key in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(("flags", "expect"), [
    (["--clip-grad", "-1"], "clip_grad must be in (0, "),   # reversed gradients
    (["--clip-grad", "0"], "use none to disable clipping"),
    (["--ema-decay", "2"], "ema_decay must be in [0, 1], got 2.0"),  # a chance-level export
    (["--weight-decay", "-0.05"], "weight_decay must be in [0, 100], got -0.05"),
    (["--warmup-epochs", "-1"], "warmup_epochs must be in [0, "),
    (["--crop-pct", "0"], "crop_pct must be in (0, 1], got 0.0"),  # 3e15-byte OpenCV resize
    (["--crop-pct", "1.5"], "crop_pct must be in (0, 1], got 1.5"),
    (["--img-size", "0"], "img_size must be in [1, 8192], got 0"),
    (["--min-lr", "0.01"], "min_lr=0.01 is above the learning rate 0.001 (lr)"),
])
def test_issue_values_are_refused(flags, expect):
    with pytest.raises(RecipeError) as e:
        recipe_from_args([*BASE, *flags])
    assert expect in str(e.value)


def test_optional_keys_accept_none():
    r = recipe_from_args([*BASE, "--clip-grad", "none", "--img-size", "null", "--crop-pct", "none"])
    assert (r.clip_grad, r.img_size, r.crop_pct) == (None, None, None)


def test_usage_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", *BASE, "--lr", "-inf"])  # argparse reads '-inf' as an option
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and "--lr" in err, err
