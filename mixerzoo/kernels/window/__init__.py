"""Non-overlapping (optionally Swin-shifted) window attention (HiLo Hi-Fi, Swin W-MSA / SW-MSA)."""

from mixerzoo.kernels.window.api import window_attention_2d, window_attention_2d_qkv

__all__ = ["window_attention_2d", "window_attention_2d_qkv"]
