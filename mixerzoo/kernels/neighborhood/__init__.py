"""2-D neighborhood attention (NAT / DiNAT, NATTEN semantics)."""

from mixerzoo.kernels.neighborhood.api import neighborhood_attention_2d

__all__ = ["neighborhood_attention_2d"]
