"""Every registered variant (tiny ``test_*`` ones included) keeps its ``state_dict()`` keys, order, shapes and
dtypes, its ``num_features``/``head_hidden_size`` and its ``feature_info`` module names, as recorded in
``tests/expect/manifest/state_dict.json.gz`` (built on the meta device, so the whole zoo takes a few seconds).

Published checkpoints and hub folders load by these names: a refactor of the hosts must not move them. A new
variant is added to the manifest on purpose, by regenerating it::

    .venv/bin/python -m tests.zoo.test_manifest --write
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path
from typing import Any

import pytest

import mixerzoo
from mixerzoo.zoo import get_entry

MANIFEST = Path(__file__).resolve().parents[1] / "expect" / "manifest" / "state_dict.json.gz"
ALL = mixerzoo.list_models(include_test=True)


def describe(name: str) -> dict[str, Any]:
    """What the manifest records for one variant (built on meta: no memory, no init cost)."""
    model = mixerzoo.create_model(name, device="meta")
    return {
        "family": get_entry(name).family,
        "state_dict": [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in model.state_dict().items()],
        "num_features": model.num_features,
        "head_hidden_size": getattr(model, "head_hidden_size", None),
        "feature_info": [[f["module"], f["num_chs"], f["reduction"]] for f in model.feature_info],
    }


def _load() -> dict[str, Any]:
    with gzip.open(MANIFEST, "rt") as f:
        return json.load(f)


RECORDED = _load()


def test_manifest_names_every_variant() -> None:
    assert sorted(RECORDED) == ALL, "regenerate with: python -m tests.zoo.test_manifest --write"


@pytest.mark.parametrize("name", ALL)
def test_variant_matches_manifest(name: str) -> None:
    want, got = RECORDED[name], describe(name)
    assert got["family"] == want["family"]
    want_keys = [k for k, *_ in want["state_dict"]]
    got_keys = [k for k, *_ in got["state_dict"]]
    missing, extra = sorted(set(want_keys) - set(got_keys)), sorted(set(got_keys) - set(want_keys))
    assert not missing and not extra, f"{name}: missing {missing[:5]}, unexpected {extra[:5]}"
    assert got_keys == want_keys, f"{name}: same keys, different order"
    assert got["state_dict"] == want["state_dict"], f"{name}: shapes/dtypes differ"
    assert {k: got[k] for k in ("num_features", "head_hidden_size", "feature_info")} == {
        k: want[k] for k in ("num_features", "head_hidden_size", "feature_info")
    }


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python -m tests.zoo.test_manifest --write")
    with gzip.open(MANIFEST, "wt", compresslevel=9) as f:
        json.dump({n: describe(n) for n in ALL}, f, sort_keys=True, separators=(",", ":"))
