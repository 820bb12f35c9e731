"""Publish and load through the fake Hub, in fresh client processes (HF_ENDPOINT is read at import)."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import safetensors.torch
import torch
from _hub_helpers import client_env, finish_client, run_client, start_client  # tests/hub is on sys.path (conftest)

import mixerzoo
from mixerzoo import hub

pytestmark = [pytest.mark.hub, pytest.mark.filterwarnings("ignore::RuntimeWarning")]

# Client helpers: build the reference model, a fixed input, and load the way mixerzoo.create_model does.
_COMMON = """
import mixerzoo, timm, warnings
warnings.simplefilter("ignore", RuntimeWarning)
from mixerzoo import hub
import safetensors.torch
def ref_model(name):
    torch.manual_seed(0)
    return mixerzoo.create_model(name, num_classes=10).eval()
def x_for(model):
    return torch.randn(2, *model.pretrained_cfg["input_size"], generator=torch.Generator().manual_seed(1))
def load(name, **kw):
    return timm.create_model(name, pretrained=True, **hub.prepare_kwargs(name, pretrained=True, **kw)).eval()
def same(model, ref):
    x = x_for(ref)
    with torch.no_grad():
        return bool(torch.equal(model(x), ref(x)))
def outcome(fn):
    try:
        fn()
        return {"ok": True}
    except Exception as e:
        return {"ok": False, "type": type(e).__name__, "msg": str(e)}
"""


def _gets(requests: list[dict], repo: str, filename: str) -> list[dict]:
    return [r for r in requests if r["method"] == "GET" and r["path"].endswith(f"/{repo}/resolve/main/{filename}")]


def test_publish_then_load_online_offline_and_via_timm(fakehub, hub_env, tmp_path):
    # 1. publish: a folder through the CLI entry, a model object directly (to a branch)
    res = run_client(
        _COMMON
        + f"""
from mixerzoo.cli import main  # the `mixerzoo` console script
vit = ref_model("test_vit")
d = hub.save_pretrained(vit, {str(tmp_path / "vit")!r}, metrics={{"top1": 1.0}})
assert main(["publish", str(d), "org/vit"]) == 0
pool = ref_model("test_poolformer")
info = hub.push_to_hub(pool, "org/pool", revision="v1", commit_message="tiny poolformer")
emit({{"oid": info.oid}})
""",
        hub_env,
    )
    files = fakehub.files("org/vit")
    assert files["model.safetensors"] == (tmp_path / "vit" / "model.safetensors").read_bytes()
    assert {"config.json", "README.md"} <= files.keys()
    assert "hf-hub:org/vit" in files["README.md"].decode()  # repo id filled into the usage snippet
    assert "main" in fakehub.repos["org/pool"].refs and fakehub.repos["org/pool"].refs["v1"] == res["oid"]
    assert "model.safetensors" not in fakehub.files("org/pool", "main")

    # 2. fresh process: mixerzoo path, timm path, pinned revision
    fakehub.reset_log()
    out = run_client(
        _COMMON
        + """
r = {}
r["mz"] = same(load("hf-hub:org/vit"), ref_model("test_vit"))
r["mz_create_model"] = same(mixerzoo.create_model("hf-hub:org/vit", pretrained=True).eval(), ref_model("test_vit"))
r["timm"] = same(timm.create_model("hf-hub:org/vit", pretrained=True).eval(), ref_model("test_vit"))
r["rev"] = same(load("hf-hub:org/pool@v1"), ref_model("test_poolformer"))
r["num_classes"] = load("hf-hub:org/vit", num_classes=3).num_classes
r["commit"] = hub.preflight("hf-hub:org/pool@v1", pretrained=True).commit
emit(r)
""",
        hub_env,
    )
    assert out == {
        "mz": True,
        "mz_create_model": True,
        "timm": True,
        "rev": True,
        "num_classes": 3,
        "commit": res["oid"],
    }
    assert len(_gets(fakehub.requests, "org/vit", "model.safetensors")) == 1  # one download, then the cache

    # 3. offline from the warm cache: no request reaches the server
    fakehub.reset_log()
    out = run_client(
        _COMMON
        + """
emit({"mz": same(load("hf-hub:org/vit"), ref_model("test_vit")),
      "timm": same(timm.create_model("hf-hub:org/vit", pretrained=True).eval(), ref_model("test_vit")),
      "rev": same(load("hf-hub:org/pool@v1"), ref_model("test_poolformer")),
      "missing": outcome(lambda: load("hf-hub:org/never-downloaded"))})
""",
        hub_env,
        HF_HUB_OFFLINE="1",
    )
    assert out["mz"] and out["timm"] and out["rev"]
    assert not out["missing"]["ok"]
    assert not [r for r in fakehub.requests if "/org/" in r["path"]]


def _hub_folder(tmp_path: Path, name: str = "test_vit") -> tuple[dict, bytes]:
    torch.manual_seed(0)
    d = hub.save_pretrained(mixerzoo.create_model(name, num_classes=10), tmp_path / f"src_{name}")
    return json.loads((d / "config.json").read_text()), (d / "model.safetensors").read_bytes()


@dataclass
class Faults:
    out: dict
    requests: list
    weights: bytes
    blob: Path
    marker: Path
    release: bytes
    cut: int


@pytest.fixture(scope="module")
def faults(fakehub, tmp_path_factory) -> Faults:
    """One client process runs every fault scenario against repos seeded here; tests assert on its report."""
    tmp = tmp_path_factory.mktemp("faults")
    env = client_env(fakehub.endpoint, tmp / "hf_home")
    cfg, weights = _hub_folder(tmp)
    marker = tmp / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    def put(repo, config, **files):
        fakehub.add_files(repo, {"config.json": json.dumps(config).encode(), **files})

    good = {"model.safetensors": weights}
    put("bad/arch", {**cfg, "architecture": "mz_no_such_net"}, **good)
    put("bad/mixer", {**cfg, "requires": {"mixers": {"acme.swin": "acme-mixers>=0.3"}}}, **good)
    put("bad/args", {**cfg, "model_args": {**cfg["model_args"], "evil_kwarg": 1}}, **good)
    put("bad/pickle", cfg, **{"pytorch_model.bin": pickle.dumps({"w": Evil()}, protocol=2)})
    put("bad/trunc", cfg, **{"model.safetensors": weights[: len(weights) // 2]})
    put("bad/huge", {**cfg, "model_args": {**cfg["model_args"], "embed_dim": 2**20}}, **good)
    put("bad/sha", {**cfg, "sha256": {"model.safetensors": "0" * 64}}, **good)
    fakehub.add_files("bad/noconfig", good)
    for repo in ("org/cachefix", "org/resume", "org/retry"):
        put(repo, cfg, **good)
    raw = io.BytesIO()
    torch.save({"state_dict": {"module." + k: v for k, v in safetensors.torch.load(weights).items()}}, raw)
    fakehub.add_files("org/release", {"official-0a1b.pth": raw.getvalue()})
    cut = 70_000
    assert len(weights) > 2 * cut
    fakehub.drop_once("org/resume/model.safetensors", cut)
    fakehub.fail_once("org/retry/model.safetensors", status=500)
    fakehub.drop_once("org/release/official-0a1b.pth", 40_000)
    blob = Path(env["HF_HUB_CACHE"]) / "models--org--cachefix" / "blobs" / hashlib.sha256(weights).hexdigest()
    fakehub.reset_log()
    out = run_client(
        _COMMON
        + f"""
import glob
from pathlib import Path
r = {{}}
# -- repos that must be refused, each with a clear error
for repo in ["arch", "mixer", "args", "pickle", "trunc", "noconfig", "does-not-exist", "huge", "sha"]:
    r[repo] = outcome(lambda: load("hf-hub:bad/" + repo))
r["mz_create_model"] = outcome(lambda: mixerzoo.create_model("hf-hub:bad/mixer", pretrained=True))
# -- a corrupted cache blob is caught; force_download repairs it
blob = Path({str(blob)!r})
r["first"] = same(load("hf-hub:org/cachefix"), ref_model("test_vit"))
data = blob.read_bytes()
blob.write_bytes(data[:-64] + bytes(b ^ 0x55 for b in data[-64:]))   # bit rot, same size
r["flipped"] = outcome(lambda: load("hf-hub:org/cachefix"))
blob.write_bytes(data[:-64])                                        # truncated
r["truncated"] = outcome(lambda: load("hf-hub:org/cachefix"))
r["repaired"] = same(load("hf-hub:org/cachefix", force_download=True), ref_model("test_vit"))
r["intact"] = blob.read_bytes() == data
# -- the server hangs up mid-file once: the download resumes and verifies. huggingface_hub resumes from the last
# whole chunk it wrote (10 MiB by default); shrink the chunk so this small file spans several.
import huggingface_hub.constants
huggingface_hub.constants.DOWNLOAD_CHUNK_SIZE = 16 << 10
r["resumed"] = same(load("hf-hub:org/resume"), ref_model("test_vit"))
# -- a failed download leaves nothing behind; the next call downloads and verifies
r["retry_first"] = outcome(lambda: load("hf-hub:org/retry"))
r["leftovers"] = glob.glob(os.environ["HF_HUB_CACHE"] + "/**/*.incomplete", recursive=True)
r["retry_second"] = same(load("hf-hub:org/retry"), ref_model("test_vit"))
# -- official release URLs (served by the fake hub here) use the url cache; pickles become safetensors once
p = hub.url_download({fakehub.endpoint!r} + "/org/release/resolve/main/official-0a1b.pth")
r["url_bytes"] = p.stat().st_size
st = hub.download._pickle_to_safetensors(p)
hub.verify_safetensors(st)
r["url_keys"] = sorted(safetensors.torch.load_file(str(st)))
# -- registry names with pretrained=True: hf_hub_id and official url cfgs (registered here for the test)
from timm.models import PretrainedCfg
from timm.models._registry import _model_pretrained_cfgs
base = dict(timm.models.get_pretrained_cfg("mz_test_vit").to_dict(), num_classes=10)
_model_pretrained_cfgs["mz_test_vit.fakehub"] = PretrainedCfg(**dict(base, tag="fakehub", hf_hub_id="org/cachefix"))
url = {fakehub.endpoint!r} + "/org/release/resolve/main/official-0a1b.pth"
_model_pretrained_cfgs["mz_test_vit.fakeurl"] = PretrainedCfg(**dict(base, tag="fakeurl", url=url))
r["registry_hub"] = same(load("mz_test_vit.fakehub", num_classes=10), ref_model("test_vit"))
r["registry_url"] = same(load("mz_test_vit.fakeurl", num_classes=10), ref_model("test_vit"))
r["registry_new_head"] = load("mz_test_vit.fakehub", num_classes=4).num_classes
emit(r)
""",
        env,
        timeout=180,
    )
    return Faults(out, list(fakehub.requests), weights, blob, marker, raw.getvalue(), cut)


def test_unknown_architecture_and_missing_mixer_fail_before_weights(faults):
    out = faults.out
    assert out["arch"]["type"] == "UnknownArchitectureError" and "mz_no_such_net" in out["arch"]["msg"]
    assert out["mixer"]["type"] == "MissingMixerError" and "pip install 'acme-mixers>=0.3'" in out["mixer"]["msg"]
    assert out["mz_create_model"]["type"] == "MissingMixerError"
    for repo in ("bad/arch", "bad/mixer"):
        assert not _gets(faults.requests, repo, "model.safetensors"), repo


def test_model_args_checked_against_constructor_before_build(faults):
    assert faults.out["args"]["type"] == "InvalidConfigError" and "evil_kwarg" in faults.out["args"]["msg"]
    assert not _gets(faults.requests, "bad/args", "model.safetensors")


def test_oversized_config_is_refused_before_weights_and_sha256_is_checked(faults):
    out = faults.out
    assert out["huge"]["type"] == "ModelTooLargeError" and "MIXERZOO_MAX_PARAMS=" in out["huge"]["msg"]
    assert not _gets(faults.requests, "bad/huge", "model.safetensors")
    assert out["sha"]["type"] == "CorruptCheckpointError" and "config.json records " + "0" * 64 in out["sha"]["msg"]


def test_pickle_only_repo_is_refused_and_never_downloaded(faults):
    assert faults.out["pickle"]["type"] == "UnsafeCheckpointError"
    assert "pytorch_model.bin" in faults.out["pickle"]["msg"] and "mixerzoo convert" in faults.out["pickle"]["msg"]
    assert not _gets(faults.requests, "bad/pickle", "pytorch_model.bin")
    assert not faults.marker.exists()


def test_truncated_repo_file_and_missing_repo_errors(faults):
    out = faults.out
    assert out["trunc"]["type"] == "CorruptCheckpointError"
    assert "model.safetensors" in out["trunc"]["msg"] and "force_download=True" in out["trunc"]["msg"]
    assert "config.json" in out["noconfig"]["msg"]
    assert out["does-not-exist"]["type"] == "RepositoryNotFoundError"


def test_corrupted_cache_is_detected_and_force_download_repairs_it(faults):
    out = faults.out
    assert out["first"] and out["repaired"] and out["intact"]
    for case in ("flipped", "truncated"):
        assert out[case]["type"] == "CorruptCheckpointError", out[case]
        assert str(faults.blob) in out[case]["msg"] and "force_download=True" in out[case]["msg"]
    assert "sha256" in out["flipped"]["msg"] and "truncated" in out["truncated"]["msg"]


def test_interrupted_download_resumes_and_verifies(faults):
    assert faults.out["resumed"]
    gets = _gets(faults.requests, "org/resume", "model.safetensors")
    cont = faults.cut - faults.cut % (16 << 10)  # the last whole 16 KiB chunk before the cut
    assert [g["range"] for g in gets] == [None, f"bytes={cont}-"]  # continues where the cut was


def test_failed_download_leaves_no_partial_file(faults):
    assert faults.out["retry_first"]["type"] == "HfHubHTTPError"
    assert faults.out["leftovers"] == [] and faults.out["retry_second"]


def test_official_url_download_resumes_and_becomes_safetensors(faults):
    assert faults.out["url_bytes"] == len(faults.release)
    gets = [r for r in faults.requests if r["path"].endswith("official-0a1b.pth") and r["method"] == "GET"]
    assert [g["range"] for g in gets] == [None, "bytes=32768-"]  # the last whole 16 KiB chunk before the cut
    assert faults.out["url_keys"] == sorted(safetensors.torch.load(faults.weights))  # module. prefix gone


def test_two_processes_share_one_cache(fakehub, hub_env, tmp_path):
    cfg, weights = _hub_folder(tmp_path)
    fakehub.add_files("org/shared", {"config.json": json.dumps(cfg).encode(), "model.safetensors": weights})
    go = tmp_path / "go"
    code = (
        _COMMON
        + f"""
import time, pathlib
ref = ref_model("test_vit")
pathlib.Path({str(tmp_path)!r}, "ready-" + str(os.getpid())).touch()
deadline = time.time() + 60
while not pathlib.Path({str(go)!r}).exists() and time.time() < deadline:
    time.sleep(0.01)
emit({{"same": same(load("hf-hub:org/shared"), ref)}})
"""
    )
    fakehub.chunk_size = 8 << 10
    fakehub.chunk_delay = 0.05  # ~23 chunks, ~1.2 s per download: the two processes overlap
    fakehub.reset_log()
    try:
        procs = [start_client(code, hub_env) for _ in range(2)]
        for _ in range(6000):
            if len(list(tmp_path.glob("ready-*"))) == 2 or any(p.poll() is not None for p in procs):
                break
            time.sleep(0.02)
        go.touch()
        outs = [finish_client(p) for p in procs]
    finally:
        fakehub.chunk_delay = 0.0
        fakehub.chunk_size = None
    assert outs == [{"same": True}, {"same": True}]
    path = "/org/shared/resolve/main/model.safetensors"
    heads = sorted(r["t"] for r in fakehub.requests if r["method"] == "HEAD" and r["path"] == path)
    gets = sorted(_gets(fakehub.requests, "org/shared", "model.safetensors"), key=lambda g: g["t"])
    assert 1 <= len(gets) <= 2
    # overlap: the second process asked for the file while the first download was still streaming
    assert heads[1] < gets[0]["t_end"]
    cache = Path(hub_env["HF_HUB_CACHE"]) / "models--org--shared"
    blobs = sorted(p.name for p in (cache / "blobs").iterdir())
    assert hashlib.sha256(weights).hexdigest() in blobs and len(blobs) == 2  # config + weights, nothing else
    blob = cache / "blobs" / hashlib.sha256(weights).hexdigest()
    assert blob.read_bytes() == weights
    assert not list(cache.rglob("*.incomplete"))


def test_registry_names_load_verified_safetensors(faults):
    assert faults.out["registry_hub"] and faults.out["registry_url"]
    assert faults.out["registry_new_head"] == 4  # timm's head adaptation still applies
