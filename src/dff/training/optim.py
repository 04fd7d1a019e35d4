"""The learning rate over a run, shared by the diffusion model and the autoencoder: warm-up, decay to zero at
trainer.max_steps or at the end of trainer.max_time, whichever budget runs out first, and the rescaling of a
recipe to another batch size."""
from __future__ import annotations

import math
from typing import Callable, Optional

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


def lr_factor(step: int, warmup: int, total: int, decay: str = "none", spent: Optional[float] = None) -> float:
    """The learning rate of optimiser step `step` (0-based) as a fraction of the peak: a linear warm-up over
    `warmup` steps, min(1, (step + 1) / warmup), times a decay to 0 at step `total`: none (constant), linear
    1 - s (Defazio et al. 2023, "When, why and how much?", Sec. 3: linear decay to zero) or cosine
    (1 + cos(pi s)) / 2 (Loshchilov & Hutter 2017, SGDR without restarts), with s the share of the run done: of
    its `total` steps, or of its time budget (`spent`), whichever is further along (total 0: no step budget)."""
    w = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    if decay == "none":
        return w
    s = max(min(step, total) / total if total > 0 else 0.0, min(max(spent or 0.0, 0.0), 1.0))
    return w * (1.0 - s if decay == "linear" else 0.5 * (1.0 + math.cos(math.pi * s)))


def check_decay(decay: str) -> None:
    if decay not in LR_DECAYS:
        raise ValueError(f"model.lr_decay={decay!r}: expected one of {', '.join(LR_DECAYS)}")


def decay_length(decay: str, max_steps: Optional[int]) -> int:
    """The step the decay reaches 0 at: trainer.max_steps, which a decaying schedule needs (0 without decay)."""
    if decay == "none":
        return 0
    if max_steps is None or max_steps <= 0:
        raise ValueError(f"model.lr_decay={decay} decays to 0 at trainer.max_steps, which is {max_steps}: set "
                         "trainer.max_steps or trainer.max_time (or model.lr_decay none for a run bounded by epochs)")
    return max_steps


def time_spent(trainer) -> Optional[Callable[[], float]]:
    """For a run with a time budget (trainer.max_time): a function giving the share of it spent in training so far,
    read from Lightning's Timer (which checkpoints keep, so a resumed run goes on from the time already spent);
    None without a time budget."""
    from lightning.pytorch.callbacks import Timer

    timer = next((cb for cb in trainer.callbacks if isinstance(cb, Timer)), None)
    if timer is None:
        return None

    def spent() -> float:
        elapsed, left = timer.time_elapsed("train"), timer.time_remaining("train")
        return 0.0 if left is None else elapsed / max(elapsed + left, 1e-9)

    return spent


def scheduled(opt: torch.optim.Optimizer, warmup: int, total: int, decay: str,
              spent: Optional[Callable[[], float]] = None):
    """What configure_optimizers returns: the optimiser alone when the rate is constant, else with a per-step
    LambdaLR of lr_factor (decaying by the step, or by the share of the time budget `spent()`)."""
    if decay == "none" and warmup <= 0:
        return opt
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: lr_factor(step, warmup, total, decay, None if spent is None else spent()))
    sched.by_time = spent is not None
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def refresh_rate(sched) -> None:
    """Recompute the rate a time-budget schedule gives now (at the start of training, after a checkpoint restored
    the optimiser's last rate, which was that of the other run's budget): base lr x lr_factor at the last step."""
    if getattr(sched, "by_time", False):
        for group, base, f in zip(sched.optimizer.param_groups, sched.base_lrs, sched.lr_lambdas):
            group["lr"] = base * f(sched.last_epoch)


def run_schedule(trainer, opt: torch.optim.Optimizer, warmup: int, decay: str):
    """The schedule of a run: the decay reaches 0 at trainer.max_steps or at the end of trainer.max_time, whichever
    budget runs out first (the run stops there)."""
    if decay == "none":
        return scheduled(opt, warmup, 0, decay)
    spent = time_spent(trainer)
    if spent is not None:
        steps = trainer.max_steps if trainer.max_steps is not None and trainer.max_steps > 0 else 0
        return scheduled(opt, warmup, steps, decay, spent)
    return scheduled(opt, warmup, decay_length(decay, trainer.max_steps), decay)


def adamw(params, lr: float, weight_decay: float, nonfinite_patience: int) -> torch.optim.AdamW:
    """The optimiser of every diffusion run (Loshchilov & Hutter 2019): fused when the non-finite guard is on,
    since fused AdamW can skip a step on the device (DiffusionModule.on_before_optimizer_step); plain otherwise."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True if nonfinite_patience else None)
