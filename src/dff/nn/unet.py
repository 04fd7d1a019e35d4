"""The ConvNeXt U-Net of the original DiffusionFastForward project, rewritten: net(x_t, t, cond) -> prediction.

Layout for dim_mults = (1, 2, 4, 8) and a 64x64 input (channels c = dim * mult):

    init 7x7 conv -> [ConvNeXt, ConvNeXt, LinearAttention, Down] x 3 -> level 4 (no Down)
                  -> mid: ConvNeXt, Attention, ConvNeXt
                  -> [concat skip, ConvNeXt, ConvNeXt, LinearAttention, Up] x 3 -> level 1 (no Up)
                  -> ConvNeXt -> 1x1 conv to out_channels

The image side must be divisible by 2 ** (len(dim_mults) - 1).
"""
from __future__ import annotations

from functools import partial
from typing import Optional, Sequence

import torch
from torch import nn

from .base import UNetBase
from .layers import Attention, ConvNextBlock, LinearAttention, SinusoidalEmbedding, downsample, upsample


class UNet(UNetBase):
    """ConvNeXt U-Net with a sinusoidal time embedding and linear attention at each level."""

    def __init__(
        self,
        in_channels: int = 3,  # channels of x_t
        out_channels: Optional[int] = None,  # channels of the prediction (default: in_channels)
        *,
        cond_channels: int = 0,  # channels of a condition image concatenated to x_t (0: none)
        dim: int = 64,  # base width
        dim_mults: Sequence[int] = (1, 2, 4, 8),  # width multiplier per level; len - 1 downsamplings
        attention: bool = True,  # linear attention at each level and full attention in the middle
        convnext_mult: int = 2,  # expansion ratio inside ConvNeXt blocks
        num_classes: int = 0,  # class labels y in 0..num_classes-1, embedded and added to the time embedding
    ):
        super().__init__(in_channels=in_channels, out_channels=out_channels, cond_channels=cond_channels,
                         dim_mults=dim_mults, num_classes=num_classes)
        chs = [dim] + [dim * m for m in self.dim_mults]
        time_dim = 4 * dim
        L = len(self.dim_mults)
        attn = (lambda c: LinearAttention(c)) if attention else (lambda c: nn.Identity())

        self.time_mlp = nn.Sequential(SinusoidalEmbedding(dim), nn.Linear(dim, time_dim), nn.GELU(),
                                      nn.Linear(time_dim, time_dim))
        self.init_conv = nn.Conv2d(in_channels + cond_channels, dim, 7, padding=3)
        # one extra row, index num_classes, is the "no label" class of classifier-free guidance
        self.class_emb = nn.Embedding(num_classes + 1, time_dim) if num_classes else None

        self.downs = nn.ModuleList()
        for i in range(L):
            c_in, c_out = chs[i], chs[i + 1]
            self.downs.append(nn.ModuleList([
                ConvNextBlock(c_in, c_out, time_dim, convnext_mult, norm=i > 0),
                ConvNextBlock(c_out, c_out, time_dim, convnext_mult),
                attn(c_out),
                downsample(c_out) if i < L - 1 else nn.Identity(),
            ]))

        self.mid1 = ConvNextBlock(chs[-1], chs[-1], time_dim, convnext_mult)
        self.mid_attn = Attention(chs[-1]) if attention else nn.Identity()
        self.mid2 = ConvNextBlock(chs[-1], chs[-1], time_dim, convnext_mult)

        self.ups = nn.ModuleList()
        for i in reversed(range(L)):
            c_in, c_out = chs[i], chs[i + 1]
            self.ups.append(nn.ModuleList([
                ConvNextBlock(2 * c_out, c_in, time_dim, convnext_mult),
                ConvNextBlock(c_in, c_in, time_dim, convnext_mult),
                attn(c_in),
                upsample(c_in) if i > 0 else nn.Identity(),
            ]))

        self.final = nn.Sequential(ConvNextBlock(dim, dim, None, convnext_mult), nn.Conv2d(dim, self.out_channels, 1))

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Optional[torch.Tensor] = None,
                y: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Prediction for x_t (B, C, H, W) at timesteps t (B,), with an optional condition image and,
        for a class-conditional network, labels y (B,) (None or num_classes: no label)."""
        self.check_input(x, cond)
        if cond is not None:
            x = torch.cat([x, cond], dim=1)  # (B, C + C_cond, H, W)
        t_emb = self.embedding(t, y)  # (B, 4 dim)
        x = self.init_conv(x)  # (B, dim, H, W)

        skips = []
        for block1, block2, attn, down in self.downs:
            x = self.stage(partial(level, block1, block2, attn), x, t_emb)
            skips.append(x)
            x = down(x)

        x = self.stage(self.middle, x, t_emb)

        for block1, block2, attn, up in self.ups:
            x = torch.cat([x, skips.pop()], dim=1)  # (B, 2 c_out, h, w)
            x = self.stage(partial(level, block1, block2, attn), x, t_emb)
            x = up(x)

        return self.final(x)  # (B, out_channels, H, W)

    def middle(self, x: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        """ConvNeXt block, attention, ConvNeXt block at the lowest resolution: (B, c, h, w) -> (B, c, h, w)."""
        return self.mid2(self.mid_attn(self.mid1(x, t_emb)), t_emb)


def level(block1: nn.Module, block2: nn.Module, attn: nn.Module, x: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
    """Two ConvNeXt blocks and the linear attention after them: (B, c_in, h, w) -> (B, c_out, h, w)."""
    return attn(block2(block1(x, t_emb), t_emb))
