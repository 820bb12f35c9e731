"""Client-process helpers for the hub tests (imported by conftest.py and the test modules)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
RESULT_MARK = "@@RESULT@@"

# Preamble of every client script: quiet logs, a helper to emit the JSON result, determinism.
_PRELUDE = f"""
import json, sys, os, logging
logging.basicConfig(level=logging.WARNING)
import torch
torch.manual_seed(0)
torch.set_num_threads(1)
def emit(obj):
    print({RESULT_MARK!r} + json.dumps(obj), flush=True)
"""


def client_env(endpoint: str, home: Path) -> dict[str, str]:
    """Environment for a client process: fake endpoint, private HF_HOME/cache, no telemetry, a dummy token."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(
        HF_ENDPOINT=endpoint,
        HF_HOME=str(home),
        HF_HUB_CACHE=str(home / "hub"),
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        HF_HUB_ETAG_TIMEOUT="10",
        HF_HUB_DOWNLOAD_TIMEOUT="20",
        HF_TOKEN="hf_fake_test_token",
        PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p),
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        PYTHONHASHSEED="0",
    )
    return env


def start_client(code: str, env: dict[str, str], **extra_env: str) -> subprocess.Popen[str]:
    script = _PRELUDE + textwrap.dedent(code)
    return subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=str(ROOT),
        env={**env, **extra_env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish_client(proc: subprocess.Popen[str], timeout: float = 120) -> Any:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"client timed out after {timeout}s\nstdout:\n{out}\nstderr:\n{err[-4000:]}") from None
    results = [line[len(RESULT_MARK) :] for line in out.splitlines() if line.startswith(RESULT_MARK)]
    if proc.returncode != 0 or not results:
        raise AssertionError(f"client failed (rc={proc.returncode})\nstdout:\n{out[-2000:]}\nstderr:\n{err[-6000:]}")
    return json.loads(results[-1])


def run_client(code: str, env: dict[str, str], timeout: float = 120, **extra_env: str) -> Any:
    """Run ``code`` (after a prelude defining ``emit``) in a fresh interpreter; return what it emitted last."""
    return finish_client(start_client(code, env, **extra_env), timeout=timeout)
