"""The residual U-Net of DDPM and improved DDPM / ADM (Ho et al. 2020; Nichol & Dhariwal 2021;
Dhariwal & Nichol 2021), with the same call as the ConvNeXt U-Net: net(x_t, t, cond, y).

    init 3x3 conv -> [ResBlock x num_res_blocks (+ attention), Down] per level
                  -> mid: ResBlock, Attention, ResBlock
                  -> [ResBlock x (num_res_blocks + 1), each on concat(x, skip) (+ attention), Up] per level
                  -> GroupNorm, SiLU, 3x3 conv (zero-initialised)

ResBlock: GroupNorm, SiLU, 3x3 conv; the time (and class) embedding as a scale and shift of the
second GroupNorm (AdaGN, ADM's "use_scale_shift_norm"); SiLU, 3x3 conv (zero-initialised); skip.
With attention=True, full self-attention sits at the lowest-resolution level and in the middle.

Layouts (`layout`): "diffusers" (the default since dff 0.3) is diffusers' UNet2DModel layer for layer (one
GroupNorm group count G = gcd(32, dim) everywhere; attention with GroupNorm(G), biased q/k/v/out projections of
the block's width, heads of 32 channels, or of `dim` when 32 does not divide it), so `dff export --format
diffusers` maps it 1:1 (models/to_diffusers.py). "v1", the layout of earlier checkpoints: gcd(32, c) groups per
layer, attention with GroupNorm(1) and a bias-free qkv of 4 heads x 32 channels (nn/layers.py's Attention).
"""
from __future__ import annotations

import math
from functools import partial
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .base import UNetBase
from .layers import Attention, SinusoidalEmbedding


LAYOUTS: tuple[str, ...] = ("diffusers", "v1")


def group_counts(layout: str, dim: int) -> Callable[[int], int]:
    """The GroupNorm group count of a layer of width c: G = gcd(32, dim) for every layer (diffusers), or gcd(32, c),
    32 groups where the width allows it (v1)."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown U-Net layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
    G = math.gcd(32, dim)
    return (lambda c: G) if layout == "diffusers" else (lambda c: math.gcd(32, c))


class SelfAttention(nn.Module):
    """Softmax self-attention over positions (Vaswani et al. 2017) as diffusers' Attention block: x + W_o
    attn(W_q h, W_k h, W_v h) with h = GroupNorm(x) flattened to (B, HW, c), heads of head_dim channels."""

    def __init__(self, c: int, groups: int, head_dim: int):
        super().__init__()
        self.heads = c // head_dim
        self.group_norm = nn.GroupNorm(groups, c)
        self.to_q, self.to_k, self.to_v, self.to_out = (nn.Linear(c, c) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        h = self.group_norm(x).flatten(2).transpose(1, 2)  # (B, N, c), N = H W
        q, k, v = (f(h).view(B, H * W, self.heads, -1).transpose(1, 2) for f in (self.to_q, self.to_k, self.to_v))
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, d)
        out = self.to_out(out.transpose(1, 2).reshape(B, H * W, C))  # (B, N, c)
        return x + out.transpose(1, 2).reshape(B, C, H, W)


def zero(module: nn.Module) -> nn.Module:
    """Zero-initialised weights: each residual branch starts as the identity (ADM)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """h = conv(SiLU(GN(x))); h = GN(h) * (1 + s) + b with (s, b) = Linear(SiLU(emb)); out = x' + conv(SiLU(h))."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: Callable[[int], int]):
        super().__init__()
        self.in_layers = nn.Sequential(nn.GroupNorm(groups(c_in), c_in), nn.SiLU(),
                                       nn.Conv2d(c_in, c_out, 3, padding=1))
        self.emb = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, 2 * c_out))
        self.out_norm = nn.GroupNorm(groups(c_out), c_out)
        self.out_layers = nn.Sequential(nn.SiLU(), zero(nn.Conv2d(c_out, c_out, 3, padding=1)))
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)  # (B, c_out, H, W)
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)  # (B, c_out, 1, 1) each
        h = self.out_norm(h) * (1 + scale) + shift
        return self.skip(x) + self.out_layers(h)


class ADMUNet(UNetBase):
    """Residual U-Net (DDPM / ADM); the ConvNeXt U-Net's interface, checks and embeddings (UNetBase)."""

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: Optional[int] = None,
        *,
        cond_channels: int = 0,
        dim: int = 64,  # base width
        dim_mults: Sequence[int] = (1, 2, 4, 8),  # width multiplier per level; len - 1 downsamplings
        attention: bool = True,  # self-attention at the lowest-resolution level and in the middle
        num_classes: int = 0,
        num_res_blocks: int = 2,  # ResBlocks per level on the way down (one more on the way up)
        layout: str = "diffusers",  # diffusers (UNet2DModel's layers) | v1 (earlier checkpoints): see above
    ):
        super().__init__(in_channels=in_channels, out_channels=out_channels, cond_channels=cond_channels,
                         dim_mults=dim_mults, num_classes=num_classes)
        L, emb_dim = len(self.dim_mults), 4 * dim
        self.layout, groups = layout, group_counts(layout, dim)
        self.head_dim = 32 if dim % 32 == 0 else dim  # every level's width is a multiple of dim
        res = partial(ResBlock, emb_dim=emb_dim, groups=groups)

        def attention_block(c: int) -> nn.Module:
            return SelfAttention(c, groups(c), self.head_dim) if layout == "diffusers" else Attention(c)

        attn = lambda i, c: attention_block(c) if attention and i == L - 1 else nn.Identity()  # noqa: E731

        self.time_mlp = nn.Sequential(SinusoidalEmbedding(dim), nn.Linear(dim, emb_dim), nn.SiLU(),
                                      nn.Linear(emb_dim, emb_dim))
        self.class_emb = nn.Embedding(num_classes + 1, emb_dim) if num_classes else None
        self.init_conv = nn.Conv2d(in_channels + cond_channels, dim, 3, padding=1)

        self.downs, skip_chs, c = nn.ModuleList(), [dim], dim
        for i, m in enumerate(self.dim_mults):
            for _ in range(num_res_blocks):
                self.downs.append(nn.ModuleList([res(c, dim * m), attn(i, dim * m)]))
                c = dim * m
                skip_chs.append(c)
            if i < L - 1:
                self.downs.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
                skip_chs.append(c)

        self.mid1, self.mid2 = res(c, c), res(c, c)
        self.mid_attn = attention_block(c) if attention else nn.Identity()

        self.ups = nn.ModuleList()
        for i, m in reversed(list(enumerate(self.dim_mults))):
            for _ in range(num_res_blocks + 1):
                self.ups.append(nn.ModuleList([res(c + skip_chs.pop(), dim * m), attn(i, dim * m)]))
                c = dim * m
            if i > 0:
                self.ups.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                              nn.Conv2d(c, c, 3, padding=1)))

        self.final = nn.Sequential(nn.GroupNorm(groups(c), c), nn.SiLU(),
                                   zero(nn.Conv2d(c, self.out_channels, 3, padding=1)))

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Optional[torch.Tensor] = None,
                y: Optional[torch.Tensor] = None) -> torch.Tensor:
        self.check_input(x, cond)
        if cond is not None:
            x = torch.cat([x, cond], dim=1)  # (B, C + C_cond, H, W)
        emb = self.embedding(t, y)  # (B, 4 dim)
        h = self.init_conv(x)  # (B, dim, H, W)
        skips = [h]
        for layer in self.downs:
            h = layer(h) if isinstance(layer, nn.Conv2d) else self.stage(partial(block, *layer), h, emb)
            skips.append(h)
        h = self.stage(self.middle, h, emb)
        for layer in self.ups:
            if isinstance(layer, nn.Sequential):  # upsampling
                h = layer(h)
            else:
                h = self.stage(partial(block, *layer), torch.cat([h, skips.pop()], dim=1), emb)
        return self.final(h)  # (B, out_channels, H, W)

    def middle(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """ResBlock, attention, ResBlock at the lowest resolution: (B, c, h, w) -> (B, c, h, w)."""
        return self.mid2(self.mid_attn(self.mid1(h, emb)), emb)


def block(res: ResBlock, attn: nn.Module, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    """A ResBlock and the attention after it (an identity at every level but the lowest): (B, c_in, h, w) ->
    (B, c_out, h, w)."""
    return attn(res(h, emb))
