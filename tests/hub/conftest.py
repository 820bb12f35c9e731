"""Fixtures for the hub tests: the fake Hub server and a runner for client subprocesses.

huggingface_hub reads ``HF_ENDPOINT``/``HF_HUB_OFFLINE``/cache paths at import time (and ``import timm`` imports it),
so all client-side code runs in subprocesses whose environment points at the fake server and a temporary cache.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from _hub_helpers import client_env  # noqa: E402
from fakehub import FakeHub  # noqa: E402


@pytest.fixture(scope="module")
def fakehub() -> Iterator[FakeHub]:
    hub = FakeHub()
    hub.start()
    try:
        yield hub
    finally:
        hub.stop()


@pytest.fixture
def hub_env(fakehub: FakeHub, tmp_path: Path) -> dict[str, str]:
    """Environment for a client process: fake endpoint, private HF_HOME/cache, no telemetry, a dummy token."""
    return client_env(fakehub.endpoint, tmp_path / "hf_home")
