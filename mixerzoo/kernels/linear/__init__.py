"""Non-causal linear attention (plain and FLatten's focused form): :func:`linear_attention`."""

from mixerzoo.kernels.linear.api import linear_attention

__all__ = ["linear_attention"]
