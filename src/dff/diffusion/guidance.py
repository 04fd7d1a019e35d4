"""Classifier-free guidance (Ho & Salimans 2022): one network trained with and without labels.

    pred_guided = pred(x_t, null) + s * (pred(x_t, y) - pred(x_t, null))        (Ho & Salimans 2022, Eq. 6,
                                                                                with s = 1 + w)
s = 0 is the unconditional prediction, s = 1 the conditional one, s > 1 trades diversity for
fidelity to the class. The combination is affine, so it applies to an eps, x0 or v prediction alike.

Guidance in a limited interval (Kynkaanniemi et al. 2024): guiding at high noise levels pulls every
sample of a class towards the same few shapes, guiding at low noise levels changes little, so the
guided prediction is used only for noise levels sigma_lo < sigma_t <= sigma_hi and the conditional
one (s = 1) elsewhere; `active` is that choice as a table over the timesteps.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch


class ClassifierFreeGuidance:
    """A sampler-ready model(x_t, t[, cond]) that guides `net(x_t, t, cond, y)` towards labels y; with
    `active` (T,) bool, only at the timesteps where it is true (the conditional prediction elsewhere)."""

    def __init__(self, net: Callable[..., torch.Tensor], y: torch.Tensor, *, scale: float, null: int,
                 active: Optional[torch.Tensor] = None):
        self.net, self.y, self.scale, self.null, self.active = net, y, float(scale), null, active

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, cond: Optional[torch.Tensor] = None) -> torch.Tensor:
        y_null = torch.full_like(self.y, self.null)
        if self.scale == 1.0:
            return self.net(x_t, t, cond, self.y)
        if self.scale == 0.0 and self.active is None:
            return self.net(x_t, t, cond, y_null)
        two = lambda a: None if a is None else torch.cat([a, a])  # noqa: E731  conditional and unconditional in one batch
        both = self.net(two(x_t), two(t), two(cond), torch.cat([self.y, y_null]))
        conditional, unconditional = both.chunk(2)
        guided = unconditional + self.scale * (conditional - unconditional)  # Eq. 6
        if self.active is None:
            return guided
        # (B, 1, 1, 1); .to is a no-op for the table DiffusionModule.sample puts on the device
        on = self.active.to(t.device)[t.long()].view(-1, *([1] * (x_t.dim() - 1)))
        return torch.where(on, guided, conditional)


# The default interval: EDM2's (Kynkaanniemi et al. 2024, ImageNet-512), chosen for the default scale 1.5 on
# the class-conditional digits (docs/benchmarks.md, "Class-conditional digits"): at equal share of samples
# showing the requested class, a lower FID than guiding at every step.
DEFAULT_INTERVAL = (0.28, 5.42)


def guidance_interval(alpha_bar: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """(T,) bool: the timesteps whose noise level sigma_t = sqrt((1 - abar_t) / abar_t) lies in (lo, hi]
    (Kynkaanniemi et al. 2024, Sec. 3; sigma as in EDM's x_t / sqrt(abar_t) = x0 + sigma_t eps)."""
    if not 0 <= lo < hi:
        raise ValueError(f"guidance interval ({lo}, {hi}]: expected 0 <= lo < hi (noise levels sigma)")
    sigma = ((1 - alpha_bar) / alpha_bar).sqrt()
    return (sigma > lo) & (sigma <= hi)
