"""Model cards (README.md) for mixerzoo hub folders.

The YAML metadata keeps ``library_name: timm`` so the Hub shows timm's snippet, tags ``mixerzoo``, and lists licence,
datasets and metric names. The body gives size (params, GMACs at the input size), a usage snippet that imports
mixerzoo first (timm only knows ``mz_*`` architectures once mixerzoo is imported), the recipe, results and plots.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import yaml
from torch import nn

__all__ = ["REPO_ID_PLACEHOLDER", "count_gmacs", "count_params", "render_model_card"]

_logger = logging.getLogger(__name__)

# Written into the usage snippet when the repo id is not known yet; push_to_hub substitutes the real id.
REPO_ID_PLACEHOLDER = "{{REPO_ID}}"


def count_params(model: nn.Module) -> int:
    """Number of parameters (shared tensors counted once)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def count_gmacs(model: nn.Module, input_size: Sequence[int]) -> float | None:
    """GMACs of one forward of a single ``input_size`` image (``torch.utils.flop_counter``; MACs = FLOPs / 2).

    Returns ``None`` (and logs why) if the forward cannot be counted.
    """
    from torch.utils.flop_counter import FlopCounterMode

    try:
        param = next(model.parameters())
        device, dtype = param.device, param.dtype
    except StopIteration:
        device, dtype = torch.device("cpu"), torch.float32
    was_training = model.training
    try:
        model.eval()
        x = torch.zeros(1, *[int(s) for s in input_size], device=device, dtype=dtype)
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model(x)
        return counter.get_total_flops() / 2 / 1e9
    except Exception as e:  # a card without GMACs beats no card
        _logger.warning("could not count GMACs of %s at input %s: %r", type(model).__name__, tuple(input_size), e)
        return None
    finally:
        model.train(was_training)


def _as_mapping(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, Mapping):
        return dict(value)
    if hasattr(value, "to_dict"):
        return dict(value.to_dict())
    if hasattr(value, "__dict__"):  # argparse.Namespace and similar
        return {k: v for k, v in vars(value).items() if not k.startswith("_")}
    raise TypeError(f"{what}={value!r} must be a mapping, a dataclass or a namespace")


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def render_model_card(
    config: Mapping[str, Any],
    *,
    params: int,
    gmacs: float | None,
    model_card: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    recipe: Any = None,
    plots: Sequence[tuple[str, str]] = (),
) -> str:
    """README.md text for a hub folder.

    ``model_card`` keys (all optional): ``repo_id`` (for the usage snippet), ``name``, ``description``, ``license``
    (default ``apache-2.0``), ``datasets`` (list; defaults to the recipe's ``dataset``), ``tags`` (extra tags),
    ``details`` (mapping shown as a bullet list), ``citation`` (bibtex string or list). ``metrics`` maps a metric
    name to a value (a nested mapping is shown as a table per dataset). ``plots`` are ``(caption, relative path)``.
    """
    card = dict(model_card or {})
    recipe_d = _jsonable(_as_mapping(recipe, "recipe")) if recipe is not None else {}
    metrics_d = _jsonable(dict(metrics)) if metrics else {}
    arch = config["architecture"]
    pcfg = config.get("pretrained_cfg", {})
    name = str(card.get("name") or arch)
    repo_id = str(card.get("repo_id") or REPO_ID_PLACEHOLDER)

    datasets = card.get("datasets")
    if datasets is None:
        ds = recipe_d.get("dataset") or recipe_d.get("data") or pcfg.get("dataset")
        datasets = [ds] if isinstance(ds, str) and ds else []
    elif isinstance(datasets, str):
        datasets = [datasets]
    tags = ["image-classification", "timm", "mixerzoo"]
    for t in card.get("tags", ()) or ():
        if t not in tags:
            tags.append(str(t))
    meta: dict[str, Any] = {
        "tags": tags,
        "library_name": "timm",
        "pipeline_tag": "image-classification",
        "license": str(card.get("license") or pcfg.get("license") or "apache-2.0"),
    }
    if datasets:
        meta["datasets"] = [str(d) for d in datasets]
    metric_names = sorted(_flat_metric_names(metrics_d))
    if metric_names:
        meta["metrics"] = metric_names
    front = yaml.safe_dump(meta, sort_keys=False, default_flow_style=False).strip()

    input_size = tuple(pcfg.get("input_size", (3, 224, 224)))
    lines = ["---", front, "---", f"# Model card for {name}", ""]
    if card.get("description"):
        lines += [str(card["description"]).strip(), ""]
    lines += [
        "## Model details",
        "",
        f"- **Architecture:** `{arch}`" + (f" (mixerzoo name `{arch[3:]}`)" if arch.startswith("mz_") else ""),
        f"- **Params (M):** {params / 1e6:.2f}",
        f"- **GMACs:** {f'{gmacs:.3f}' if gmacs is not None else 'n/a'} (at input {input_size}, MACs = FLOPs / 2)",
        f"- **Input size:** {input_size}",
        f"- **Classes:** {config.get('num_classes')}",
    ]
    requires = (config.get("requires") or {}).get("mixers") or {}
    if requires:
        lines.append("- **Mixers:** " + ", ".join(f"`{k}` ({v})" for k, v in requires.items()))
    for k, v in (card.get("details") or {}).items():
        lines.append(f"- **{k}:** {v}")
    lines += [
        "",
        "## Usage",
        "",
        "mixerzoo registers its architectures in timm when imported, so import it before loading:",
        "",
        "```python",
        "import mixerzoo  # registers mz_* architectures (and mixer plugins) in timm",
        "import timm",
        "import torch",
        "",
        f'model = mixerzoo.create_model("hf-hub:{repo_id}", pretrained=True).eval()',
        "# or: timm.create_model(...) with the same name, after `import mixerzoo`",
        "cfg = timm.data.resolve_data_config({}, model=model)",
        "transform = timm.data.create_transform(**cfg)",
        "with torch.no_grad():",
        "    logits = model(transform(img).unsqueeze(0))  # img: a PIL image",
        "```",
        "",
    ]
    if metrics_d:
        lines += ["## Results", "", *_metrics_table(metrics_d), ""]
    if recipe_d:
        lines += [
            "## Training recipe",
            "",
            "```yaml",
            yaml.safe_dump(recipe_d, sort_keys=True, default_flow_style=False).strip(),
            "```",
            "",
        ]
    if plots:
        lines += ["## Plots", ""]
        for caption, rel in plots:
            lines += [f"![{caption}]({rel})", ""]
    citations = card.get("citation")
    if citations:
        lines += ["## Citation", ""]
        for c in [citations] if isinstance(citations, str) else citations:
            lines += ["```bibtex", str(c).strip(), "```", ""]
    return "\n".join(lines).rstrip() + "\n"


def _flat_metric_names(metrics: Mapping[str, Any]) -> set[str]:
    names: set[str] = set()
    for k, v in metrics.items():
        if isinstance(v, Mapping):
            names |= {str(x) for x in v}
        else:
            names.add(str(k))
    return names


def _metrics_table(metrics: Mapping[str, Any]) -> list[str]:
    nested = {k: v for k, v in metrics.items() if isinstance(v, Mapping)}
    flat = {k: v for k, v in metrics.items() if not isinstance(v, Mapping)}
    out = []
    if flat:
        out += ["| metric | value |", "|---|---|", *[f"| {k} | {_fmt(v)} |" for k, v in flat.items()]]
    for ds, vals in nested.items():
        if out:
            out.append("")
        out += [f"**{ds}**", "", "| metric | value |", "|---|---|", *[f"| {k} | {_fmt(v)} |" for k, v in vals.items()]]
    return out
