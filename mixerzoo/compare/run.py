"""``mixerzoo compare``: several model specs (a host with different token mixers, or any models) trained and
measured under one recipe, seed, data order and budget.

Every spec trains in its own run folder ``<output>/specs/<i>-<slug>/run`` through the training recipe
(:func:`mixerzoo.train.loop.fit`), in a child process spawned per spec, so that

* its peak memory is its own (``mem_kind`` says which figure): on CPU ``cpu_step_rss``, the resident-set
  high-water mark of a training step after two warm-up steps (``/proc/self/status`` ``VmHWM``, reset through
  ``/proc/self/clear_refs``) minus the resident set measured after building the model, so gradients, optimizer
  state and activations count and the weights do not; ``cpu_maxrss_process`` (``ru_maxrss`` of the whole child)
  where the high-water mark cannot be reset; on CUDA ``cuda_max_allocated``, ``torch.cuda.max_memory_allocated``
  over one step beyond what was allocated before it;
* a spec that crashes (exception, out of memory, a mixer that fails) is reported in its row and the rest go on;
* a killed compare resumes where it stopped: a spec with ``result.json`` is not trained again, an interrupted
  spec continues from its last checkpoint (the recipe's ``--resume``), a failed one is tried again.

Budget: ``epochs`` (the recipe's), or ``minutes`` per spec: each spec then gets as many epochs as its measured
training throughput fits in that time (at least one), decided once and kept in ``budget.json``, so a resumed
spec keeps its schedule.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mixerzoo.hub._io import atomic_write_text, write_with
from mixerzoo.spec import ModelSpec, SpecError
from mixerzoo.train.recipe import Recipe, RecipeError, build_recipe, load_yaml

__all__ = ["CompareJob", "compare", "load_specs_file", "make_jobs", "parse_spec_list", "write_report"]

_log = logging.getLogger(__name__)

# keys of the recipe that compare decides per spec (the run folder) or that a spec carries
_PER_SPEC = ("model", "mixers", "mixer_options", "model_args", "output", "resume", "overwrite")
COLUMNS = ("index", "label", "status", "params_m", "gmacs", "train_img_s", "train_ratio", "infer_img_s",
           "infer_ratio", "peak_mem_mb", "mem_kind", "top1", "top5", "best_top1", "final_loss", "epochs",
           "train_seconds", "spec", "error")


# ----------------------------------------------------------------------------------------------- specs


def _slug(text: str) -> str:
    s = re.sub(r"[^A-Za-z0-9_.+-]+", "-", text).strip("-.")
    return (s or "spec")[:60]


def parse_spec_list(host: str, mixers: str, *, mixer_options: dict[str, Any] | None = None,
                    model_args: dict[str, Any] | None = None) -> list[ModelSpec]:
    """``'pooling,attention,pooling/pooling/attention/attention'`` → one spec per comma item (``/`` separates the
    mixers of the stages inside one item). ``mixer_options`` maps a mixer name to its options, given to every
    stage that uses that mixer; ``model_args`` go to every spec."""
    items = [m.strip() for m in mixers.split(",")]
    if not mixers.strip() or any(not m for m in items):
        raise SpecError(f"--mixers={mixers!r}: expected comma-separated mixer names (one spec each; '/' between "
                        "the stages of one spec), e.g. pooling,attention,window")
    out = []
    for item in items:
        names = [n.strip() for n in item.split("/")]
        if any(not n for n in names):
            raise SpecError(f"--mixers={mixers!r}: empty stage in {item!r}")
        mix: str | list[str] = names[0] if len(names) == 1 else names
        out.append(ModelSpec.parse(host, mix, _options_for(names, mixer_options), dict(model_args or {})))
    return out


def _options_for(names: list[str], by_name: dict[str, Any] | None) -> Any:
    if not by_name:
        return None
    if len(names) == 1:
        return by_name.get(names[0])
    per = [by_name.get(n) or {} for n in names]
    return per if any(per) else None


def parse_mixer_options_map(text: str | None) -> dict[str, dict[str, Any]]:
    """``--mixer-options`` of compare: a JSON object from mixer name to its options."""
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise SpecError(f"--mixer-options={text!r}: compare expects a JSON object from mixer name to its options, "
                        "e.g. '{\"window\": {\"window_size\": 4}}' (per-spec options go in a --specs file)")
    return value


def load_specs_file(path: str | Path, host: str | None, *, mixer_options: dict[str, Any] | None = None,
                    model_args: dict[str, Any] | None = None) -> list[tuple[ModelSpec, str | None]]:
    """A YAML list of specs. Each item is a mixer name for ``host`` (``'pooling'``, ``'pooling/attention'``), or a
    mapping with ``mixers``, ``mixer_options`` (one mapping or one per stage), ``model_args``, optional ``model``
    (default: ``host``) and ``label`` (the row's name)."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise SpecError(f"--specs: file {str(path)!r} does not exist")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError:
        raise SpecError(f"--specs {str(path)!r}: invalid YAML") from None
    if isinstance(raw, dict) and "specs" in raw:
        raw = raw["specs"]
    if not isinstance(raw, list) or not raw:
        raise SpecError(f"--specs {str(path)!r}: expected a non-empty YAML list of specs, got {type(raw).__name__}")
    out: list[tuple[ModelSpec, str | None]] = []
    for i, item in enumerate(raw):
        where = f"--specs {p.name!r} item {i}"
        if isinstance(item, str):
            if host is None:
                raise SpecError(f"{where}: {item!r} names mixers but no HOST model was given")
            out.append((parse_spec_list(host, item.replace(",", "/"), mixer_options=mixer_options,
                                        model_args=model_args)[0], None))
            continue
        if not isinstance(item, dict):
            raise SpecError(f"{where}: expected a mixer name or a mapping, got {item!r}")
        unknown = sorted(set(item) - {"model", "mixers", "mixer_options", "model_args", "label"})
        if unknown:
            raise SpecError(f"{where}: unknown key(s) {unknown} (keys: model, mixers, mixer_options, model_args, "
                            "label)")
        model = item.get("model") or host
        if not model:
            raise SpecError(f"{where}: no 'model' and no HOST model given")
        args = {**(model_args or {}), **(item.get("model_args") or {})}
        opts = item.get("mixer_options")
        if opts is None and isinstance(item.get("mixers"), str):
            opts = (mixer_options or {}).get(item["mixers"])
        try:
            spec = ModelSpec.parse(model, item.get("mixers"), opts, args)
        except SpecError as e:
            raise SpecError(f"{where}: {e}") from None
        label = item.get("label")
        out.append((spec, str(label) if label is not None else None))
    return out


def _label(spec: ModelSpec, host: str | None) -> str:
    if spec.mixers is not None and not spec.mixer_options and not spec.model_args and spec.model == host:
        return spec.mixers if isinstance(spec.mixers, str) else "/".join(spec.mixers)
    return spec.describe()


# ----------------------------------------------------------------------------------------------- jobs


@dataclass(frozen=True)
class CompareJob:
    """One spec of a comparison: its row label, folder and the recipe keys it trains with."""

    index: int
    label: str
    spec: ModelSpec
    overrides: dict[str, Any]  # recipe keys (with the spec's and the run folder)
    folder: Path
    minutes: float | None
    bench_iters: int
    bench_batch: int | None

    @property
    def run_dir(self) -> Path:
        return self.folder / "run"

    def key(self) -> dict[str, Any]:
        """What must be the same for a finished result to be reused."""
        ov = {k: v for k, v in self.overrides.items() if k not in ("output", "resume", "overwrite", "quiet")}
        return json.loads(json.dumps({"label": self.label, "spec": self.spec.to_dict(), "recipe": ov,
                                      "minutes": self.minutes, "bench_iters": self.bench_iters,
                                      "bench_batch": self.bench_batch}, default=list))


def data_defaults(data: str | None) -> dict[str, Any]:
    """Recipe values for procedural data that the recipe's own layers do not know (``pathfinder:``)."""
    if data and data.startswith("pathfinder:"):
        from .pathfinder import RECIPE_DEFAULTS, parse_source

        try:
            cfg = parse_source(data)[0]
        except ValueError as e:
            raise RecipeError(str(e)) from None
        return {**RECIPE_DEFAULTS, "img_size": cfg.size}
    return {}


def make_jobs(specs: Sequence[tuple[ModelSpec, str | None]], overrides: dict[str, Any], output: Path, *,
              host: str | None = None, config: str | None = None, minutes: float | None = None,
              bench_iters: int = 5, bench_batch: int | None = None) -> list[CompareJob]:
    """One job per spec: the recipe keys (``data_defaults`` < ``config`` file < ``overrides``) plus the spec."""
    from_file = load_yaml(config) if config else {}
    bad = sorted(k for k in ("mixers", "mixer_options", "model_args", "model") if k in from_file)
    if bad:
        raise RecipeError(f"--config {str(config)!r}: {', '.join(bad)} belong to the specs of a comparison "
                          "(HOST, --mixers, --specs), not to the shared recipe")
    given = {**from_file, **overrides}
    base = {**data_defaults(given.get("data", "digits")), **given}
    base.setdefault("log_every", 1)  # the learning curves: every optimizer step
    jobs, seen = [], set()
    for i, (spec, label) in enumerate(specs):
        label = label or _label(spec, host)
        if label in seen:
            label = f"{label}#{i}"
        seen.add(label)
        folder = output / "specs" / f"{i}-{_slug(label)}"
        ov = {**base, **{k: v for k, v in spec.to_dict().items() if v not in (None, {})}, "output": str(folder / "run"),
              "quiet": True}
        jobs.append(CompareJob(i, label, spec, ov, folder, minutes, bench_iters, bench_batch))
    return jobs


def check_jobs(jobs: Sequence[CompareJob]) -> dict[int, str]:
    """Build every recipe and check every spec on the meta device; ``{index: one-line error}`` for bad ones."""
    bad: dict[int, str] = {}
    for job in jobs:
        try:
            recipe = build_recipe(job.overrides, mode="train")
            job.spec.validate(in_chans=recipe.in_chans)
        except RecipeError as e:
            bad[job.index] = str(e)
    return bad


# ----------------------------------------------------------------------------------------------- child


def _die_with_parent() -> None:
    """Linux: the child gets SIGKILL when the compare process dies (a killed compare leaves no orphan training)."""
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _device(recipe: Recipe) -> Any:
    import torch

    if recipe.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(recipe.device)


def measure(model: Any, *, img_size: int, in_chans: int, batch: int, iters: int, device: Any,
            num_classes: int) -> dict[str, Any]:
    """Params, forward GMACs at batch 1, train/inference images per second on ``device`` and the peak memory of
    one training step (see the module docstring for what ``mem_kind`` means)."""
    import torch

    from mixerzoo.bench.measure import _proc_status_kb, _reset_hwm, count_flops, count_params

    out: dict[str, Any] = {"params_m": count_params(model) / 1e6, "img_size": img_size, "bench_batch": batch,
                           "device": str(device)}
    model.eval()
    try:
        out["gmacs"] = count_flops(model, (1, in_chans, img_size, img_size), device="cpu") / 2e9
    except Exception as e:  # noqa: BLE001 - an op without a FLOP formula: the column stays empty
        out["gmacs"], out["gmacs_error"] = None, f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    model.to(device)
    x = torch.randn(batch, in_chans, img_size, img_size, device=device)
    target = torch.randint(0, num_classes, (batch,), device=device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def train_step() -> None:
        loss = torch.nn.functional.cross_entropy(model(x).float(), target)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    import gc

    gc.collect()
    base_kb = _proc_status_kb("VmRSS") or 0  # the built model is in here; grads, optimizer state, activations not
    model.train()
    for _ in range(2):
        train_step()
    sync()
    # peak memory of one steady-state training step
    if device.type == "cuda":
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        train_step()
        sync()
        out["peak_mem_mb"], out["mem_kind"] = (torch.cuda.max_memory_allocated(device) - base) / 2**20, \
            "cuda_max_allocated"
    else:
        if _reset_hwm():
            train_step()
            out["peak_mem_mb"], out["mem_kind"] = ((_proc_status_kb("VmHWM") or 0) - base_kb) / 1024, "cpu_step_rss"
        else:
            import resource

            train_step()
            out["peak_mem_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            out["mem_kind"] = "cpu_maxrss_process"
    t0 = time.perf_counter()
    for _ in range(iters):
        train_step()
    sync()
    out["train_img_s"] = batch * iters / max(time.perf_counter() - t0, 1e-9)
    model.eval()
    with torch.inference_mode():
        model(x)
        sync()
        t0 = time.perf_counter()
        for _ in range(iters):
            model(x)
        sync()
    out["infer_img_s"] = batch * iters / max(time.perf_counter() - t0, 1e-9)
    del opt
    return out


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _curve(run_dir: Path) -> dict[str, list[Any]]:
    steps, losses, epochs, top1, val_loss = [], [], [], [], []
    path = run_dir / "metrics.jsonl"
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("event") == "step":
                steps.append(rec["global_step"])
                losses.append(rec["loss"])
            elif rec.get("event") == "epoch" and "val_top1" in rec:
                epochs.append(rec["epoch"])
                top1.append(rec["val_top1"])
                val_loss.append(rec.get("val_loss"))
    return {"step": steps, "loss": losses, "epoch": epochs, "val_top1": top1, "val_loss": val_loss}


def run_job(job: CompareJob, send: Callable[[tuple[Any, ...]], None] = lambda m: None) -> dict[str, Any]:
    """Measure and train one spec (in the calling process); returns its row and writes ``result.json``."""
    import torch

    from mixerzoo.train import rundir
    from mixerzoo.train.data import open_sources, resolve_data_config
    from mixerzoo.train.loop import fit

    recipe = build_recipe(job.overrides, mode="train")
    device = _device(recipe)
    job.folder.mkdir(parents=True, exist_ok=True)
    meas_path, budget_path = job.folder / "measure.json", job.folder / "budget.json"
    meas = _read_json(meas_path)
    budget = _read_json(budget_path)
    if meas is None or (job.minutes is not None and budget is None):
        torch.manual_seed(recipe.seed)
        train_src, _ = open_sources(recipe.data, recipe.val_data, val_split=recipe.val_split,
                                    digits_size=recipe.img_size or 32, verify=recipe.verify_images)
        n_cls = recipe.num_classes or len(train_src.classes)
        model = job.spec.create(num_classes=n_cls, in_chans=recipe.in_chans)
        img = resolve_data_config(model, recipe).img_size
        bs = job.bench_batch or min(recipe.batch_size // recipe.grad_accum_steps, 64)
        send(("phase", "measuring"))
        meas = measure(model, img_size=img, in_chans=recipe.in_chans, batch=bs, iters=job.bench_iters,
                       device=device, num_classes=n_cls)
        meas["n_train"] = len(train_src)
        del model, train_src
        atomic_write_text(meas_path, json.dumps(meas, indent=2))
        if job.minutes is not None:
            per_epoch = meas["n_train"] / max(meas["train_img_s"], 1e-9) / 0.8  # data loading, eval
            budget = {"epochs": max(1, int(job.minutes * 60 / per_epoch)), "minutes": job.minutes,
                      "est_epoch_seconds": per_epoch}
            atomic_write_text(budget_path, json.dumps(budget, indent=2))
    overrides = dict(job.overrides)
    if budget is not None and job.minutes is not None:
        overrides["epochs"] = int(budget["epochs"])
    run_dir = job.run_dir
    has_ckpt = (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").glob("step_*"))
    if has_ckpt:
        overrides["resume"] = True
    elif run_dir.is_dir() and rundir.has_run(run_dir):
        overrides["overwrite"] = True  # killed before its first checkpoint: nothing to continue from
    recipe = build_recipe(overrides, mode="train")
    send(("phase", "training", recipe.epochs))

    def on_step(rec: dict[str, Any]) -> None:
        send(("step", rec["epoch"], rec["step"], rec["global_step"], rec["loss"]))

    result = fit(recipe, on_step=on_step)
    row = {**_base_row(job), "status": "ok", **{k: meas.get(k) for k in (
        "params_m", "gmacs", "train_img_s", "infer_img_s", "peak_mem_mb", "mem_kind", "img_size", "device",
        "bench_batch")},
        "top1": result.top1, "top5": result.top5, "best_top1": result.best_top1, "epochs": result.epochs,
        "train_seconds": result.seconds, "resumed": has_ckpt, "curve": _curve(run_dir)}
    losses = row["curve"]["loss"]
    hist = [h for h in result.history if "train_loss" in h]
    row["final_loss"] = hist[-1]["train_loss"] if hist else (losses[-1] if losses else None)
    atomic_write_text(job.folder / "result.json", json.dumps({"key": job.key(), "row": row}, indent=2))
    (job.folder / "error.json").unlink(missing_ok=True)
    return row


def _base_row(job: CompareJob) -> dict[str, Any]:
    return {"index": job.index, "label": job.label, "spec": job.spec.describe(), "folder": str(job.folder)}


def _in_process_mixers() -> list[tuple[str, type]]:
    """Mixers registered with ``register_mixer`` in this process: a spawned child registers them again (their
    classes travel by reference, so they must be importable: a module, a test file, the ``__main__`` script)."""
    from mixerzoo.plugins._registry import _REGISTRY, IN_PROCESS

    return [(s.name, s.cls) for providers in list(_REGISTRY._specs.values()) for s in providers if s.dist == IN_PROCESS]


def _child(job: CompareJob, conn: Any, mixers: Sequence[tuple[str, type]] = ()) -> None:
    _die_with_parent()
    logging.getLogger().setLevel(logging.WARNING)
    code = 0
    try:
        from mixerzoo.plugins import register_mixer

        for name, cls in mixers:
            register_mixer(name, cls, override=True)
        run_job(job, send=conn.send)
        conn.send(("done",))
    except BaseException as e:  # noqa: BLE001 - reported as the spec's row; the comparison goes on
        from mixerzoo.train._cli import one_line_error

        msg = one_line_error(e, always=True) or type(e).__name__
        if not isinstance(e, RecipeError):
            msg = f"{type(e).__name__}: {msg}"
        with contextlib.suppress(Exception):
            conn.send(("error", msg[:500]))
        code = 1
    finally:
        with contextlib.suppress(Exception):
            conn.close()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


# ----------------------------------------------------------------------------------------------- driver


def _finished(job: CompareJob) -> dict[str, Any] | None:
    data = _read_json(job.folder / "result.json")
    if isinstance(data, dict) and data.get("key") == job.key() and isinstance(data.get("row"), dict):
        return data["row"]
    return None


def _check_folder(job: CompareJob) -> None:
    saved = _read_json(job.folder / "job.json")
    if saved is not None and saved != job.key():
        raise RecipeError(f"output: {str(job.folder)!r} holds spec {saved.get('label')!r} with another recipe or "
                          "budget; rerun with the same flags to resume, or choose another --output")


def compare(jobs: Sequence[CompareJob], output: Path, *, invalid: dict[int, str] | None = None,
            progress: bool = True, isolate: bool = True) -> list[dict[str, Any]]:
    """Run every job not finished yet (one spawned child each, or in this process with ``isolate=False``), then
    write the report. Returns the rows in spec order."""
    from tqdm.auto import tqdm

    from mixerzoo.train.rundir import RunLock

    invalid = invalid or {}
    output.mkdir(parents=True, exist_ok=True)
    for job in jobs:
        _check_folder(job)
    lock = RunLock(output)
    lock.acquire()
    try:
        atomic_write_text(output / "compare.json", json.dumps(
            {"specs": [j.key() for j in jobs], "invalid": {str(k): v for k, v in invalid.items()}}, indent=2))
        rows: list[dict[str, Any]] = []
        outer = tqdm(total=len(jobs), desc="compare", unit="spec", disable=not progress, position=0,
                     dynamic_ncols=True)
        for job in jobs:
            outer.set_postfix_str(job.label)
            if job.index in invalid:
                rows.append({**_base_row(job), "status": "invalid", "error": invalid[job.index]})
                outer.update(1)
                continue
            done = _finished(job)
            if done is not None:
                rows.append({**done, "folder": str(job.folder)})
                outer.update(1)
                continue
            job.folder.mkdir(parents=True, exist_ok=True)
            atomic_write_text(job.folder / "job.json", json.dumps(job.key(), indent=2))
            rows.append(_run_isolated(job, progress) if isolate else _run_here(job))
            outer.update(1)
            _ratios(rows)
            write_report(rows + [{**_base_row(j), "status": "pending"} for j in jobs[len(rows):]], output)
        outer.close()
        _ratios(rows)
        write_report(rows, output)
        return rows
    finally:
        lock.release()


def _run_here(job: CompareJob) -> dict[str, Any]:
    try:
        return run_job(job)
    except Exception as e:  # noqa: BLE001 - reported as the spec's row; the comparison goes on
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return _failed(job, msg if isinstance(e, RecipeError) else f"{type(e).__name__}: {msg}"[:500])


def _failed(job: CompareJob, msg: str) -> dict[str, Any]:
    atomic_write_text(job.folder / "error.json", json.dumps({"error": msg}))
    return {**_base_row(job), "status": "failed", "error": msg}


def _run_isolated(job: CompareJob, progress: bool) -> dict[str, Any]:
    import multiprocessing as mp

    from tqdm.auto import tqdm

    # spawn, never fork: a child forked from a process whose OpenMP / BLAS / runtime threads hold locks can hang
    # forever in its first parallel region (seen: the first spec's child waiting on a futex)
    ctx = mp.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(job, send, _in_process_mixers()), name=f"compare-{job.index}",
                       daemon=False)
    proc.start()
    send.close()
    bar = tqdm(desc=f"  {job.label}", unit="step", disable=not progress, position=1, leave=False,
               dynamic_ncols=True)
    error: str | None = None
    epochs, done = None, False
    try:
        while True:
            if recv.poll(0.5):
                try:
                    msg = recv.recv()
                except EOFError:
                    break
                if msg[0] == "phase":
                    bar.set_description_str(f"  {job.label}: {msg[1]}")
                    if len(msg) > 2:
                        epochs = msg[2]
                elif msg[0] == "step":
                    _, epoch, _step, gstep, loss = msg
                    bar.set_description_str(f"  {job.label}: epoch {epoch + 1}/{epochs}")
                    bar.n = gstep
                    bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
                    bar.refresh()
                elif msg[0] == "error":
                    error = msg[1]
                elif msg[0] == "done":
                    done = True
            elif not proc.is_alive():
                break
    finally:
        bar.close()
        proc.join()
        recv.close()
    row = _finished(job)
    if row is not None and done:
        return {**row, "folder": str(job.folder)}
    if error is None:
        code = proc.exitcode
        error = (f"killed by signal {-code} (out of memory?)" if code is not None and code < 0
                 else f"the training process ended with exit status {code}")
    return _failed(job, error)


def _ratios(rows: list[dict[str, Any]]) -> None:
    ref = next((r for r in rows if r.get("status") == "ok"), None)
    for r in rows:
        for k in ("train", "infer"):
            a, b = r.get(f"{k}_img_s"), ref.get(f"{k}_img_s") if ref else None
            r[f"{k}_ratio"] = a / b if a and b else None


# ----------------------------------------------------------------------------------------------- report


def _fmt(v: Any, nd: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    head = ("#", "spec", "status", "params (M)", "GMACs", "train img/s", "× first", "infer img/s", "× first",
            "peak mem (MiB)", "top-1", "top-5", "best top-1", "final loss", "epochs", "train s")
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    notes = []
    for r in rows:
        status = r.get("status", "")
        if r.get("error"):
            notes.append(f"- {r['index']} `{r['label']}`: {r['error']}")
        cells = (r["index"], f"`{r['label']}`", status, _fmt(r.get("params_m"), 3), _fmt(r.get("gmacs"), 4),
                 _fmt(r.get("train_img_s"), 0), _fmt(r.get("train_ratio")), _fmt(r.get("infer_img_s"), 0),
                 _fmt(r.get("infer_ratio")), _fmt(r.get("peak_mem_mb"), 1), _fmt(r.get("top1")), _fmt(r.get("top5")),
                 _fmt(r.get("best_top1")), _fmt(r.get("final_loss"), 4), _fmt(r.get("epochs"), 0),
                 _fmt(r.get("train_seconds"), 1))
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    kinds = sorted({r["mem_kind"] for r in rows if r.get("mem_kind")})
    if kinds:
        lines.append("")
        lines.append(f"Peak memory: {', '.join(kinds)} (see mixerzoo.compare.run). Ratios are to the first spec "
                     "that ran.")
    if notes:
        lines += ["", "Errors:", *notes]
    return "\n".join(lines) + "\n"


def write_report(rows: Sequence[dict[str, Any]], output: Path) -> dict[str, Path]:
    """``results.md``, ``results.csv``, ``results.json`` and the plots, each written atomically."""
    paths = {"md": output / "results.md", "csv": output / "results.csv", "json": output / "results.json"}
    atomic_write_text(paths["md"], markdown_table(rows))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(COLUMNS), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k) for k in COLUMNS})
    atomic_write_text(paths["csv"], buf.getvalue())
    atomic_write_text(paths["json"], json.dumps(list(rows), indent=2, default=str))
    paths.update(plot(rows, output))
    return paths


def plot(rows: Sequence[dict[str, Any]], output: Path) -> dict[str, Path]:
    """Accuracy against GMACs and against training throughput, and the learning curves overlaid."""
    ok = [r for r in rows if r.get("status") == "ok"]
    if not ok:
        return {}
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    out: dict[str, Path] = {}
    for key, xlabel, name in (("gmacs", "GMACs (forward, batch 1)", "acc_vs_gmacs.png"),
                              ("train_img_s", "training throughput (img/s)", "acc_vs_throughput.png")):
        pts = [r for r in ok if r.get(key) is not None and r.get("top1") is not None]
        if not pts:
            continue
        fig, ax = plt.subplots(figsize=(6, 4.2))
        for r in pts:
            ax.scatter(r[key], r["top1"], s=40)
            ax.annotate(r["label"], (r[key], r["top1"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("val top-1 (%)")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        out[name] = write_with(output / name, lambda p, f=fig: f.savefig(p, format="png", dpi=110))
        plt.close(fig)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for r in ok:
        c = r.get("curve") or {}
        if c.get("step"):
            a1.plot(c["step"], c["loss"], label=r["label"], lw=1.2)
        if c.get("epoch"):
            a2.plot(c["epoch"], c["val_top1"], marker="o", ms=3, label=r["label"], lw=1.2)
    a1.set_xlabel("optimizer step")
    a1.set_ylabel("train loss")
    a2.set_xlabel("epoch")
    a2.set_ylabel("val top-1 (%)")
    for a in (a1, a2):
        a.grid(alpha=0.3)
    a2.legend(fontsize=8)
    fig.tight_layout()
    out["learning_curves.png"] = write_with(output / "learning_curves.png",
                                            lambda p: fig.savefig(p, format="png", dpi=110))
    plt.close(fig)
    return out
