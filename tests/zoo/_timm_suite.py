"""Load timm's own ``tests/test_models.py`` (from the timm sdist on PyPI, cached; never committed)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from types import ModuleType

import timm

CACHE = Path(os.environ.get("MIXERZOO_CACHE", Path(__file__).resolve().parents[2] / ".cache")) / "timm-tests"


def timm_test_models_path() -> Path:
    """Path of ``test_models.py`` for the installed timm version, downloading its sdist once."""
    version = timm.__version__
    dest = CACHE / version / "test_models.py"
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", f"timm=={version}", "--no-deps", "--no-binary", ":all:",
             "--quiet", "-d", tmp],
            check=True, timeout=300,
        )  # fmt: skip
        (sdist,) = Path(tmp).glob("timm-*.tar.gz")
        with tarfile.open(sdist) as tar:
            member = tar.getmember(f"timm-{version}/tests/test_models.py")
            data = tar.extractfile(member).read()  # type: ignore[union-attr]
    tmp_dest = dest.with_suffix(".tmp")
    tmp_dest.write_bytes(data)
    tmp_dest.replace(dest)
    return dest


def load_timm_test_models() -> ModuleType:
    path = timm_test_models_path()
    spec = importlib.util.spec_from_file_location("timm_upstream_test_models", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
