"""Plugins through real entry points: fake installed distributions (``*.dist-info`` with
``entry_points.txt``) on ``sys.path``, discovered by ``importlib.metadata`` like any installed package."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import tomllib
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import mixerzoo
from mixerzoo import plugins
from mixerzoo.plugins._registry import _BUILTIN_FALLBACK

ROOT = Path(__file__).resolve().parents[2]

GOOD = '''
from torch import nn

class ChannelMix(nn.Module):
    """A plugin token mixer: a 1x1 conv with a residual-friendly zero init."""
    layout = "nchw"
    kind = "mixer"

    def __init__(self, dim, *, num_heads=None, expand=1):
        super().__init__()
        self.proj = nn.Conv2d(dim, dim * expand, 1)
        self.back = nn.Conv2d(dim * expand, dim, 1)

    def forward(self, x):
        return self.back(self.proj(x).relu())

class Attention(ChannelMix):
    """Same bare name as a built-in mixer."""
'''

OLD_CONTRACT = '''
from torch import nn

class Future(nn.Module):
    layout = "nchw"
    kind = "mixer"
    contract_version = 99

    def __init__(self, dim, *, num_heads=None):
        super().__init__()

    def forward(self, x):
        return x
'''


def _dist(root: Path, dist: str, module: str, source: str, entries: dict[str, str]) -> None:
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    lines = "\n".join(f"{k} = {v}" for k, v in entries.items())
    (info / "entry_points.txt").write_text(f"[mixerzoo.mixers]\n{lines}\n")


@pytest.fixture
def fake_dists(tmp_path: Path) -> Iterator[Path]:
    _dist(tmp_path, "acme-mixers", "acme_mixers", GOOD, {"channel_mix": "acme_mixers:ChannelMix", "attention": "acme_mixers:Attention", "dup": "acme_mixers:ChannelMix"})
    _dist(tmp_path, "beta-mixers", "beta_mixers", GOOD, {"dup": "beta_mixers:ChannelMix"})
    _dist(tmp_path, "broken-mixers", "broken_mixers", "raise ImportError('missing CUDA extension _bogus')\n", {"broken": "broken_mixers:Nope"})
    _dist(tmp_path, "future-mixers", "future_mixers", OLD_CONTRACT, {"future": "future_mixers:Future"})
    _dist(tmp_path, "exit-mixers", "exit_mixers", "import sys\nsys.exit(3)\n", {"quitter": "exit_mixers:Nope"})
    sys.path.insert(0, str(tmp_path))
    plugins.refresh_mixers()
    try:
        yield tmp_path
    finally:
        sys.path.remove(str(tmp_path))
        for mod in ("acme_mixers", "beta_mixers", "broken_mixers", "future_mixers", "exit_mixers"):
            sys.modules.pop(mod, None)
        plugins.refresh_mixers()


def _discover() -> list[warnings.WarningMessage]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plugins.list_mixers()
    return [w for w in caught if issubclass(w.category, RuntimeWarning)]


def test_working_plugin_is_listed_and_trains_in_a_poolformer(fake_dists: Path) -> None:
    _discover()
    assert "channel_mix" in plugins.list_mixers()
    assert plugins.mixer_spec("channel_mix").dist == "acme_mixers"
    model = mixerzoo.create_model("test_poolformer", mixers="channel_mix", num_classes=3)
    assert plugins.required_mixers(model) == {"acme_mixers.channel_mix": "acme_mixers"}  # qualified: unambiguous in config.json
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 0])
    before = [p.detach().clone() for p in model.parameters()]
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    # options reach the plugin; unknown ones raise TypeError
    m = mixerzoo.create_model("test_poolformer", mixers="channel_mix", mixer_options={"expand": 2})
    assert m.stages[0].blocks[0].token_mixer.proj.out_channels == 32
    with pytest.raises(TypeError):
        mixerzoo.create_model("test_poolformer", mixers="channel_mix", mixer_options={"bogus": 1})


def test_broken_plugin_is_isolated(fake_dists: Path) -> None:
    caught = _discover()
    text = " | ".join(str(w.message) for w in caught)
    assert "broken_mixers" in text and "_bogus" in text
    errs = {e.name: e for e in plugins.errors()}
    assert "broken" in errs and isinstance(errs["broken"].error, ImportError)
    with pytest.raises(plugins.MixerLoadError, match="broken_mixers") as info:
        plugins.create_mixer("broken", 8)
    assert isinstance(info.value.__cause__, ImportError)
    # everything else keeps working
    assert mixerzoo.create_model("test_poolformer")(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


def test_incompatible_contract_version_is_recorded(fake_dists: Path) -> None:
    caught = _discover()
    assert any("future_mixers" in str(w.message) and "contract_version" in str(w.message) for w in caught)
    assert "future" not in plugins.list_mixers()
    with pytest.raises(plugins.MixerLoadError, match="contract_version=99"):
        plugins.create_mixer("future", 8)


def test_duplicates_qualified_names_and_builtins(fake_dists: Path) -> None:
    caught = _discover()
    # a plugin can never override a built-in: bare name stays ours, the plugin's is qualified
    assert plugins.mixer_spec("attention").dist == "mixerzoo"
    assert plugins.mixer_spec("acme_mixers.attention").dist == "acme_mixers"
    assert any("built-in" in str(w.message) and "acme_mixers.attention" in str(w.message) for w in caught)
    # two plugins with one bare name: ambiguous bare name listing both; qualified names work
    with pytest.raises(plugins.UnknownMixerError, match="acme_mixers.dup.*beta_mixers.dup"):
        plugins.mixer_spec("dup")
    assert plugins.create_mixer("beta_mixers.dup", 8).mixer_name == "beta_mixers.dup"
    names = plugins.list_mixers()
    assert "dup" not in names and {"acme_mixers.dup", "beta_mixers.dup"} <= set(names)
    model = mixerzoo.create_model("test_poolformer", mixers="acme_mixers.dup")
    assert plugins.required_mixers(model) == {"acme_mixers.dup": "acme_mixers"}


def test_strict_mode_turns_warnings_into_errors(fake_dists: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIXERZOO_PLUGINS_STRICT", "1")
    plugins.refresh_mixers()
    with pytest.raises((plugins.MixerLoadError, plugins.UnknownMixerError)):
        plugins.list_mixers()


def test_unknown_mixer_suggests_close_names() -> None:
    with pytest.raises(plugins.UnknownMixerError, match="did you mean 'pooling'"):
        plugins.create_mixer("poolin", 8)


def test_register_mixer_in_process() -> None:
    class Doubler(torch.nn.Module):
        layout = "nlc"
        kind = "mixer"

        def __init__(self, dim: int, *, num_heads: int | None = None) -> None:
            super().__init__()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * x

    plugins.register_mixer("test_doubler", Doubler)
    try:
        assert "test_doubler" in plugins.list_mixers()
        with pytest.raises(ValueError, match="already registered"):
            plugins.register_mixer("test_doubler", Doubler)
        with pytest.raises(ValueError, match="built-in"):
            plugins.register_mixer("pooling", Doubler, override=True)
        m = mixerzoo.create_model("test_poolformer", mixers=["test_doubler", "pooling", "pooling", "pooling"])
        assert m(torch.randn(1, 3, 64, 64)).shape == (1, 1000)
    finally:
        plugins._registry._REGISTRY._in_process.pop("test_doubler", None)
        plugins.refresh_mixers()


def test_gate_in_token_mixer_host_is_rejected_naming_both() -> None:
    with pytest.raises(ValueError, match="'cbam'.*PoolFormer"):
        mixerzoo.create_model("test_poolformer", mixers="cbam")


def test_builtins_are_declared_as_entry_points_and_fallback_matches() -> None:
    table = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["mixerzoo.mixers"]
    assert table == _BUILTIN_FALLBACK
    import importlib.metadata as md

    ours = {ep.name: ep.value for ep in md.entry_points(group="mixerzoo.mixers") if re.sub(r"[-_.]+", "_", ep.dist.name).lower() == "mixerzoo"}
    assert ours == table, "reinstall the package (pip install -e .) after editing the entry points"


def test_plugin_calling_sys_exit_on_import_is_a_failed_plugin(fake_dists: Path) -> None:
    caught = _discover()  # before: SystemExit(3) ended the process
    assert any("exit_mixers" in str(w.message) and "SystemExit" in str(w.message) for w in caught)
    errs = {e.name: e for e in plugins.errors()}
    assert errs["quitter"].dist == "exit_mixers" and isinstance(errs["quitter"].error, SystemExit)
    with pytest.raises(plugins.MixerLoadError, match="exit_mixers") as info:
        plugins.create_mixer("quitter", 8)
    assert isinstance(info.value.__cause__, SystemExit)
    assert "channel_mix" in plugins.list_mixers()


def test_builtin_models_import_no_third_party_plugin(fake_dists: Path) -> None:
    plugins.refresh_mixers()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a broken plugin loaded on the way would warn
        model = mixerzoo.create_model("test_poolformer", mixers=["pooling", "attention", "pooling", "attention"])
        assert plugins.mixer_spec("attention").builtin
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1000)
    loaded = {"acme_mixers", "beta_mixers", "broken_mixers", "future_mixers", "exit_mixers"} & set(sys.modules)
    assert not loaded
    # a plugin name imports only what declares it; a listing still discovers everything
    assert plugins.mixer_spec("channel_mix").dist == "acme_mixers"
    assert "beta_mixers" not in sys.modules and "broken_mixers" not in sys.modules
    _discover()
    assert {"beta_mixers", "future_mixers"} <= set(sys.modules)
    assert {"channel_mix", "acme_mixers.attention"} <= set(plugins.list_mixers(qualified=True))
    assert {e.dist for e in plugins.errors()} >= {"broken_mixers", "exit_mixers", "future_mixers"}


def test_plugin_that_hangs_on_import_cannot_hang_a_builtin_model(tmp_path: Path) -> None:
    _dist(tmp_path, "sleepy-mixers", "sleepy_mixers", "import time\ntime.sleep(3600)\n", {"sleepy": "sleepy_mixers:X"})
    code = (
        "import torch, mixerzoo\n"
        "m = mixerzoo.create_model('test_poolformer', mixers='attention')\n"
        "print('OK', tuple(m(torch.randn(1, 3, 64, 64)).shape))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "OK (1, 1000)" in out.stdout, out.stderr[-2000:]
