"""Building blocks of the ConvNeXt U-Net: time embedding, ConvNeXt block, attention, resampling."""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


class SinusoidalEmbedding(nn.Module):
    """Transformer position encoding of the timestep t (Vaswani et al. 2017; DDPM Appendix B)."""

    def __init__(self, dim: int):
        super().__init__()
        if dim % 2:
            raise ValueError(f"time embedding dim must be even, got {dim}")
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:  # (B,) -> (B, dim)
        half = self.dim // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t.device, dtype=torch.float32) / (half - 1))
        args = t.float()[:, None] * freqs[None, :]  # (B, half)
        return torch.cat([args.sin(), args.cos()], dim=-1)


class ConvNextBlock(nn.Module):
    """ConvNeXt block (Liu et al. 2022) with an additive time embedding, as in the original project's U-Net:
    depthwise 7x7 conv, + MLP(t), GroupNorm, 3x3 conv to mult*dim_out, GELU, GroupNorm, 3x3 conv, residual."""

    def __init__(self, dim: int, dim_out: int, time_dim: Optional[int] = None, mult: int = 2, norm: bool = True):
        super().__init__()
        self.time_mlp = nn.Sequential(nn.GELU(), nn.Linear(time_dim, dim)) if time_dim else None
        self.dw_conv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.net = nn.Sequential(
            nn.GroupNorm(1, dim) if norm else nn.Identity(),
            nn.Conv2d(dim, dim_out * mult, 3, padding=1),
            nn.GELU(),
            nn.GroupNorm(1, dim_out * mult),
            nn.Conv2d(dim_out * mult, dim_out, 3, padding=1),
        )
        self.res_conv = nn.Conv2d(dim, dim_out, 1) if dim != dim_out else nn.Identity()

    def forward(self, x: torch.Tensor, t_emb: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = self.dw_conv(x)  # (B, dim, H, W)
        if self.time_mlp is not None and t_emb is not None:
            h = h + self.time_mlp(t_emb)[:, :, None, None]
        return self.net(h) + self.res_conv(x)  # (B, dim_out, H, W)


class LinearAttention(nn.Module):
    """Linear attention (Shen et al. 2018; Katharopoulos et al. 2020): O(HW) memory, softmax over
    features of q and over positions of k; used at every U-Net level."""

    def __init__(self, dim: int, heads: int = 4, dim_head: int = 32):
        super().__init__()
        self.heads, self.scale = heads, dim_head**-0.5
        self.norm = nn.GroupNorm(1, dim)
        self.to_qkv = nn.Conv2d(dim, heads * dim_head * 3, 1, bias=False)
        self.to_out = nn.Sequential(nn.Conv2d(heads * dim_head, dim, 1), nn.GroupNorm(1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # residual: x + attn(norm(x))
        B, _, H, W = x.shape
        q, k, v = self.to_qkv(self.norm(x)).reshape(B, 3, self.heads, -1, H * W).unbind(1)  # each (B, h, d, N)
        q = q.softmax(dim=-2) * self.scale
        k = k.softmax(dim=-1)
        context = torch.einsum("bhdn,bhen->bhde", k, v)  # (B, h, d, d)
        out = torch.einsum("bhde,bhdn->bhen", context, q)  # (B, h, d, N)
        return x + self.to_out(out.reshape(B, -1, H, W))


class Attention(nn.Module):
    """Full softmax self-attention over positions (Vaswani et al. 2017), used at the lowest resolution."""

    def __init__(self, dim: int, heads: int = 4, dim_head: int = 32):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(1, dim)
        self.to_qkv = nn.Conv2d(dim, heads * dim_head * 3, 1, bias=False)
        self.to_out = nn.Conv2d(heads * dim_head, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # residual: x + attn(norm(x))
        B, _, H, W = x.shape
        qkv = self.to_qkv(self.norm(x)).reshape(B, 3, self.heads, -1, H * W).transpose(-1, -2)  # (B, 3, h, N, d)
        q, k, v = (a.contiguous() for a in qkv.unbind(1))  # contiguous: SDPA's flash and memory-efficient kernels
        out = F.scaled_dot_product_attention(q, k, v)  # (B, h, N, d)
        return x + self.to_out(out.transpose(-1, -2).reshape(B, -1, H, W))


def downsample(dim: int) -> nn.Module:
    """Halve H and W: 4x4 conv, stride 2."""
    return nn.Conv2d(dim, dim, 4, stride=2, padding=1)


def upsample(dim: int) -> nn.Module:
    """Double H and W: 4x4 transposed conv, stride 2."""
    return nn.ConvTranspose2d(dim, dim, 4, stride=2, padding=1)
