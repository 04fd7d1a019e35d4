"""Classifier-free guidance (Ho & Salimans 2022): one network trained with and without labels.

    pred_guided = pred(x_t, null) + s * (pred(x_t, y) - pred(x_t, null))        (Ho & Salimans 2022, Eq. 6,
                                                                                with s = 1 + w)
s = 0 is the unconditional prediction, s = 1 the conditional one, s > 1 trades diversity for
fidelity to the class. The combination is affine, so it applies to an eps, x0 or v prediction alike.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch


class ClassifierFreeGuidance:
    """A sampler-ready model(x_t, t[, cond]) that guides `net(x_t, t, cond, y)` towards labels y."""

    def __init__(self, net: Callable[..., torch.Tensor], y: torch.Tensor, *, scale: float, null: int):
        self.net, self.y, self.scale, self.null = net, y, float(scale), null

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, cond: Optional[torch.Tensor] = None) -> torch.Tensor:
        y_null = torch.full_like(self.y, self.null)
        if self.scale == 1.0:
            return self.net(x_t, t, cond, self.y)
        if self.scale == 0.0:
            return self.net(x_t, t, cond, y_null)
        two = lambda a: None if a is None else torch.cat([a, a])  # noqa: E731  conditional and unconditional in one batch
        both = self.net(two(x_t), two(t), two(cond), torch.cat([self.y, y_null]))
        conditional, unconditional = both.chunk(2)
        return unconditional + self.scale * (conditional - unconditional)
