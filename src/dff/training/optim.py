"""The learning rate over a run, shared by the diffusion model and the autoencoder: warm-up, decay to zero at
trainer.max_steps, and the rescaling of a recipe to another batch size."""
from __future__ import annotations

import math
from typing import Optional

import torch

LR_DECAYS = ("none", "linear", "cosine")


def batch_scaled(lr: float, warmup_steps: int, ema_decay: float, batch: int,
                 reference: int) -> tuple[float, int, float]:
    """A recipe tuned at batch `reference`, moved to batch B = `batch` (k = B / reference) so that it learns the same
    per image seen: the AdamW learning rate by the square-root rule, lr sqrt(k) (Malladi et al. 2022, Sec. 5); the
    warm-up and the EMA kept in images: warmup_steps / k steps, and a decay d^k per step (d per reference step),
    so the EMA's length in images is unchanged (the convention of EDM2, Karras et al. 2024, Sec. 3.1)."""
    k = batch / reference
    return lr * math.sqrt(k), max(0, round(warmup_steps / k)), ema_decay ** k


def lr_factor(step: int, warmup: int, total: int, decay: str = "none") -> float:
    """The learning rate of optimiser step `step` (0-based) as a fraction of the peak: a linear warm-up over
    `warmup` steps, min(1, (step + 1) / warmup), times a decay to 0 at step `total`: none (constant), linear
    1 - s / total (Defazio et al. 2023, "When, why and how much?", Sec. 3: linear decay to zero) or cosine
    (1 + cos(pi s / total)) / 2 (Loshchilov & Hutter 2017, SGDR without restarts)."""
    w = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    if decay == "none":
        return w
    s = min(step, total) / total
    return w * (1.0 - s if decay == "linear" else 0.5 * (1.0 + math.cos(math.pi * s)))


def check_decay(decay: str) -> None:
    if decay not in LR_DECAYS:
        raise ValueError(f"model.lr_decay={decay!r}: expected one of {', '.join(LR_DECAYS)}")


def decay_length(decay: str, max_steps: Optional[int]) -> int:
    """The step the decay reaches 0 at: trainer.max_steps, which a decaying schedule needs (0 without decay)."""
    if decay == "none":
        return 0
    if max_steps is None or max_steps <= 0:
        raise ValueError(f"model.lr_decay={decay} decays to 0 at trainer.max_steps, which is {max_steps}: "
                         "set trainer.max_steps (or model.lr_decay none for a run bounded by max_time/epochs)")
    return max_steps


def scheduled(opt: torch.optim.Optimizer, warmup: int, total: int, decay: str):
    """What configure_optimizers returns: the optimiser alone when the rate is constant, else with a per-step
    LambdaLR of lr_factor."""
    if decay == "none" and warmup <= 0:
        return opt
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, warmup, total, decay))
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def adamw(params, lr: float, weight_decay: float, nonfinite_patience: int) -> torch.optim.AdamW:
    """The optimiser of every diffusion run (Loshchilov & Hutter 2019): fused when the non-finite guard is on,
    since fused AdamW can skip a step on the device (DiffusionModule.on_before_optimizer_step); plain otherwise."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True if nonfinite_patience else None)
