"""Routed (bi-level routing) token attention: :func:`routed_attention` plus region layout helpers."""

from mixerzoo.kernels.routed.api import region_merge, region_partition, routed_attention

__all__ = ["region_merge", "region_partition", "routed_attention"]
