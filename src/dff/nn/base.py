"""What the two U-Nets share: the call net(x_t, t, cond, y), the input checks, the time and class
embedding, and the size factor. Each subclass builds `time_mlp`, `class_emb` and its own layers."""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


class UNetBase(nn.Module):
    """Base of the U-Nets: net(x_t (B, C, H, W), t (B,), cond (B, C_cond, H, W) | None, y (B,) | None)."""

    time_mlp: nn.Module  # (B,) timesteps -> (B, emb_dim)
    class_emb: Optional[nn.Embedding]  # num_classes + 1 rows (the last: "no label"), or None
    checkpointing: bool = False  # recompute each block's activations in backward (speed.checkpointing)

    def __init__(
        self,
        *,
        in_channels: int,  # channels of x_t
        out_channels: Optional[int],  # channels of the prediction (None: in_channels)
        cond_channels: int,  # channels of a condition image concatenated to x_t (0: none)
        dim_mults: Sequence[int],  # width multiplier per level; len - 1 downsamplings
        num_classes: int,  # class labels y in 0..num_classes-1 (0: unconditional)
    ):
        super().__init__()
        self.in_channels, self.cond_channels = in_channels, cond_channels
        self.out_channels = out_channels or in_channels
        self.dim_mults = tuple(dim_mults)
        self.num_classes = num_classes

    def stage(self, fn: Callable[..., torch.Tensor], *args: torch.Tensor) -> torch.Tensor:
        """fn(*args). Under activation checkpointing (Chen et al. 2016), when gradients are recorded, the
        activations inside fn are not kept for backward but recomputed there: less memory for about one more
        forward pass. fn must not depend on loop variables bound later (use functools.partial)."""
        if self.checkpointing and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    @property
    def size_factor(self) -> int:
        """Height and width must be multiples of this: 2 ** (number of downsamplings)."""
        return 2 ** (len(self.dim_mults) - 1)

    def check_input(self, x: torch.Tensor, cond: Optional[torch.Tensor]) -> None:
        """Clear errors for inputs the network cannot take."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"UNet expects x_t of shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        H, W = x.shape[-2:]
        f = self.size_factor
        if H % f or W % f:
            raise ValueError(
                f"image size {H}x{W} cannot be divided down by the U-Net: with dim_mults={self.dim_mults} "
                f"height and width must be multiples of {f}"
            )
        if self.cond_channels and (cond is None or cond.shape[1] != self.cond_channels
                                   or cond.shape[-2:] != x.shape[-2:]):
            got = None if cond is None else tuple(cond.shape)
            raise ValueError(f"UNet expects a condition of shape (B, {self.cond_channels}, {H}, {W}), got {got}")
        if not self.cond_channels and cond is not None:
            raise ValueError("this UNet was built without a condition (cond_channels=0) but was given one")

    def embedding(self, t: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Time embedding (B, emb_dim), plus the class embedding of y for a class-conditional network."""
        t_emb = self.time_mlp(t)
        if self.class_emb is not None:
            if y is None:  # the "no label" row
                y = torch.full((t.shape[0],), self.num_classes, dtype=torch.long, device=t.device)
            t_emb = t_emb + self.class_emb(y)
        elif y is not None:
            raise ValueError("this UNet was built without classes (num_classes=0) but was given labels")
        return t_emb
