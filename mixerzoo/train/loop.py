"""The training loop (plain PyTorch): ``fit`` for train/finetune, ``evaluate_recipe`` for eval.

Run under ``torchrun --nproc_per_node N -m mixerzoo.train ...`` it uses DDP (gloo on CPU, nccl on CUDA) with a
DistributedSampler; the global batch is split across processes, metrics are all-reduced, only rank 0 writes.
With ``--fsdp`` the model is sharded over the processes instead (FSDP2, :mod:`mixerzoo.train.fsdp`).

Determinism: before every optimizer step the torch/numpy/python RNGs are seeded from (seed, epoch, step), the
sample order is a function of (seed, epoch) and each sample's augmentation of (seed, epoch, index); so a run
resumed from a mid-epoch checkpoint retraces the uninterrupted run exactly.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from . import checkpoint as ckpt
from . import fsdp, rundir
from .data import ImageDataset, build_loader, build_transform, open_sources, resolve_data_config, steps_per_epoch
from .finetune import check_spec, prepare_model, with_folder_spec
from .optim import create_criterion, create_mixup, create_optimizer, create_scheduler
from .recipe import Recipe, RecipeError
from .syncbn import convert_sync_batchnorm, has_batchnorm

__all__ = ["TrainResult", "evaluate", "evaluate_recipe", "fit", "plot_history"]

_log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What ``fit`` returns (on every rank; files are written by rank 0 only)."""

    output: Path
    model_dir: Path | None
    top1: float
    top5: float
    best_top1: float
    best_epoch: int
    epochs: int
    seconds: float
    img_per_s: float
    summary: str
    history: list[dict[str, Any]] = field(default_factory=list)
    model: nn.Module | None = None


# ----------------------------------------------------------------------------------------------- distributed


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def _setup(recipe: Recipe) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if recipe.device == "auto":
        device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    else:
        try:
            device = torch.device(recipe.device)
        except RuntimeError:
            raise RecipeError(f"device: {recipe.device!r} is not a torch device") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RecipeError(f"device: {recipe.device!r} requested but CUDA is not available")
        if device.type == "cuda" and world > 1 and device.index is None:
            device = torch.device(f"cuda:{local_rank}")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    owns = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        owns = True
    if recipe.batch_size % world:
        raise RecipeError(f"batch_size={recipe.batch_size} is not divisible by the {world} processes")
    return _Dist(rank, world, local_rank, device, owns)


def _all_sum(values: list[float], d: _Dist) -> list[float]:
    if d.world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=d.device if d.device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return t.tolist()


def _barrier(d: _Dist) -> None:
    if d.world > 1:
        dist.barrier()


def _seed_step(seed: int, epoch: int, step: int) -> None:
    s = int(np.random.SeedSequence([seed & 0xFFFFFFFF, epoch, step, 0x5EED]).generate_state(1)[0])
    torch.manual_seed(s)
    np.random.seed(s)
    random.seed(s)


def _amp(recipe: Recipe, device: torch.device) -> Any:
    on = recipe.amp == "bf16" or (recipe.amp == "auto" and device.type == "cuda")
    if not on:
        return nullcontext
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16)


# ----------------------------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Any,
    device: torch.device,
    *,
    amp: Any = nullcontext,
    channels_last: bool = False,
    d: _Dist | None = None,
) -> dict[str, float]:
    """Loss, top-1 and top-5 (percent) of ``model`` over ``loader``; summed across processes."""
    was_training = model.training
    model.eval()
    loss_sum, c1, c5, n = 0.0, 0.0, 0.0, 0.0
    crit = nn.CrossEntropyLoss(reduction="sum")
    for x, y in fsdp.lockstep(loader, model):  # a sharded model: every process runs as many forwards
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with amp():
            out = model(x)
        out = out.float()[: y.shape[0]]
        loss_sum += crit(out, y).item()
        k = min(5, out.shape[1])
        top = out.topk(k, dim=1).indices
        hit = top == y[:, None]
        c1 += hit[:, 0].sum().item()
        c5 += hit.any(dim=1).sum().item()
        n += y.numel()
    loss_sum, c1, c5, n = _all_sum([loss_sum, c1, c5, n], d or _Dist())
    model.train(was_training)
    n = max(n, 1.0)
    return {"loss": loss_sum / n, "top1": 100.0 * c1 / n, "top5": 100.0 * c5 / n, "count": int(n)}


# ----------------------------------------------------------------------------------------------- outputs


def plot_history(history: list[dict[str, Any]], path: str | Path, title: str = "") -> Path | None:
    """PNG with the loss curves (train, val) and the val accuracy per epoch (matplotlib, Agg)."""
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
    ax1.plot(ep, [h.get("train_loss", math.nan) for h in history], label="train")
    vl = [h.get("val_loss", math.nan) for h in history]
    if any(not math.isnan(v) for v in vl):
        ax1.plot(ep, vl, label="val")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss")
    ax1.legend()
    ax1.grid(alpha=0.3)
    ax2.plot(ep, [h.get("val_top1", math.nan) for h in history], label="val top-1")
    ax2.plot(ep, [h.get("val_top5", math.nan) for h in history], label="val top-5", alpha=0.6)
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("accuracy (%)")
    ax2.legend()
    ax2.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    from mixerzoo.hub._io import atomic_path

    try:
        with atomic_path(path) as tmp:  # a unique temp name per write: concurrent writers never collide
            fig.savefig(tmp, dpi=110, format="png")
    finally:
        plt.close(fig)
    return path


class _JsonlLog:
    def __init__(self, path: Path | None) -> None:
        self.path = path

    def write(self, record: dict[str, Any]) -> None:
        if self.path is None:
            return
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")


def _truncate_metrics(path: Path, global_step: int) -> None:
    """Drop the records a resumed run will write again (global_step after the checkpoint) and torn lines."""
    if not path.is_file():
        return
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict):
                raise ValueError
        except ValueError:
            dropped += 1
            continue
        if int(rec.get("global_step", 0)) > global_step:
            dropped += 1
            continue
        kept.append(line)
    if dropped:
        ckpt.atomic_write(path, "".join(f"{line}\n" for line in kept).encode())
        _log.info("metrics.jsonl: dropped %d record(s) after step %d (they are written again)", dropped, global_step)


def _export(model: nn.Module, out: Path, recipe: Recipe, metrics: dict[str, Any], plot: Path | None,
            classes: list[str], data_cfg: Any) -> Path:
    """Save the final model as a hub folder (mixerzoo.hub.save_pretrained, else safetensors + config.json).

    The pretrained cfg records what the model was trained for: classes, input size, crop_pct, interpolation.
    """
    cfg = dict(getattr(model, "pretrained_cfg", {}) or {})
    cfg["label_names"] = list(classes)
    cfg["num_classes"] = len(classes)
    cfg["input_size"] = (recipe.in_chans, data_cfg.img_size, data_cfg.img_size)
    cfg["crop_pct"] = data_cfg.crop_pct
    cfg["interpolation"] = data_cfg.interpolation
    cfg["mean"], cfg["std"] = tuple(data_cfg.mean), tuple(data_cfg.std)
    cfg.pop("test_input_size", None)
    cfg.pop("test_crop_pct", None)
    for k in ("url", "hf_hub_id", "file", "state_dict", "source", "tag"):
        cfg.pop(k, None)
    model.pretrained_cfg = cfg  # type: ignore[assignment]
    try:
        from mixerzoo.hub import save_pretrained
    except ImportError:
        save_pretrained = None
    if save_pretrained is not None:
        return Path(save_pretrained(model, out, metrics=metrics, recipe=recipe.to_dict(),
                                    plots=[plot] if plot is not None else None))
    from safetensors.torch import save_file  # fallback while the hub module is missing

    out.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(sd, str(out / "model.safetensors"))
    arch = cfg.get("architecture") or type(model).__name__
    config = {"architecture": arch, "num_classes": getattr(model, "num_classes", None),
              "num_features": getattr(model, "num_features", None), "global_pool": getattr(model, "global_pool", None),
              "model_args": getattr(model, "_model_args", {}), "pretrained_cfg": ckpt._jsonable(cfg, "pretrained_cfg")}
    config["model_args"] = {k: v for k, v in config["model_args"].items() if k not in ("device", "dtype")}
    (out / "config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")
    return out


# ----------------------------------------------------------------------------------------------- training


def fit(recipe: Recipe, *, mode: str = "train", on_step: Callable[[dict[str, Any]], None] | None = None
        ) -> TrainResult:
    """Train (``mode='train'``) or fine-tune (``'finetune'``) according to ``recipe``.

    ``on_step`` is called after every optimizer step with ``{epoch, step, global_step, loss, lr}``.
    Writes ``<output>/metrics.jsonl``, ``curves.png``, ``recipe.json``, ``checkpoints/`` and ``model/``, holding
    ``<output>/.mixerzoo.lock`` meanwhile; an output folder that already holds a run needs ``recipe.resume`` or
    ``recipe.overwrite`` (see :mod:`mixerzoo.train.rundir`), and nothing in it changes before the recipe, the data
    and the model were checked.
    """
    d = _setup(recipe)
    try:
        return _fit(recipe, mode, on_step, d)
    finally:
        if d.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def _fit(recipe: Recipe, mode: str, on_step: Callable[[dict[str, Any]], None] | None, d: _Dist) -> TrainResult:
    t_start = time.perf_counter()
    check_spec(recipe)  # unknown model or mixer, wrong stage count, options a mixer does not take: before the data
    recipe = with_folder_spec(recipe)  # fine-tuning a folder: recipe.json and checkpoints name its spec
    torch.manual_seed(recipe.seed)
    out = recipe.output_dir()
    ckpt_dir = out / "checkpoints"
    _rank0(lambda: rundir.precheck(recipe), d)  # read-only: a run already there, a live lock, resume without run
    # everything below up to rundir.claim only reads: the data, the model and the optimizer are checked before
    # the output folder is touched, so a typo cannot cost an earlier run
    train_src, val_src = open_sources(recipe.data, recipe.val_data, val_split=recipe.val_split,
                                      digits_size=recipe.img_size or 32, verify=recipe.verify_images)
    classes = train_src.classes
    if recipe.num_classes is not None and recipe.num_classes != len(classes):
        raise RecipeError(f"num_classes={recipe.num_classes} but the data {recipe.data!r} has {len(classes)} classes")
    if len(train_src) < recipe.batch_size:
        raise RecipeError(f"batch_size={recipe.batch_size} is larger than the {len(train_src)} training images")

    model = prepare_model(recipe, num_classes=len(classes), mode=mode, device=d.device)
    if d.world > 1 and recipe.sync_bn and has_batchnorm(model):
        model = convert_sync_batchnorm(model, d.device)  # before the optimizer and EMA: N processes train like one
    data_cfg = resolve_data_config(model, recipe)
    channels_last = recipe.channels_last and d.device.type == "cuda"
    if channels_last:
        model.to(memory_format=torch.channels_last)
    train_ds = ImageDataset(train_src, build_transform(data_cfg, recipe, train=True), seed=recipe.seed,
                            in_chans=recipe.in_chans)
    val_ds = ImageDataset(val_src, build_transform(data_cfg, recipe, train=False), in_chans=recipe.in_chans)
    local_bs = recipe.batch_size // d.world
    if local_bs % recipe.grad_accum_steps:
        raise RecipeError(f"grad_accum_steps={recipe.grad_accum_steps} does not divide the per-process batch "
                          f"{local_bs} (batch_size={recipe.batch_size} over {d.world} processes)")
    spe = steps_per_epoch(len(train_ds), recipe.batch_size, d.world)

    if recipe.fsdp and d.world > 1:
        model = fsdp.shard_model(model, d.device)  # before the optimizer: it must hold the shards
    elif recipe.fsdp:
        _log.info("fsdp: one process, nothing to shard (--fsdp takes effect under torchrun)")
    optimizer = create_optimizer(model, recipe)
    scheduler = create_scheduler(optimizer, recipe, spe)
    mixup = create_mixup(recipe, len(classes))
    if mixup is not None and local_bs % 2:
        raise RecipeError(f"mixup/cutmix need an even per-process batch, got {local_bs}")
    criterion = create_criterion(recipe, mixup)
    ema = None
    if recipe.ema:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=recipe.ema_decay)
    amp = _amp(recipe, d.device)

    lock = _rank0(lambda: rundir.claim(recipe), d)
    try:
        return _train(recipe, mode, on_step, d, t_start=t_start, out=out, ckpt_dir=ckpt_dir, model=model,
                      data_cfg=data_cfg, channels_last=channels_last, train_ds=train_ds, val_ds=val_ds,
                      classes=classes, local_bs=local_bs, spe=spe, optimizer=optimizer, scheduler=scheduler,
                      mixup=mixup, criterion=criterion, ema=ema, amp=amp)
    finally:
        if lock is not None:
            lock.release()


def _rank0(fn: Callable[[], Any], d: _Dist) -> Any:
    """Run ``fn`` on rank 0; if it raises there, every rank raises (instead of the others waiting forever)."""
    result, error = None, None
    if d.main:
        try:
            result = fn()
        except Exception as e:  # noqa: BLE001 - re-raised below, after the other ranks were told
            error = e
    failed = _all_sum([1.0 if error is not None else 0.0], d)[0]
    if error is not None:
        raise error
    if failed:
        raise RecipeError("rank 0 could not prepare the output folder (see its message)")
    return result


def _train(recipe: Recipe, mode: str, on_step: Callable[[dict[str, Any]], None] | None, d: _Dist, *,
           t_start: float, out: Path, ckpt_dir: Path, model: nn.Module, data_cfg: Any, channels_last: bool,
           train_ds: Any, val_ds: Any, classes: list[str], local_bs: int, spe: int, optimizer: Any, scheduler: Any,
           mixup: Any, criterion: Any, ema: Any, amp: Any) -> TrainResult:
    state: dict[str, Any] = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "history": [],
                             "loss_sum": 0.0, "loss_count": 0, "world": d.world, "batch_size": recipe.batch_size,
                             "seconds": 0.0, "spec": recipe.spec().to_dict()}
    if recipe.resume:
        tensors, meta = ckpt.load_checkpoint(ckpt_dir)
        saved = ckpt.restore(tensors, meta, model=model, optimizer=optimizer, scheduler=scheduler,
                             ema=ema.module if ema is not None else None)
        for key in ("world", "batch_size"):
            if saved.get(key) != state[key]:
                raise RecipeError(f"resume: checkpoint was written with {key}={saved.get(key)}, now {state[key]} "
                                  "(the data order would change)")
        if "spec" in saved and saved["spec"] != state["spec"]:
            from mixerzoo.spec import ModelSpec

            raise RecipeError(f"resume: the checkpoint holds the model {ModelSpec.from_dict(saved['spec']).describe()}"
                              f", not {recipe.spec().describe()}; drop the spec flags, or start a new run with "
                              "another --output")
        state.update(saved)
        if d.main:
            ckpt.set_aside_newer(ckpt_dir, meta["_loaded"])
            _truncate_metrics(out / "metrics.jsonl", int(state["global_step"]))
        _barrier(d)
        _log.info("resumed from %s: step %d (epoch %d, batch %d)", meta["_loaded"], state["global_step"],
                  state["epoch"] + 1, state["step_in_epoch"])
    base_seconds = float(state.get("seconds", 0.0))

    train_model: nn.Module = model
    if d.world > 1 and not fsdp.is_sharded(model):
        from torch.nn.parallel import DistributedDataParallel as DDP

        train_model = DDP(model, device_ids=[d.device.index] if d.device.type == "cuda" else None)
    log = _JsonlLog(out / "metrics.jsonl" if d.main else None)
    params = [p for p in model.parameters() if p.requires_grad]
    accum = recipe.grad_accum_steps
    pin = d.device.type == "cuda"
    show = d.main and not recipe.quiet

    def save(step_in_epoch: int, epoch: int) -> None:
        state.update(epoch=epoch, step_in_epoch=step_in_epoch,
                     seconds=base_seconds + time.perf_counter() - t_start)
        full = fsdp.full_state(model, optimizer) if fsdp.is_sharded(model) else (None, None)  # every rank
        if d.main:
            ckpt.save_checkpoint(ckpt_dir, step=state["global_step"], model=model, optimizer=optimizer,
                                 scheduler=scheduler, ema=ema.module if ema is not None else None,
                                 state=state, keep=recipe.keep_ckpts, model_state=full[0], optim_state=full[1])
        _barrier(d)

    last_eval: dict[str, float] = {}
    images_seen, train_time = 0, 0.0
    for epoch in range(int(state["epoch"]), recipe.epochs):
        start_step = int(state["step_in_epoch"]) if epoch == state["epoch"] else 0
        if start_step == 0:
            state["loss_sum"], state["loss_count"] = 0.0, 0
        loader = build_loader(train_ds, batch_size=local_bs, train=True, seed=recipe.seed, epoch=epoch,
                              skip_batches=start_step, rank=d.rank, world=d.world, workers=recipe.workers,
                              pin_memory=pin)
        train_model.train()
        bar = None
        if show:
            from tqdm.auto import tqdm

            bar = tqdm(total=spe, initial=start_step, desc=f"epoch {epoch + 1}/{recipe.epochs}", unit="step",
                       dynamic_ncols=True, leave=True)
        t_epoch = time.perf_counter()
        n_img = 0
        step = start_step
        for step, (x, y) in enumerate(loader, start=start_step):
            _seed_step(recipe.seed, epoch, step)
            x, y = x.to(d.device, non_blocking=True), y.to(d.device, non_blocking=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            if mixup is not None:
                x, y = mixup(x, y)
            optimizer.zero_grad(set_to_none=True)
            loss_v = 0.0
            # micro-batches of equal size: the mean of their mean losses is the batch's mean loss, so the summed
            # gradients of loss / accum are the full batch's; DDP/FSDP reduce only after the last one
            for i, (xc, yc) in enumerate(zip(x.chunk(accum), y.chunk(accum))):
                sync = fsdp.no_sync(train_model) if d.world > 1 and i < accum - 1 else nullcontext()
                with sync:
                    with amp():
                        output = train_model(xc)
                        loss = criterion(output.float(), yc)
                    if not torch.isfinite(loss):
                        lr_now = optimizer.param_groups[-1]["lr"]
                        raise RecipeError(f"loss is {loss.item()} at epoch {epoch + 1} step {step + 1} "
                                          f"(lr={lr_now:.3g}); try a lower --lr or --clip-grad")
                    (loss / accum if accum > 1 else loss).backward()
                loss_v += loss.item() / accum
            if recipe.clip_grad is not None:
                torch.nn.utils.clip_grad_norm_(params, recipe.clip_grad)
            optimizer.step()
            state["global_step"] += 1
            scheduler.step_update(num_updates=state["global_step"])
            if ema is not None:
                ema.update(model, step=state["global_step"])
            state["loss_sum"] += loss_v
            state["loss_count"] += 1
            n_img += x.shape[0] * d.world
            lr = optimizer.param_groups[-1]["lr"]
            if bar is not None:
                ips = n_img / max(time.perf_counter() - t_epoch, 1e-9)
                bar.set_postfix(loss=f"{loss_v:.4f}", lr=f"{lr:.2e}", img_s=f"{ips:.0f}", refresh=False)
                bar.update(1)
            if state["global_step"] % recipe.log_every == 0:
                log.write({"event": "step", "epoch": epoch + 1, "step": step + 1, "global_step": state["global_step"],
                           "loss": loss_v, "lr": lr, "time": time.time()})
            if on_step is not None:
                on_step({"epoch": epoch, "step": step, "global_step": state["global_step"], "loss": loss_v, "lr": lr})
            if recipe.ckpt_every and state["global_step"] % recipe.ckpt_every == 0 and step + 1 < spe:
                save(step + 1, epoch)
        if bar is not None:
            bar.close()
        dt = time.perf_counter() - t_epoch
        images_seen += n_img
        train_time += dt
        loss_sum, loss_count = _all_sum([state["loss_sum"], float(state["loss_count"])], d)
        record: dict[str, Any] = {"event": "epoch", "epoch": epoch + 1, "global_step": state["global_step"],
                                  "train_loss": loss_sum / max(loss_count, 1.0), "lr": optimizer.param_groups[-1]["lr"],
                                  "img_per_s": n_img / max(dt, 1e-9), "epoch_seconds": dt}
        if (epoch + 1) % recipe.eval_every == 0 or epoch + 1 == recipe.epochs:
            eval_model = ema.module if ema is not None else model
            val_loader = build_loader(val_ds, batch_size=max(local_bs, 64), train=False, rank=d.rank, world=d.world,
                                      workers=recipe.workers, pin_memory=pin)
            last_eval = evaluate(eval_model, val_loader, d.device, amp=amp, channels_last=channels_last, d=d)
            record.update(val_loss=last_eval["loss"], val_top1=last_eval["top1"], val_top5=last_eval["top5"])
            if show:
                _log.info("epoch %d: val top1 %.2f%%", epoch + 1, last_eval["top1"])
        state["history"].append(record)
        log.write(record)
        save(0, epoch + 1)

    history = state["history"]
    evals = [h for h in history if "val_top1" in h]
    best = max(evals, key=lambda h: h["val_top1"]) if evals else {"val_top1": math.nan, "epoch": 0}
    final = evals[-1] if evals else {"val_top1": math.nan, "val_top5": math.nan}
    plot_path = model_dir = None
    export_model = ema.module if ema is not None else model
    if fsdp.is_sharded(model):
        plain = fsdp.full_model(model)  # every rank gathers; rank 0 gets the unsharded model (export, result)
        export_model = plain if plain is not None else model
    if d.main:
        plot_path = plot_history(history, out / "curves.png", title=str(recipe.model))
        if recipe.save_model:
            metrics = {recipe.data if recipe.data == "digits" else Path(recipe.data).name:
                       {"top1": round(final["val_top1"], 2), "top5": round(final["val_top5"], 2)}}
            model_dir = _export(export_model, out / "model", recipe, metrics, plot_path, classes, data_cfg)
    _barrier(d)
    seconds = base_seconds + time.perf_counter() - t_start
    ips = images_seen / max(train_time, 1e-9)
    summary = (f"{recipe.model}: {recipe.epochs} epochs in {seconds:.1f}s ({ips:.0f} img/s), "
               f"val top-1 {final['val_top1']:.2f}% (best {best['val_top1']:.2f}% @ epoch {best['epoch']}), "
               f"output {out}")
    return TrainResult(output=out, model_dir=model_dir, top1=float(final["val_top1"]),
                       top5=float(final.get("val_top5", math.nan)), best_top1=float(best["val_top1"]),
                       best_epoch=int(best["epoch"]), epochs=recipe.epochs, seconds=seconds, img_per_s=ips,
                       summary=summary, history=history, model=export_model)


def evaluate_recipe(recipe: Recipe) -> dict[str, Any]:
    """Evaluate ``recipe.model`` (name, hub reference, local folder) on the validation split of ``recipe.data``."""
    from .finetune import check_spec, create, resolve_model_ref, set_resolution, spec_kwargs

    check_spec(recipe)  # before the data is read
    d = _setup(recipe)
    try:
        _, val_src = open_sources(recipe.data, recipe.val_data, val_split=recipe.val_split,
                                  digits_size=recipe.img_size or 32, verify=recipe.verify_images)
        ref = resolve_model_ref(recipe.model or "")
        model = create(ref, pretrained=True, in_chans=recipe.in_chans, **spec_kwargs(recipe, ref))
        n_cls = getattr(model, "num_classes", None)
        if n_cls != len(val_src.classes):
            raise RecipeError(f"model {recipe.model!r} has {n_cls} classes but the data {recipe.data!r} has "
                              f"{len(val_src.classes)}")
        set_resolution(model, recipe.img_size)
        model.to(d.device)
        cfg = resolve_data_config(model, recipe)
        ds = ImageDataset(val_src, build_transform(cfg, recipe, train=False), in_chans=recipe.in_chans)
        loader = build_loader(ds, batch_size=recipe.batch_size, train=False, rank=d.rank, world=d.world,
                              workers=recipe.workers, pin_memory=d.device.type == "cuda")
        t0 = time.perf_counter()
        res = evaluate(model, loader, d.device, amp=_amp(recipe, d.device), d=d)
        res["seconds"] = time.perf_counter() - t0
        res["data"] = val_src.name
        return res
    finally:
        if d.owns_group and dist.is_initialized():
            dist.destroy_process_group()
