"""One registry for token mixers and CNN gates, fed by the entry-point group ``mixerzoo.mixers``.

Every distribution (mixerzoo itself included) declares mixers as entry points whose *name* is the
mixer name and whose *object* is the mixer class::

    [project.entry-points."mixerzoo.mixers"]
    swin_window = "acme_mixers.swin:WindowMixer"

Discovery is lazy and per name: asking for a mixer imports only the entry points that can answer to that
name (a built-in name imports only the built-in), so a third-party plugin is imported when a model uses it, or
when :func:`list_mixers` / :func:`errors` list everything. Results are cached; :func:`refresh_mixers` forgets them.
Each mixer answers to its bare name and to ``<distribution>.<name>``. Built-in mixers (distribution
``mixerzoo``) are never overridden: a plugin that declares a built-in name is reachable only by its
qualified name. Two plugins declaring one bare name make that bare name ambiguous (an error that lists
both), while both qualified names keep working.

A plugin that fails to import (any exception, ``SystemExit`` included; not ``KeyboardInterrupt``), or
breaks the contract (wrong ``layout``/``kind``, another ``contract_version``), is skipped with a
``RuntimeWarning`` naming the distribution and the error and recorded in :func:`errors`; asking for its
mixer re-raises with the original error attached. With ``MIXERZOO_PLUGINS_STRICT=1`` such faults raise at
discovery instead.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata as md
import os
import re
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from mixerzoo.plugins._contract import check_mixer_class

__all__ = [
    "BUILTIN_DIST",
    "ENTRY_POINT_GROUP",
    "MixerLoadError",
    "MixerSpec",
    "PluginError",
    "UnknownMixerError",
    "create_mixer",
    "errors",
    "get_mixer",
    "list_mixers",
    "mixer_spec",
    "refresh_mixers",
    "register_mixer",
    "required_mixers",
]

ENTRY_POINT_GROUP = "mixerzoo.mixers"
BUILTIN_DIST = "mixerzoo"
IN_PROCESS = "__main__"  # distribution label of mixers registered with register_mixer()

# Used only when mixerzoo runs from a source tree that was never pip-installed (no entry-point
# metadata). tests/plugins/test_registry.py checks that it equals pyproject.toml's table.
_BUILTIN_FALLBACK: dict[str, str] = {
    "attention": "mixerzoo.plugins.attention:Attention",
    "pooling": "mixerzoo.plugins.pooling:Pooling",
    "identity": "mixerzoo.plugins.pooling:IdentityMixer",
    "cbam": "mixerzoo.plugins.gates:CBAM",
    "triplet": "mixerzoo.plugins.gates:TripletAttention",
    "bra": "mixerzoo.plugins.bra:BiLevelRoutingAttention",
    "attention_lepe": "mixerzoo.plugins.bra:AttentionLePE",
    "neighborhood": "mixerzoo.plugins.neighborhood:NeighborhoodAttention",
    "hilo": "mixerzoo.plugins.hilo:HiLo",
    "focused_linear": "mixerzoo.plugins.focused_linear:FocusedLinearAttention",
    "window": "mixerzoo.plugins.window:WindowAttention",
    "spatial_reduction": "mixerzoo.plugins.spatial_reduction:SpatialReductionAttention",
    "cross_shaped": "mixerzoo.plugins.cross_shaped:CrossShapedAttention",
}


class UnknownMixerError(KeyError):
    """No mixer answers to that name (or the bare name is ambiguous)."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class MixerLoadError(ImportError):
    """The mixer's plugin failed to load; ``__cause__`` holds the original error."""


@dataclass(frozen=True)
class PluginError:
    """A plugin that could not be loaded."""

    dist: str
    name: str
    target: str
    error: BaseException

    def __str__(self) -> str:
        return f"mixer {self.name!r} from distribution {self.dist!r} ({self.target}) failed: {self.error!r}"


@dataclass(frozen=True)
class MixerSpec:
    """A registered mixer: its names, where it comes from, and its class."""

    name: str
    dist: str
    cls: type = field(repr=False)
    target: str = ""

    @property
    def qualified_name(self) -> str:
        return self.name if self.name.startswith(f"{self.dist}.") else f"{self.dist}.{self.name}"

    @property
    def layout(self) -> str:
        return self.cls.layout  # type: ignore[attr-defined, no-any-return]

    @property
    def kind(self) -> str:
        return self.cls.kind  # type: ignore[attr-defined, no-any-return]

    @property
    def builtin(self) -> bool:
        return self.dist == BUILTIN_DIST


def _norm_dist(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


_Entry = tuple[str, str, str, Callable[[], Any]]  # (distribution, mixer name, target, loader)


def _qualified(dist: str, name: str) -> str:
    return name if name.startswith(f"{dist}.") else f"{dist}.{name}"


class _Registry:
    """Entry points are listed once (metadata only, nothing imported) and loaded per name on first use.

    Asking for a built-in name imports only that built-in: built-ins own their bare names, so no third-party plugin
    can change what they resolve to, and a plugin that is broken, exits or hangs on import cannot affect a model
    made of built-in mixers. A plugin name loads the entry points declaring that name; an unknown name, and
    :meth:`names` / :meth:`errors`, load everything.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._entries: list[_Entry] | None = None  # listed entry points, built-ins first
        self._attempted: set[tuple[str, str]] = set()  # (dist, name) entries already loaded or failed
        self._discovered = False  # every entry point attempted
        self._specs: dict[str, list[MixerSpec]] = {}  # bare name -> providers (a built-in first)
        self._qualified: dict[str, MixerSpec] = {}
        self._broken: dict[str, PluginError] = {}  # bare and qualified names -> error
        self._errors: list[PluginError] = []
        self._in_process: dict[str, MixerSpec] = {}

    # -- discovery -------------------------------------------------------------------------
    def _entry_points(self) -> list[_Entry]:
        if self._entries is not None:
            return self._entries
        found: list[_Entry] = []
        have_builtin = False
        seen: set[tuple[str, str]] = set()
        for ep in md.entry_points(group=ENTRY_POINT_GROUP):
            dist = _norm_dist(ep.dist.name) if ep.dist is not None else "unknown"
            have_builtin |= dist == BUILTIN_DIST
            if (dist, ep.name) in seen:  # the same distribution seen twice on sys.path
                continue
            seen.add((dist, ep.name))
            found.append((dist, ep.name, ep.value, ep.load))
        if not have_builtin:
            for name, target in _BUILTIN_FALLBACK.items():
                found.append((BUILTIN_DIST, name, target, _loader(target)))
        # built-ins first so that they own their bare names
        found.sort(key=lambda item: item[0] != BUILTIN_DIST)
        self._entries = found
        return found

    def _load(self, entries: list[_Entry]) -> None:
        strict = os.environ.get("MIXERZOO_PLUGINS_STRICT", "0") == "1"
        for dist, name, target, load in entries:
            if (dist, name) in self._attempted:
                continue
            self._attempted.add((dist, name))
            try:
                obj = load()
                check_mixer_class(obj)
                if not issubclass(obj, nn.Module):
                    raise TypeError(f"{target} is not an nn.Module subclass")
            except KeyboardInterrupt:
                raise
            except BaseException as err:  # noqa: BLE001 - SystemExit from a plugin's import is a plugin failure too
                perr = PluginError(dist, name, target, err)
                self._errors.append(perr)
                self._broken.setdefault(name, perr)
                self._broken[_qualified(dist, name)] = perr
                if strict:
                    raise MixerLoadError(f"{perr} (MIXERZOO_PLUGINS_STRICT=1)") from err
                warnings.warn(f"mixerzoo: skipping plugin {perr}", RuntimeWarning, stacklevel=5)
                continue
            self._add(MixerSpec(name, dist, obj, target))

    def _discover(self) -> None:
        """Load every entry point (listing, :func:`errors`, unknown names)."""
        if self._discovered:
            return
        self._load(self._entry_points())
        self._discovered = True

    def _discover_name(self, name: str) -> None:
        """Load only what can answer to ``name``: its built-in if there is one, else the entry points declaring it
        (bare or qualified)."""
        if self._discovered:
            return
        entries = self._entry_points()
        builtin = [e for e in entries if e[0] == BUILTIN_DIST and e[1] == name]
        if builtin:
            self._load(builtin)
            return
        self._load([e for e in entries if e[1] == name or _qualified(e[0], e[1]) == name])

    def _add(self, spec: MixerSpec) -> None:
        providers = self._specs.setdefault(spec.name, [])
        if spec.builtin:
            providers.insert(0, spec)
        else:
            providers.append(spec)
        self._qualified[spec.qualified_name] = spec
        if providers[0].builtin and len(providers) > 1:
            plugin = spec if not spec.builtin else providers[1]
            msg = (
                f"mixerzoo: plugin distribution {plugin.dist!r} declares mixer {plugin.name!r}, a built-in name; "
                f"the built-in keeps the bare name, the plugin's is reachable as {plugin.qualified_name!r}"
            )
            if os.environ.get("MIXERZOO_PLUGINS_STRICT", "0") == "1":
                raise UnknownMixerError(msg)
            warnings.warn(msg, RuntimeWarning, stacklevel=5)

    # -- queries ---------------------------------------------------------------------------
    def _resolve(self, name: str) -> MixerSpec | None:
        if name in self._qualified:
            return self._qualified[name]
        providers = self._specs.get(name, [])
        if providers:
            if providers[0].builtin or len(providers) == 1:
                return providers[0]
            names = ", ".join(f"{p.qualified_name!r} (distribution {p.dist!r})" for p in providers)
            raise UnknownMixerError(f"mixer name {name!r} is ambiguous: provided by {names}; use a qualified name")
        if name in self._broken:
            perr = self._broken[name]
            raise MixerLoadError(f"cannot create {perr}") from perr.error
        return None

    def get(self, name: str) -> MixerSpec:
        with self._lock:
            if name not in self._qualified:
                self._discover_name(name)
            spec = self._resolve(name)
            if spec is not None:
                return spec
            self._discover()  # unknown here: load everything for the suggestions (and late qualified spellings)
            spec = self._resolve(name)
            if spec is not None:
                return spec
            close = difflib.get_close_matches(name, self.names(), n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise UnknownMixerError(
                f"unknown mixer {name!r}{hint} (known: {', '.join(self.names())}; a third-party mixer "
                f"must be installed and declare an entry point in group {ENTRY_POINT_GROUP!r})"
            )

    def names(self, *, qualified: bool = False) -> list[str]:
        with self._lock:
            self._discover()
            out = set()
            for bare, providers in self._specs.items():
                if providers[0].builtin or len(providers) == 1:
                    out.add(bare)
                if qualified or len(providers) > 1:
                    out.update(p.qualified_name for p in providers if not (p.builtin and not qualified))
            return sorted(out)

    def errors(self) -> list[PluginError]:
        with self._lock:
            self._discover()
            return list(self._errors)

    def refresh(self) -> None:
        with self._lock:
            importlib.invalidate_caches()
            self._entries = None
            self._attempted.clear()
            self._discovered = False
            self._specs.clear()
            self._qualified.clear()
            self._broken.clear()
            self._errors.clear()
            for spec in self._in_process.values():  # no import involved
                self._add(spec)

    def register(self, spec: MixerSpec, *, override: bool) -> None:
        with self._lock:
            self._discover_name(spec.name)
            existing = self._specs.get(spec.name, [])
            if any(p.builtin for p in existing):
                raise ValueError(f"mixer name {spec.name!r} is a built-in mixer and can never be overridden")
            if existing and not override:
                where = ", ".join(f"{p.qualified_name!r}" for p in existing)
                raise ValueError(f"mixer name {spec.name!r} is already registered ({where}); pass override=True")
            if override:
                for p in existing:
                    self._qualified.pop(p.qualified_name, None)
                self._specs.pop(spec.name, None)
            self._in_process[spec.name] = spec
            self._add(spec)


def _loader(target: str) -> Callable[[], Any]:
    def load() -> Any:
        module, _, attr = target.partition(":")
        obj: Any = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj

    return load


_REGISTRY = _Registry()


def list_mixers(*, kind: str | None = None, layout: str | None = None, qualified: bool = False) -> list[str]:
    """Names of the available mixers (optionally only one ``kind`` or ``layout``)."""
    names = _REGISTRY.names(qualified=qualified)
    if kind is None and layout is None:
        return names
    out = []
    for n in names:
        try:
            spec = _REGISTRY.get(n)
        except UnknownMixerError:
            continue
        if (kind is None or spec.kind == kind) and (layout is None or spec.layout == layout):
            out.append(n)
    return out


def mixer_spec(name: str) -> MixerSpec:
    """The :class:`MixerSpec` behind a bare or qualified mixer name."""
    return _REGISTRY.get(name)


def get_mixer(name: str) -> type:
    """The mixer class behind a name."""
    return _REGISTRY.get(name).cls


def create_mixer(name: str | type, dim: int, **options: Any) -> nn.Module:
    """Build a mixer: ``create_mixer("pooling", 64, pool_size=3)``.

    ``name`` may also be a mixer class (it is checked against the contract). Unknown options raise
    ``TypeError`` from the mixer's constructor. The instance remembers its registry name and
    distribution (``mixer_name``, ``mixer_dist``) so a saved model can list what it needs.
    """
    if isinstance(name, type):
        check_mixer_class(name)
        spec = MixerSpec(getattr(name, "mixer_name", name.__name__), IN_PROCESS, name)
    else:
        spec = _REGISTRY.get(name)
    if not isinstance(dim, int) or dim <= 0:
        raise ValueError(f"dim={dim!r} must be a positive int (mixer {spec.name!r})")
    module = spec.cls(dim, **options)
    module.mixer_name = spec.name if spec.builtin or spec.dist == IN_PROCESS else spec.qualified_name
    module.mixer_dist = spec.dist
    return module


def register_mixer(
    name: str, cls: type | None = None, *, override: bool = False
) -> Callable[[type], type] | type:
    """Register a mixer class in this process (tests, notebooks). Usable as a decorator.

    Installed packages should declare an entry point instead, so that saved models can name the
    distribution that provides the mixer.
    """

    def deco(c: type) -> type:
        check_mixer_class(c)
        _REGISTRY.register(MixerSpec(name, IN_PROCESS, c, f"{c.__module__}:{c.__qualname__}"), override=override)
        return c

    return deco(cls) if cls is not None else deco


def refresh_mixers() -> None:
    """Forget the discovered plugins; the next call re-reads the entry points."""
    _REGISTRY.refresh()


def errors() -> list[PluginError]:
    """Plugins that failed to load in the current discovery."""
    return _REGISTRY.errors()


def required_mixers(model: nn.Module) -> dict[str, str]:
    """``{mixer name: distribution}`` for every registry mixer inside ``model``."""
    out: dict[str, str] = {}
    for m in model.modules():
        name = getattr(m, "mixer_name", None)
        if isinstance(name, str):
            out[name] = getattr(m, "mixer_dist", BUILTIN_DIST)
    return dict(sorted(out.items()))
