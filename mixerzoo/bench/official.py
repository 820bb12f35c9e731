"""Official figures per mixerzoo model: parameters, GMACs, ImageNet-1k top-1 and where they come from.

Every registered (non-test) model needs an entry here: ``tests/bench/test_official.py`` checks that the
counted parameters and GMACs match within 1% and fails for a model without an entry, unless the entry
sets ``no_official_figure`` to a reason.

Units: params in millions; GMACs are multiply-accumulates (what the papers call "FLOPs") at ``img_size``²,
batch 1. The GMACs compared are the most precise citable figure: the figures measured with
fvcore on the official model code (2 decimals) where the README rounds to one
decimal; the README figure is kept in ``gmacs_readme`` for display. fvcore counts norm layers (~0.2–0.6%),
``torch.utils.flop_counter`` does not: a systematic difference well inside the 1% tolerance.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["OFFICIAL", "Official", "official"]


@dataclass(frozen=True)
class Official:
    """Published figures of one model (``None`` = not published)."""

    params_m: float | None
    gmacs: float | None
    top1: float | None
    source: str  # where the figures come from (URL + what was read)
    img_size: int = 224
    gmacs_readme: float | None = None  # the README's rounded figure, if it differs from ``gmacs``
    note: str = ""
    no_official_figure: str | None = None  # reason there is no params/GMACs figure to check

    def __post_init__(self) -> None:
        if self.no_official_figure is None and (self.params_m is None or self.gmacs is None):
            raise ValueError(
                f"an Official entry needs params_m and gmacs, or no_official_figure=<reason>; got "
                f"params_m={self.params_m}, gmacs={self.gmacs} (source={self.source!r})"
            )


_POOLFORMER = "https://github.com/sail-sg/poolformer (README; params/GMACs measured with fvcore)"
_BIFORMER = "https://github.com/rayleizhu/BiFormer (README; params/GMACs measured with fvcore)"
_LITV2 = "https://github.com/ziplab/LITv2 (README; GMACs from the repo's own counter, which counts the deformable conv)"
_FLATTEN = "https://github.com/LeapLabTHU/FLatten-Transformer (README top-1; params/GMACs measured with fvcore, §0)"
_FLATTEN_PVT2 = (
    "https://github.com/LeapLabTHU/FLatten-Transformer (README top-1; params/GMACs: torch.utils.flop_counter on the "
    "official models/flatten_pvt_v2.py at abdb115f, la_sr_ratios='1111', 224², counted for mixerzoo)"
)
_FLATTEN_CSWIN = (
    "https://github.com/LeapLabTHU/FLatten-Transformer; params/GMACs: torch.utils.flop_counter on the official "
    "models/flatten_cswin.py at abdb115f (attn_type='LLSS', cfgs/flatten_cswin_*.yaml), counted for mixerzoo"
)
_PVT2_TIMM = (
    "https://github.com/whai362/PVT (PVTv2); params/GMACs: torch.utils.flop_counter on timm 1.0.31 pvt_v2_b* at 224² "
    "(the port whose weights mixerzoo loads; the README's 0.6/2.1/4.0/6.9/10.1/11.8 GFLOPs are rounded)"
)
_NAT = "https://github.com/SHI-Labs/Neighborhood-Attention-Transformer (README; NA = 2·H·W·K²·C MACs, §0)"
_NAT_README = "https://github.com/SHI-Labs/Neighborhood-Attention-Transformer (classification/DiNAT.md, d334f5b)"
_CBAM = "https://github.com/Jongchan/attention-module (repo checkpoint top-1; params/GMACs measured with fvcore, §0)"
_TRIPLET = "https://github.com/LandskapeAI/triplet-attention (README)"
_TIMM_BENCH = (
    "timm results/benchmark-infer-amp-nchw-pt240-cu124-rtx4090.csv (param_count, infer_gmacs) and "
    "results/results-imagenet.csv (top1 of the weights mixerzoo loads)"
)
_SWIN = "https://github.com/microsoft/Swin-Transformer (README top-1); params/GMACs: " + _TIMM_BENCH

OFFICIAL: dict[str, Official] = {
    # ---------------------------------------------------------------------------------- PoolFormer
    "poolformer_s12": Official(11.92, 1.82, 77.2, _POOLFORMER, gmacs_readme=1.8),
    "poolformer_s24": Official(21.39, 3.41, 80.3, _POOLFORMER, gmacs_readme=3.4),
    "poolformer_s36": Official(30.86, 5.00, 81.4, _POOLFORMER, gmacs_readme=5.0),
    "poolformer_m36": Official(56.17, 8.80, 82.1, _POOLFORMER, gmacs_readme=8.8),
    "poolformer_m48": Official(73.47, 11.59, 82.5, _POOLFORMER, gmacs_readme=11.6),
    # ------------------------------------------------------------------------------------ BiFormer
    "biformer_tiny": Official(13.14, 2.23, 81.4, _BIFORMER, gmacs_readme=2.2),
    "biformer_small": Official(25.54, 4.49, 83.8, _BIFORMER, gmacs_readme=4.5),
    "biformer_base": Official(56.81, 9.80, 84.3, _BIFORMER, gmacs_readme=9.8),
    "biformer_stl": Official(28.37, 4.59, 82.7, _BIFORMER, gmacs_readme=4.6, note="Swin-T layout"),
    "biformer_stl_nchw": Official(
        28.37, 4.59, 82.7, _BIFORMER, gmacs_readme=4.6,
        note="refactored nchw BRA; README 28.4 M / 4.6 G; same layers as biformer_stl (fvcore 4.59 there)",
    ),
    # -------------------------------------------------------------------------------------- LITv2
    "litv2_small": Official(27.84, 3.73, 82.0, _LITV2, gmacs_readme=3.7),
    "litv2_medium": Official(48.83, 7.48, 83.3, _LITV2, gmacs_readme=7.5),
    "litv2_base": Official(86.52, 13.19, 83.6, _LITV2, gmacs_readme=13.2),
    "litv2_base_384": Official(86.52, 39.71, 84.7, _LITV2, img_size=384, gmacs_readme=39.7),
    # ------------------------------------------------------------------------------------ FLatten
    "flatten_pvt_v2_b0": Official(
        3.59, 0.580, 71.1, _FLATTEN_PVT2,
        note="fvcore on the official code gives 0.59 GMACs: its LayerNorm charge is 1.7% of this small model "
        "(56x56x32 stage-0 maps), beyond the 1% tolerance; 0.580 is torch.utils.flop_counter on the official code",
    ),
    "flatten_pvt_v2_b1": Official(12.93, 2.23, None, _FLATTEN, note="no released weights; top-1 not published"),
    **{
        f"flatten_pvt_v2_b{i}": Official(p, g, None, _FLATTEN_PVT2, note="no released weights; top-1 not published")
        for i, p, g in ((2, 22.55, 4.251), (3, 38.27, 7.284), (4, 51.84, 10.677), (5, 67.06, 12.436))
    },
    # plain PVTv2 hosts (timm's weights): counted on timm's pvt_v2 (a port of whai362/PVT), which mixerzoo loads
    **{
        f"pvt_v2_b{i}": Official(p, g, None, _PVT2_TIMM)
        for i, p, g in ((0, 3.67, 0.566), (1, 14.01, 2.108), (2, 25.36, 4.027), (3, 45.24, 6.897),
                        (4, 62.56, 10.101), (5, 81.96, 11.717))
    },  # fmt: skip
    "flatten_pvt_tiny": Official(12.15, 2.05, 77.8, _FLATTEN),
    "flatten_pvt_small": Official(
        None, None, None, _FLATTEN,
        no_official_figure="FLatten's README publishes weights and figures for PVT-T only (checked at abdb115f)",
    ),
    "flatten_pvt_medium": Official(
        None, None, None, _FLATTEN, no_official_figure="FLatten's README publishes weights and figures for PVT-T only"
    ),
    "flatten_pvt_large": Official(
        None, None, None, _FLATTEN, no_official_figure="FLatten's README publishes weights and figures for PVT-T only"
    ),
    "flatten_swin_tiny": Official(29.19, 4.50, 82.1, _FLATTEN),
    "flatten_swin_small": Official(50.51, 8.76, 83.5, _FLATTEN),
    "flatten_swin_base": Official(88.97, 15.46, 83.8, _FLATTEN),
    "flatten_swin_base_384": Official(
        None, None, 85.0, _FLATTEN, img_size=384,
        no_official_figure="FLatten's README gives only the @384 top-1 (85.0); §0 has no params/GMACs at 384",
    ),
    "flatten_cswin_tiny": Official(21.20, 4.34, 83.1, _FLATTEN),
    "flatten_cswin_small": Official(35.45, 6.783, None, _FLATTEN_CSWIN, note="no released weights; top-1 not published"),
    "flatten_cswin_base": Official(74.87, 14.913, None, _FLATTEN_CSWIN, note="no released weights; top-1 not published"),
    "flatten_cswin_base_384": Official(
        78.37, 46.305, None, _FLATTEN_CSWIN, img_size=384, note="no released weights; top-1 not published"
    ),
    # Swin baselines (the FLatten family's plain-window variants; timm's port of the official model)
    "swin_tiny_patch4_window7_224": Official(28.29, 4.51, 81.2, _SWIN),
    "swin_small_patch4_window7_224": Official(49.61, 8.77, 83.2, _SWIN),
    "swin_base_patch4_window7_224": Official(87.77, 15.47, 83.5, _SWIN),
    # ---------------------------------------------------------------------------------- NAT / DiNAT
    "nat_mini": Official(19.98, 2.70, 81.8, _NAT, gmacs_readme=2.7),
    "nat_tiny": Official(27.90, 4.30, 83.2, _NAT, gmacs_readme=4.3),
    "nat_small": Official(50.74, 7.77, 83.7, _NAT, gmacs_readme=7.8),
    "nat_base": Official(89.77, 13.68, 84.3, _NAT, gmacs_readme=13.7),
    "dinat_mini": Official(19.98, 2.70, 81.8, _NAT, gmacs_readme=2.7),
    "dinat_tiny": Official(27.90, 4.30, 82.7, _NAT, gmacs_readme=4.3),
    "dinat_small": Official(50.72, 7.77, 83.8, _NAT, gmacs_readme=7.8),
    "dinat_base": Official(89.77, 13.68, 84.4, _NAT, gmacs_readme=13.7),
    "dinat_large": Official(200.94, 30.46, 86.6, _NAT, gmacs_readme=30.6, note="ImageNet-22k pre-trained"),
    "dinat_large_384": Official(
        200.0, 89.7, 87.4, _NAT_README, img_size=384, note="ImageNet-22k pre-trained; README params rounded (200M)"
    ),
    "dinat_large_384_11x11": Official(
        200.0, 92.4, 87.5, _NAT_README, img_size=384, note="11x11 kernel; README params rounded (200M)"
    ),
    "dinat_s_large": Official(197.0, 34.5, 86.5, _NAT_README, note="ImageNet-22k pre-trained; README params rounded"),
    "dinat_s_large_384": Official(197.0, 101.5, 87.4, _NAT_README, img_size=384, note="ImageNet-22k pre-trained"),
    "dinat_s_tiny": Official(28.29, 4.49, 81.8, _NAT, gmacs_readme=4.5),
    "dinat_s_small": Official(49.61, 8.74, 83.5, _NAT, gmacs_readme=8.7),
    "dinat_s_base": Official(87.77, 15.43, 83.8, _NAT, gmacs_readme=15.4),
    # Isotropic NAT / DiNAT / ViT-rpb: README (classification/DiNAT.md) GMACs and top-1; params counted by
    # instantiating the official isotropic.py (README rounds them to 22M / 86M)
    "nat_isotropic_small": Official(22.00, 4.3, 80.0, _NAT_README, note="isotropic, 7x7 NA"),
    "dinat_isotropic_small": Official(22.00, 4.3, 80.8, _NAT_README, note="isotropic, dilation 1/2"),
    "vitrpb_small": Official(22.08, 4.6, 81.2, _NAT_README, note="ViT + 2-D relative position bias"),
    "nat_isotropic_base": Official(86.47, 16.9, 81.6, _NAT_README, note="isotropic, 7x7 NA"),
    "dinat_isotropic_base": Official(86.47, 16.9, 82.1, _NAT_README, note="isotropic, dilation 1/2"),
    "vitrpb_base": Official(86.63, 17.5, 82.5, _NAT_README, note="ViT + 2-D relative position bias"),
    # ------------------------------------------------------------------------- CBAM / triplet ResNets
    "resnet50_cbam": Official(28.09, 4.12, 77.62, _CBAM, note="paper: 77.34 top-1, 3.864 GFLOPs"),
    **{
        f"resnet{d}_cbam": Official(
            None, None, None, _CBAM,
            no_official_figure="the official repo publishes ResNet-50+CBAM only; the paper's GFLOPs use another "
            "counting (3.864 for ResNet-50+CBAM where fvcore on the official code gives 4.12)",
        )  # fmt: skip
        for d in (18, 34, 101)
    },
    "resnet18_triplet": Official(11.69, 1.825, 71.09, _TRIPLET),
    "resnet50_triplet": Official(25.56, 4.169, 77.48, _TRIPLET),
    "mobilenetv2_triplet": Official(3.51, 0.327, 71.99, _TRIPLET, note="k=7; README k=3: 0.322 GMACs, 72.62"),
    # ----------------------------------------------------------------------------------------- ViT
    # fvcore on timm's code gives 1.08 / 4.25 / 16.87, which leave out the attention matmuls (fvcore
    # has no handler for scaled_dot_product_attention); timm's own table includes them, as do DeiT's
    # 1.3 / 4.6 / 17.6 GFLOPs (arXiv:2012.12877, Table 1).
    "vit_tiny_patch16_224": Official(5.72, 1.26, 75.452, _TIMM_BENCH, note="augreg_in21k_ft_in1k weights"),
    "vit_small_patch16_224": Official(22.05, 4.61, 81.402, _TIMM_BENCH, note="augreg_in21k_ft_in1k weights"),
    "vit_base_patch16_224": Official(86.57, 17.58, 85.108, _TIMM_BENCH, note="augreg2_in21k_ft_in1k weights"),
}


def official(name: str) -> Official | None:
    """The entry for ``name`` (mixerzoo name, ``mz_`` prefix and ``.tag`` allowed), or None."""
    arch = name.partition(".")[0]
    if arch.startswith("mz_"):
        arch = arch[3:]
    return OFFICIAL.get(arch)
