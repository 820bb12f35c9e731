"""The typed training recipe: one dataclass whose fields are the CLI flags and the YAML keys.

Defaults follow DeiT (arXiv:2012.12877) and PoolFormer (arXiv:2111.11418): AdamW, lr 1e-3 per 1024 images
(linearly scaled with the global batch), weight decay 0.05, cosine schedule with 5 warm-up epochs from 1e-6
down to 1e-5, label smoothing 0.1, Mixup 0.8 / CutMix 1.0, a RandAugment-style policy, random erasing 0.25
and a per-model drop-path rate. Layers of defaults, later ones win:

    Recipe() < family defaults (by model name) < mode defaults (finetune) < data defaults (digits)
             < YAML file < flags given on the command line
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import math
import types
import typing
from dataclasses import InitVar, dataclass, field, fields
from pathlib import Path
from typing import Any

__all__ = [
    "FAMILY_DEFAULTS",
    "FINETUNE_DEFAULTS",
    "DIGITS_DEFAULTS",
    "RANGES",
    "Range",
    "Recipe",
    "RecipeError",
    "build_recipe",
    "load_yaml",
    "recipe_fields",
]


class RecipeError(ValueError):
    """A bad recipe, flag, data source or model name. The message is one line meant for a person."""


def _f(default: Any, help: str, **kw: Any) -> Any:  # noqa: A002 - mirrors argparse's keyword
    if isinstance(default, (list, tuple)):
        return field(default_factory=lambda d=tuple(default): d, metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class Recipe:
    """Everything that defines a training or fine-tuning run. Field ``foo_bar`` is the flag ``--foo-bar``."""

    # model
    model: str | None = _f(None, "model name (mixerzoo name, mz_ name, timm name, hf-hub:org/repo, local-dir:/path)")
    pretrained: bool = _f(False, "start from the model's pretrained weights")
    checkpoint: str | None = _f(None, "initial weights: a .safetensors file or a hub folder (fine-tuning)")
    num_classes: int | None = _f(None, "number of classes (default: taken from the data)")
    in_chans: int = _f(3, "input channels")
    drop_path: float | None = _f(None, "stochastic depth rate (default: per model family)")
    drop_rate: float = _f(0.0, "dropout before the classifier")
    freeze_stages: int = _f(0, "fine-tuning: freeze the stem and the first N stages (group_matcher groups)")
    # the model spec (mixerzoo.spec.ModelSpec): checked on the meta device before any data is read
    mixers: str | list[str] | None = _f(None, "token mixers: one name for every stage, or one per stage "
                                              "(A,B,C,D); built-in or third-party (see `mixerzoo list mixers`)",
                                        spec=True)
    mixer_options: dict[str, Any] | list[dict[str, Any]] | None = _f(
        None, "mixer options: JSON (an object, or one per stage), or key=value[,key=value] with ';' between "
              "stages, e.g. ';;kernel_size=5;n_win=2,topk=2'", spec=True)
    model_args: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "architecture overrides of the family's config: key=value ... (values are JSON literals), e.g. "
                "depths=[1,1,2,1] dims=[32,64,96,128]", "spec": True})
    # data
    data: str = _f("digits", "'digits' (bundled, no download), an ImageFolder directory, a .csv/.json manifest, "
                           "hfds:PATH (Hugging Face datasets), wds:SHARDS (WebDataset tar shards, streamed) or "
                           "pathfinder:32|64 (procedural, no download)")
    val_data: str | None = _f(None, "separate validation source (default: the data's own val split)")
    val_split: float = _f(0.1, "fraction held out for validation when the data has no split")
    verify_images: bool = _f(True, "decode every file once at start and skip unreadable ones (off: substitute on failure)")
    img_size: int | None = _f(None, "input resolution (default: the model's pretrained cfg)")
    crop_pct: float | None = _f(None, "eval centre-crop fraction (default: the model's pretrained cfg)")
    interpolation: str | None = _f(None, "resize interpolation: bicubic, bilinear, nearest, area (default: model cfg)")
    batch_size: int = _f(128, "global batch size per optimizer step (split across processes and accumulation steps)")
    grad_accum_steps: int = _f(1, "split each process's batch into N micro-batches: N backward passes, one optimizer "
                                  "step (same batch and result, less memory)")
    workers: int = _f(2, "DataLoader worker processes per process")
    scale: tuple[float, float] = _f((0.08, 1.0), "random-resized-crop area range", nargs=2)
    ratio: tuple[float, float] = _f((0.75, 4.0 / 3.0), "random-resized-crop aspect range", nargs=2)
    hflip: float = _f(0.5, "horizontal flip probability")
    aug: str = _f("rand", "augment policy: 'rand' (A.SomeOf over RandAugment-like ops) or 'none'")
    aug_ops: int = _f(2, "ops applied per image by the 'rand' policy")
    aug_magnitude: int = _f(9, "magnitude 0..10 of the 'rand' policy")
    reprob: float = _f(0.25, "random erasing probability")
    mixup: float = _f(0.8, "mixup alpha (0 disables)")
    cutmix: float = _f(1.0, "cutmix alpha (0 disables)")
    mixup_prob: float = _f(1.0, "probability of applying mixup or cutmix to a batch")
    mixup_switch_prob: float = _f(0.5, "probability of cutmix instead of mixup when both are on")
    smoothing: float = _f(0.1, "label smoothing")
    # optimisation
    epochs: int = _f(300, "number of epochs")
    opt: str = _f("adamw", "optimizer name for timm.optim.create_optimizer_v2")
    lr: float | None = _f(None, "absolute learning rate (default: lr_base * batch_size / lr_base_size)")
    lr_base: float = _f(1e-3, "learning rate per lr_base_size images")
    lr_base_size: int = _f(1024, "batch size that lr_base refers to")
    opt_eps: float = _f(1e-8, "optimizer epsilon")
    momentum: float = _f(0.9, "momentum (SGD-type optimizers)")
    weight_decay: float = _f(0.05, "weight decay (not applied to norms, biases and no_weight_decay())")
    layer_decay: float | None = _f(None, "layer-wise lr decay through group_matcher (fine-tuning)")
    sched: str = _f("cosine", "scheduler name for timm.scheduler.create_scheduler_v2")
    warmup_epochs: float = _f(5.0, "warm-up epochs (linear from warmup_lr)")
    warmup_lr: float = _f(1e-6, "learning rate at the start of warm-up")
    min_lr: float = _f(1e-5, "final learning rate")
    clip_grad: float | None = _f(None, "clip the gradient norm to this value")
    ema: bool = _f(False, "keep an exponential moving average of the weights (timm ModelEmaV3); exported if on")
    ema_decay: float = _f(0.9998, "EMA decay")
    sync_bn: bool = _f(True, "under DDP, BatchNorm statistics over the global batch (SyncBatchNorm, CPU and CUDA)")
    fsdp: bool = _f(False, "under torchrun, shard parameters, gradients and optimizer state over the processes "
                           "(FSDP2 fully_shard per block) instead of DDP replicas: for the largest variants")
    amp: str = _f("auto", "autocast: 'bf16', 'none' or 'auto' (bf16 on CUDA, off on CPU)")
    channels_last: bool = _f(True, "use the channels_last memory format (CUDA only)")
    seed: int = _f(0, "seed; data order is a function of (seed, epoch)")
    device: str = _f("auto", "'auto', 'cpu', 'cuda', 'cuda:1', ...")
    # output
    output: str | None = _f(None, "output directory (default: runs/<model>)")
    resume: bool = _f(False, "continue from the last checkpoint in the output directory")
    overwrite: bool = _f(False, "replace the run in an existing output directory (only its own files are removed)")
    ckpt_every: int = _f(0, "also checkpoint every N optimizer steps (0: at the end of each epoch only)")
    keep_ckpts: int = _f(2, "number of checkpoints kept")
    eval_every: int = _f(1, "evaluate every N epochs (and always after the last)")
    log_every: int = _f(20, "write a step record to metrics.jsonl every N steps")
    save_model: bool = _f(True, "save the final model as a hub folder (<output>/model)")
    quiet: bool = _f(False, "no progress bars (for scripts)")
    # False for `eval`: the optimizer keys are not used, so their cross-checks (min_lr <= lr) are skipped
    check_optimizer: InitVar[bool] = True

    def __post_init__(self, check_optimizer: bool = True) -> None:
        from mixerzoo.spec import parse_mixer_options, parse_mixers, parse_model_args

        self.mixers = parse_mixers(self.mixers)
        self.mixer_options = parse_mixer_options(self.mixer_options)
        self.model_args = parse_model_args(self.model_args)
        self.validate(check_optimizer=check_optimizer)

    def validate(self, *, check_optimizer: bool = True) -> None:
        """Raise RecipeError naming the field and value for values that can never work (see :data:`RANGES`).

        ``check_optimizer=False`` (``eval``) skips the checks between optimizer keys, which eval does not use.
        """
        for name, rng in RANGES.items():
            rng.check(name, getattr(self, name))
        for name in ("scale", "ratio"):
            value = getattr(self, name)
            if not isinstance(value, (tuple, list)) or len(value) != 2:
                raise RecipeError(f"{name} must be two numbers (LO HI), got {value!r}")
            rng = _PAIR_RANGES[name]
            for v in value:
                rng.check(name, v, shown=value)
            if value[0] > value[1]:
                raise RecipeError(f"{name} must be (LO, HI) with LO <= HI, got {tuple(value)!r}")
        if self.batch_size % self.grad_accum_steps:
            raise RecipeError(f"batch_size={self.batch_size} is not divisible by grad_accum_steps="
                              f"{self.grad_accum_steps}")
        if self.aug not in ("rand", "none"):
            raise RecipeError(f"aug must be 'rand' or 'none', got {self.aug!r}")
        if self.amp not in ("auto", "bf16", "none"):
            raise RecipeError(f"amp must be 'auto', 'bf16' or 'none', got {self.amp!r}")
        lr = self.resolved_lr()
        if check_optimizer and self.min_lr > lr:
            given = "lr" if self.lr is not None else "lr_base * batch_size / lr_base_size"
            raise RecipeError(f"min_lr={self.min_lr!r} is above the learning rate {lr:.4g} ({given}); "
                              "lower --min-lr or raise --lr")
        if self.fsdp and self.ema:
            raise RecipeError("fsdp and ema exclude each other: the EMA copy would be a full replica (use --no-ema)")
        if self.resume and self.overwrite:
            raise RecipeError("resume and overwrite exclude each other: --resume continues the run in the output "
                              "directory, --overwrite replaces it")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-able dict (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def spec(self) -> Any:
        """The :class:`mixerzoo.spec.ModelSpec` of this recipe (model, mixers, mixer_options, model_args)."""
        from mixerzoo.spec import ModelSpec

        if not self.model:
            raise RecipeError("model: no model given (use --model NAME, e.g. --model test_poolformer)")
        return ModelSpec.parse(self.model, self.mixers, self.mixer_options, self.model_args)

    def resolved_lr(self) -> float:
        """The absolute learning rate: ``lr`` if given, else ``lr_base * batch_size / lr_base_size``."""
        return self.lr if self.lr is not None else self.lr_base * self.batch_size / self.lr_base_size

    def output_dir(self) -> Path:
        name = (self.model or "model").replace("/", "_").replace(":", "_")
        return Path(self.output) if self.output else Path("runs") / name


@dataclass(frozen=True)
class Range:
    """The valid values of one numeric recipe key: ``lo``/``hi`` bounds (``None``: unbounded), open or closed."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    integer: bool = False
    hint: str = ""

    def describe(self) -> str:
        if self.lo is not None and self.hi is not None:
            left, right = "(" if self.lo_open else "[", ")" if self.hi_open else "]"
            return f"in {left}{_num(self.lo)}, {_num(self.hi)}{right}"
        if self.lo is not None:
            return f"{'>' if self.lo_open else '>='} {_num(self.lo)}"
        if self.hi is not None:
            return f"{'<' if self.hi_open else '<='} {_num(self.hi)}"
        return "a finite number"

    def check(self, name: str, value: Any, shown: Any = None) -> None:
        """RecipeError naming ``name`` and the value unless ``value`` is a finite number inside the range."""
        shown = value if shown is None else shown
        if value is None and _base_type(field_types()[name])[1]:
            return
        kind = "an int" if self.integer else "a number"
        wrong = isinstance(value, bool) or not isinstance(value, (int, float))
        if wrong or (self.integer and not isinstance(value, int)):
            raise RecipeError(f"{name} must be {kind}, got {shown!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise RecipeError(f"{name} must be a finite number, got {shown!r}")
        too_low = self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo)
        too_high = self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi)
        if too_low or too_high:
            hint = f" ({self.hint})" if self.hint else ""
            raise RecipeError(f"{name} must be {self.describe()}, got {shown!r}{hint}")


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"


def _int(lo: int, hi: int, hint: str = "") -> Range:
    return Range(lo, hi, integer=True, hint=hint)


def _prob(hi_open: bool = False) -> Range:
    return Range(0.0, 1.0, hi_open=hi_open)


# The valid range of every numeric recipe key, checked by Recipe.validate (so flags, YAML files and Python
# callers all get the same one-line error). Upper bounds catch values that would only exhaust memory or time.
RANGES: dict[str, Range] = {
    # model
    "num_classes": _int(1, 1_000_000),
    "in_chans": _int(1, 1024),
    "drop_path": Range(0.0, 1.0, hi_open=True),
    "drop_rate": Range(0.0, 1.0, hi_open=True),
    "freeze_stages": _int(0, 64),
    # data
    "val_split": Range(0.0, 1.0, lo_open=True, hi_open=True),
    "img_size": _int(1, 8192),
    "crop_pct": Range(0.0, 1.0, lo_open=True),
    "batch_size": _int(1, 1 << 20),
    "grad_accum_steps": _int(1, 4096),
    "workers": _int(0, 512),
    "hflip": _prob(),
    "aug_ops": _int(0, 12, "the 'rand' policy has 12 ops"),
    "aug_magnitude": _int(0, 10),
    "reprob": _prob(),
    "mixup": Range(0.0, 100.0),
    "cutmix": Range(0.0, 100.0),
    "mixup_prob": _prob(),
    "mixup_switch_prob": _prob(),
    "smoothing": _prob(hi_open=True),
    # optimisation
    "epochs": _int(1, 1_000_000),
    "lr": Range(0.0, 100.0, lo_open=True),
    "lr_base": Range(0.0, 100.0, lo_open=True),
    "lr_base_size": _int(1, 1 << 30),
    "opt_eps": Range(0.0, 1.0, lo_open=True),
    "momentum": _prob(hi_open=True),
    "weight_decay": Range(0.0, 100.0),
    "layer_decay": Range(0.0, 1.0, lo_open=True),
    "warmup_epochs": Range(0.0, 1_000_000.0),
    "warmup_lr": Range(0.0, 100.0),
    "min_lr": Range(0.0, 100.0),
    "clip_grad": Range(0.0, 1e9, lo_open=True, hint="use none to disable clipping"),
    "ema_decay": _prob(),
    "seed": _int(0, 2**32 - 1),
    # output
    "ckpt_every": _int(0, 1 << 40),
    "keep_ckpts": _int(1, 10_000),
    "eval_every": _int(1, 1_000_000),
    "log_every": _int(1, 1 << 40),
}
# scale / ratio are (LO, HI) pairs; each number is checked against these, and LO <= HI
_PAIR_RANGES: dict[str, Range] = {"scale": Range(0.0, 1.0, lo_open=True), "ratio": Range(0.0, 100.0, lo_open=True)}


# Per-family defaults, matched with fnmatch on the model name without the ``mz_`` prefix; first match wins.
# Drop-path rates: PoolFormer paper/README (s12 .1, s24 .1, s36 .2, m36 .3, m48 .4), DeiT (.1 for tiny/small).
FAMILY_DEFAULTS: list[tuple[str, dict[str, Any]]] = [
    ("test_*", {"drop_path": 0.0}),
    ("poolformer_s12*", {"drop_path": 0.1}),
    ("poolformer_s24*", {"drop_path": 0.1}),
    ("poolformer_s36*", {"drop_path": 0.2}),
    ("poolformer_m36*", {"drop_path": 0.3}),
    ("poolformer_m48*", {"drop_path": 0.4}),
    ("vit_tiny*", {"drop_path": 0.1}),
    ("vit_small*", {"drop_path": 0.1}),
    ("vit_base*", {"drop_path": 0.1}),
    ("resnet*", {"drop_path": 0.05}),
    ("*", {"drop_path": 0.1}),
]

# Fine-tuning (BEiT/DeiT-III style): shorter schedule, smaller lr, layer-wise decay, lighter regularisation.
FINETUNE_DEFAULTS: dict[str, Any] = {
    "pretrained": True,
    "epochs": 30,
    "lr_base": 5e-4,
    "warmup_epochs": 2.0,
    "layer_decay": 0.75,
    "mixup": 0.0,
    "cutmix": 0.0,
}

# The bundled 8x8 digits: upsampled to 32 px; flips and heavy crops destroy the class, so keep them off.
DIGITS_DEFAULTS: dict[str, Any] = {
    "img_size": 32,
    "crop_pct": 1.0,
    "hflip": 0.0,
    "scale": (0.6, 1.0),
    "ratio": (0.8, 1.25),
    "aug_ops": 1,
    "aug_magnitude": 5,
    "reprob": 0.1,
    "mixup": 0.0,
    "cutmix": 0.0,
    "epochs": 20,
    "batch_size": 64,
    "lr": 2e-3,
    "warmup_epochs": 1.0,
}


def recipe_fields() -> list[dataclasses.Field[Any]]:
    return list(fields(Recipe))


_FIELD_NAMES = tuple(f.name for f in fields(Recipe))


def _strip(model: str) -> str:
    name = model.split(":", 1)[-1] if model.startswith(("hf-hub:", "local-dir:")) else model
    name = name.rsplit("/", 1)[-1]
    return name[3:] if name.startswith("mz_") else name


def family_defaults(model: str | None) -> dict[str, Any]:
    """Defaults for the family of ``model`` (the first matching pattern of FAMILY_DEFAULTS)."""
    if not model:
        return {}
    name = _strip(model)
    for pattern, values in FAMILY_DEFAULTS:
        if fnmatch.fnmatch(name, pattern):
            return dict(values)
    return {}


def _unknown_key(key: str, where: str) -> RecipeError:
    close = difflib.get_close_matches(key, _FIELD_NAMES, n=3)
    hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
    return RecipeError(f"{where}: unknown recipe key {key!r}{hint}")


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(type without Optional, is_optional)."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return tp, False


_HINTS: dict[str, Any] | None = None


def field_types() -> dict[str, Any]:
    global _HINTS
    if _HINTS is None:
        _HINTS = {k: v for k, v in typing.get_type_hints(Recipe).items() if k in _FIELD_NAMES}
    return _HINTS


SPEC_FIELDS = ("mixers", "mixer_options", "model_args")


def coerce(name: str, value: Any, where: str = "recipe") -> Any:
    """Check/convert one value for field ``name``; RecipeError naming the key and value on mismatch."""
    if name not in field_types():
        raise _unknown_key(name, where)
    if name in SPEC_FIELDS:
        from mixerzoo import spec

        parse = {"mixers": spec.parse_mixers, "mixer_options": spec.parse_mixer_options,
                 "model_args": spec.parse_model_args}[name]
        try:
            return parse(value)
        except RecipeError as e:
            raise RecipeError(f"{where}: {e}") from None
    tp, optional = _base_type(field_types()[name])
    if value is None:
        if optional:
            return None
        raise RecipeError(f"{where}: {name} may not be null")
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
                return value.lower() in ("true", "yes", "1")
            raise TypeError
        if tp is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            return int(value)
        if tp is float:
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if tp is str:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise TypeError
            return str(value)
        if typing.get_origin(tp) is tuple:
            items = list(value)
            args = typing.get_args(tp)
            if len(items) != len(args):
                raise TypeError
            return tuple(float(v) for v in items)
    except (TypeError, ValueError):
        tname = getattr(tp, "__name__", str(tp))
        raise RecipeError(f"{where}: {name} must be {tname}, got {value!r}") from None
    return value


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a recipe YAML file (a flat mapping of recipe keys; '-' and '_' are interchangeable)."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise RecipeError(f"recipe file {str(path)!r} does not exist")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        at = f" at line {line + 1}" if line is not None else ""
        raise RecipeError(f"recipe file {str(path)!r}: invalid YAML{at}") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"recipe file {str(path)!r}: expected a mapping of recipe keys, got {type(raw).__name__}")
    out = {}
    for key, value in raw.items():
        name = str(key).replace("-", "_")
        out[name] = coerce(name, value, where=f"recipe file {p.name!r}")
    return out


def build_recipe(
    overrides: dict[str, Any] | None = None,
    *,
    mode: str = "train",
    config: str | Path | None = None,
) -> Recipe:
    """Resolve the layered defaults into a Recipe.

    Args:
        overrides: explicitly given values (CLI flags or keyword arguments); they win over everything.
        mode: 'train', 'finetune' or 'eval'.
        config: optional YAML recipe file.
    """
    if mode not in ("train", "finetune", "eval"):
        raise RecipeError(f"mode must be 'train', 'finetune' or 'eval', got {mode!r}")
    given = {k.replace("-", "_"): v for k, v in (overrides or {}).items()}
    given = {k: coerce(k, v, where="argument") for k, v in given.items()}
    from_file = load_yaml(config) if config is not None else {}
    explicit = {**from_file, **given}
    model = explicit.get("model")
    data = explicit.get("data", "digits")
    values: dict[str, Any] = {}
    values.update(family_defaults(model))
    if mode == "finetune":
        values.update(FINETUNE_DEFAULTS)
    if data == "digits":
        values.update(DIGITS_DEFAULTS)
    values.update(explicit)
    return Recipe(**values, check_optimizer=mode != "eval")
