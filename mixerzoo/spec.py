"""A model *spec*: a model name plus its mixers, mixer options and architecture overrides.

One value that every entry point accepts (``train``, ``finetune``, ``eval``, ``bench``, ``forward``, the YAML
recipe, the Python recipe API), that is checked on the meta device before any data is read or file written, and
that travels with the run (``recipe.json``, checkpoints, the exported ``config.json``)::

    spec = ModelSpec.parse("poolformer_s12", mixers="pooling,pooling,neighborhood,bra",
                           mixer_options=";;kernel_size=5;n_win=2,topk=2")
    spec.validate()                  # one-line SpecError naming the argument and the value
    model = spec.create(num_classes=10)

Command-line syntax (also accepted as YAML strings; YAML may use lists and mappings instead):

* ``--mixers NAME`` (every stage) or ``--mixers A,B,C,D`` (one name per stage). Third-party mixers are named like
  built-ins (bare name or ``<distribution>.<name>``) once their distribution is installed.
* ``--mixer-options`` either JSON (an object for every stage, or a list with one object or ``null`` per stage), or
  ``key=value[,key=value...]`` for every stage, with ``;`` between stages for per-stage options (an empty stage
  takes none): ``'pool_size=5'``, ``';;kernel_size=5;n_win=2,topk=2'``.
* ``--model-args key=value ...`` (or one JSON object): overrides of the family's config (``depths``, ``dims``,
  ``num_heads``, ``window_size``, ...).

Values are JSON literals (``5``, ``0.5``, ``true``, ``[1,1,2,1]``, ``null``); anything else is a string.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mixerzoo.train.recipe import RecipeError

__all__ = ["SPEC_KEYS", "ModelSpec", "SpecError", "parse_mixer_options", "parse_mixers", "parse_model_args"]

SPEC_KEYS = ("mixers", "mixer_options", "model_args")
# keys of model_args that are recipe keys (set with their own flag; the recipe keeps them consistent)
_RECIPE_OWNED = {"num_classes": "--num-classes", "in_chans": "--in-chans", "drop_path_rate": "--drop-path",
                 "drop_rate": "--drop-rate", "pretrained": "--pretrained", "mixers": "--mixers",
                 "mixer_options": "--mixer-options", "device": "--device"}
_HUB_PREFIXES = ("hf-hub:", "hf_hub:", "local-dir:")


class SpecError(RecipeError):
    """A bad model spec; the message is one line naming the argument and the value."""


# ------------------------------------------------------------------------------------------------ parsing


def _literal(text: str) -> Any:
    """A JSON literal (numbers, true/false/null, lists, objects), else the text itself."""
    text = text.strip()
    try:
        return json.loads(text)
    except ValueError:
        low = text.lower()
        if low in ("none", "true", "false"):
            return {"none": None, "true": True, "false": False}[low]
        return text


def _split_top(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside brackets and quotes (so ``depths=[1,1,2,1],dims=[8,16]`` splits in two)."""
    parts, depth, quote, cur = [], 0, "", []
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur))
    return parts


def _key_values(text: str, arg: str, shown: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in _split_top(text, ","):
        item = item.strip()
        if not item:
            continue
        key, eq, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or not key.isidentifier():
            raise SpecError(f"{arg}={shown!r}: expected key=value, got {item!r}")
        out[key] = _literal(value)
    return out


def parse_mixers(value: Any) -> str | list[str] | None:
    """``None``, one name (every stage) or a list of names (one per stage) from a string ``a,b,c`` or a list."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if text.lower() in ("", "none", "null"):
            return None
        if text.startswith("["):
            value = _literal(text)
        else:
            names = [n.strip() for n in text.split(",")]
            value = names[0] if len(names) == 1 else names
        if isinstance(value, str):
            if not value:
                raise SpecError(f"mixers={text!r}: empty mixer name")
            return value
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        names = list(value)
        if not names or not all(isinstance(n, str) and n.strip() for n in names):
            raise SpecError(f"mixers={value!r}: expected a mixer name or a list of names (one per stage)")
        return [n.strip() for n in names]
    raise SpecError(f"mixers={value!r}: expected a mixer name or a list of names (one per stage)")


def parse_mixer_options(value: Any) -> dict[str, Any] | list[dict[str, Any]] | None:
    """``None``, one dict (every stage) or a list of dicts (one per stage) from JSON, ``k=v,...;k=v`` or Python."""
    if value is None:
        return None
    shown = value
    if isinstance(value, str):
        text = value.strip()
        if text.lower() in ("", "none", "null"):
            return None
        if text[0] in "[{":
            try:
                value = json.loads(text)
            except ValueError as e:
                raise SpecError(f"mixer_options={shown!r}: invalid JSON ({e.msg} at column {e.colno})") from None
        else:
            stages = _split_top(text, ";")
            dicts = [_key_values(s, "mixer_options", shown) for s in stages]
            return dicts[0] if len(dicts) == 1 else dicts
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) for k in value):
            raise SpecError(f"mixer_options={shown!r}: option names must be strings")
        return dict(value)
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        out = []
        for item in value:
            if item is None:
                item = {}
            if not isinstance(item, Mapping) or not all(isinstance(k, str) for k in item):
                raise SpecError(f"mixer_options={shown!r}: expected one object per stage, got {item!r}")
            out.append(dict(item))
        return out
    raise SpecError(f"mixer_options={shown!r}: expected an object, a list of objects (one per stage), JSON or "
                    "key=value[,key=value][;...]")


def parse_model_args(value: Any) -> dict[str, Any]:
    """A dict from ``None``, a mapping, a JSON object, ``"k=v k=v"`` / ``"k=v,k=v"`` or a list of ``k=v``."""
    if value is None:
        return {}
    shown = value
    if isinstance(value, str):
        text = value.strip()
        if not text or text.lower() in ("none", "null"):
            return {}
        if text.startswith("{"):
            try:
                value = json.loads(text)
            except ValueError as e:
                raise SpecError(f"model_args={shown!r}: invalid JSON ({e.msg} at column {e.colno})") from None
        else:
            value = [p for part in _split_top(text, " ") for p in _split_top(part, ",") if p.strip()]
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str) or not k.replace("-", "_").isidentifier():
                raise SpecError(f"model_args={shown!r}: {k!r} is not an argument name")
            out[k.replace("-", "_")] = v
        value = out
    elif isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        out = {}
        for item in value:
            if not isinstance(item, str):
                raise SpecError(f"model_args={shown!r}: expected key=value items, got {item!r}")
            out.update(_key_values(item, "model_args", shown))
        value = out
    else:
        raise SpecError(f"model_args={shown!r}: expected key=value items or a JSON object")
    for key in value:
        if key in _RECIPE_OWNED:
            raise SpecError(f"model_args: {key!r} is set with its own flag {_RECIPE_OWNED[key]} (YAML key "
                            f"{_RECIPE_OWNED[key][2:].replace('-', '_')!r}), not in model_args")
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        raise SpecError(f"model_args={shown!r}: values must be JSON (numbers, strings, lists, objects)") from None
    return value


# ------------------------------------------------------------------------------------------------ the spec


@dataclass(frozen=True)
class ModelSpec:
    """A model name with its mixers (one, or one per stage), mixer options (one dict, or one per stage) and
    architecture overrides (any field of the family's config). Build it with :meth:`parse` from CLI/YAML values."""

    model: str
    mixers: str | list[str] | None = None
    mixer_options: dict[str, Any] | list[dict[str, Any]] | None = None
    model_args: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model:
            raise SpecError(f"model={self.model!r}: expected a model name")
        object.__setattr__(self, "mixers", parse_mixers(self.mixers))
        object.__setattr__(self, "mixer_options", parse_mixer_options(self.mixer_options))
        object.__setattr__(self, "model_args", parse_model_args(self.model_args))

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def parse(cls, model: str, mixers: Any = None, mixer_options: Any = None, model_args: Any = None) -> ModelSpec:
        """From CLI strings, YAML values or Python objects (see the module docstring for the syntax)."""
        return cls(model, mixers, mixer_options, parse_model_args(model_args))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSpec:
        """Inverse of :meth:`to_dict` (also reads a recipe dict: other keys are ignored)."""
        if not isinstance(data, Mapping) or not data.get("model"):
            raise SpecError(f"model spec {data!r}: needs a 'model' key")
        return cls.parse(data["model"], data.get("mixers"), data.get("mixer_options"), data.get("model_args"))

    @classmethod
    def from_recipe(cls, recipe: Any) -> ModelSpec:
        """The spec of a :class:`mixerzoo.train.Recipe` (``model``, ``mixers``, ``mixer_options``, ``model_args``)."""
        return cls.parse(recipe.model or "", getattr(recipe, "mixers", None), getattr(recipe, "mixer_options", None),
                         getattr(recipe, "model_args", None))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON: ``{"model", "mixers", "mixer_options", "model_args"}``."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    # -- use --------------------------------------------------------------------------------------
    @property
    def is_default(self) -> bool:
        """True when the spec is just a model name (no mixers, options or overrides)."""
        return self.mixers is None and self.mixer_options is None and not self.model_args

    def kwargs(self) -> dict[str, Any]:
        """The constructor keyword arguments the spec adds (``mixers``, ``mixer_options``, ``model_args``)."""
        kw: dict[str, Any] = dict(self.model_args)
        if self.mixers is not None:
            kw["mixers"] = self.mixers
        if self.mixer_options is not None:
            kw["mixer_options"] = self.mixer_options
        return kw

    def describe(self) -> str:
        """``model[mixers=a,b; mixer_options=...; depths=...]`` for logs and tables."""
        parts = []
        if self.mixers is not None:
            parts.append("mixers=" + (self.mixers if isinstance(self.mixers, str) else ",".join(self.mixers)))
        if self.mixer_options is not None:
            parts.append("mixer_options=" + json.dumps(self.mixer_options, separators=(",", ":")))
        parts += [f"{k}={json.dumps(v, separators=(',', ':'))}" for k, v in self.model_args.items()]
        return f"{self.model}[{'; '.join(parts)}]" if parts else self.model

    def validate(self, img_size: int | None = None, **kwargs: Any) -> None:
        """Check the spec without building anything real: the mixers exist (with close matches and install hints),
        their number matches the stages, every option is one the mixer takes, the host can feed each mixer's kind
        and layout, and the model accepts the overrides (a build on the meta device). With ``img_size`` a forward
        pass on the meta device also checks that every mixer takes the feature maps of that input size. ``kwargs``
        are the other constructor arguments (``num_classes``, ``in_chans``, ...). Raises :class:`SpecError`."""
        self._check_mixers()
        if self.model.startswith(("hf-hub:", "hf_hub:")):
            return  # building would download; the hub checks the stored config before any weights are read
        kw = {k: v for k, v in kwargs.items() if v is not None}
        kw.pop("pretrained", None)
        try:
            model = _build(self.model, pretrained=False, device="meta", **self.kwargs(), **kw)
        except SpecError:
            raise
        except RecipeError as e:
            raise SpecError(str(e)) from None
        except Exception as e:  # noqa: BLE001 - turned into one line naming the argument
            raise self._error(e) from None
        if img_size is not None:
            self._check_forward(model, img_size, int(kw.get("in_chans", 3)))

    def _check_forward(self, model: Any, img_size: int, in_chans: int) -> None:
        """A forward pass on the meta device (no memory, no compute): a mixer that cannot take the feature maps of
        ``img_size`` (a window larger than the map, ...) fails here, not after the data has loaded."""
        import torch

        model.eval()
        try:
            with torch.no_grad():
                model(torch.empty(1, in_chans, img_size, img_size, device="meta"))
        except NotImplementedError:
            return  # an op without a meta kernel: nothing learned
        except (ValueError, TypeError, AssertionError, RuntimeError) as e:
            msg = " ".join(str(e).split())
            if isinstance(e, RuntimeError) and "meta" in msg.lower():
                return
            raise SpecError(f"{self.describe()} at img_size={img_size}: {msg}") from None

    def create(self, pretrained: bool = False, **kwargs: Any) -> Any:
        """Build the model (``mixerzoo.create_model`` for mixerzoo names and hub references, ``timm.create_model``
        for timm names); ``kwargs`` as for those (``num_classes``, ``in_chans``, ``device``, ...)."""
        self._check_mixers()
        kw = {**self.kwargs(), **{k: v for k, v in kwargs.items() if v is not None}}
        try:
            return _build(self.model, pretrained=pretrained, **kw)
        except (SpecError, RecipeError):
            raise
        except (TypeError, ValueError, KeyError) as e:
            raise self._error(e) from None

    # -- checks -----------------------------------------------------------------------------------
    def _check_mixers(self) -> None:
        from mixerzoo.plugins import MixerLoadError, UnknownMixerError, mixer_spec

        if self.mixers is None:
            return
        names = [self.mixers] if isinstance(self.mixers, str) else list(self.mixers)
        shown = self.mixers if isinstance(self.mixers, str) else ",".join(self.mixers)
        classes = []
        for name in names:
            try:
                classes.append(mixer_spec(name).cls)
            except MixerLoadError as e:
                cause = e.__cause__
                why = f"{type(cause).__name__}: {cause}" if cause is not None else str(e)
                why = " ".join(why.split())
                raise SpecError(f"mixers={shown!r}: mixer {name!r} failed to load ({why}); reinstall or fix the "
                                "distribution that provides it") from None
            except UnknownMixerError as e:
                raise SpecError(f"mixers={shown!r}: {_unknown_mixer(name, str(e))}") from None
        opts = self.mixer_options
        if opts is None:
            return
        if isinstance(opts, list) and isinstance(self.mixers, list) and len(opts) != len(names):
            raise SpecError(f"mixer_options={opts!r}: {len(opts)} stages given but mixers={shown!r} has "
                            f"{len(names)}; give one set of options, or one per stage")
        per_stage = opts if isinstance(opts, list) else [opts] * len(names)
        if isinstance(self.mixers, str):
            pairs = [(None, classes[0], o) for o in per_stage]
        else:
            pairs = [(i, classes[i], o) for i, o in enumerate(per_stage)]
        for stage, cls, o in pairs:
            params = inspect.signature(cls.__init__).parameters
            if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
                continue
            takes = [n for n, p in list(params.items())[1:] if n != "dim" and p.kind in (
                p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
            for key in o:
                if key not in takes:
                    where = f" (stage {stage + 1})" if stage is not None else ""
                    name = names[stage] if stage is not None else names[0]
                    close = difflib.get_close_matches(key, takes, n=2)
                    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
                    raise SpecError(f"mixer_options={_show_opts(opts)}: mixer {name!r}{where} does not take option "
                                    f"{key!r}{hint} (it takes: {', '.join(takes) or 'no options'})")

    def _error(self, e: BaseException) -> SpecError:
        msg = " ".join(line.strip() for line in str(e).splitlines() if line.strip()) or type(e).__name__
        if isinstance(e, KeyError) and msg.startswith("'") and msg.endswith("'"):
            msg = msg[1:-1]
        low = msg.lower()
        if "unexpected keyword argument" in low:
            key = msg.rsplit("argument", 1)[-1].strip(" '\"")
            if key in ("mixers", "mixer_options"):
                return SpecError(f"{key}: model {self.model!r} takes no mixers (it is not a mixer host)")
            if key in self.model_args:
                takes = self._arguments()
                close = difflib.get_close_matches(key, takes, n=3)
                hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
                return SpecError(f"model_args: model {self.model!r} does not take {key}={self.model_args[key]!r}"
                                 f"{hint}")
            if self.mixer_options is not None:
                return SpecError(f"mixer_options={_show_opts(self.mixer_options)}: a mixer does not take option "
                                 f"{key!r} ({msg})")
        if "mixer_options" in low:
            return SpecError(f"mixer_options: {msg}")
        names_arg = any(k.lower() in low for k in self.model_args)
        if self.mixers is not None and ("mixer" in low or not names_arg):
            shown = self.mixers if isinstance(self.mixers, str) else ",".join(self.mixers)
            opts = f" with mixer_options={_show_opts(self.mixer_options)}" if self.mixer_options is not None else ""
            return SpecError(f"mixers={shown!r}{opts}: {msg}")
        if self.model_args:
            return SpecError(f"model_args={self.model_args!r}: {msg}")
        return SpecError(f"model {self.model!r}: {msg}")


    def _arguments(self) -> list[str]:
        """The constructor arguments of the model's class (for close matches); empty if it cannot be built."""
        try:
            model = _build(self.model, pretrained=False, device="meta")
        except Exception:  # noqa: BLE001 - suggestions are best effort
            return []
        params = inspect.signature(type(model).__init__).parameters
        return [n for n, p in params.items() if n != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def _show_opts(opts: Any) -> str:
    return json.dumps(opts, separators=(",", ":"))


def _unknown_mixer(name: str, registry_msg: str) -> str:
    """The registry's close-match message, plus an install hint for a qualified ``<distribution>.<name>``."""
    first = registry_msg.split(" (known:", 1)[0]
    if "." in name and "ambiguous" not in registry_msg:
        dist = name.split(".", 1)[0].replace("_", "-")
        return f"{first}; its distribution is not installed: pip install {dist}"
    if "ambiguous" in registry_msg:
        return registry_msg
    return (f"{first} (see `mixerzoo list mixers`; a third-party mixer needs its distribution installed: "
            "pip install <distribution>)")


def _build(name: str, *, pretrained: bool, **kwargs: Any) -> Any:
    """``mixerzoo.create_model`` for mixerzoo names and hub references, ``timm.create_model`` for timm names."""
    import timm

    import mixerzoo
    from mixerzoo.zoo import UnknownModelError

    if name.startswith(_HUB_PREFIXES):
        return mixerzoo.create_model(name, pretrained=pretrained, **kwargs)
    try:
        return mixerzoo.create_model(name, pretrained=pretrained, **kwargs)
    except UnknownModelError as e:
        if not timm.is_model(name):
            raise SpecError(f"model: {e}".splitlines()[0]) from None
    return timm.create_model(name, pretrained=pretrained, **kwargs)
