"""`dff doctor RUN`: why are my samples noise? Checks a run folder for the usual causes, each finding
with its fix.

    loss          non-finite values; a curve that does not go down           (metrics.csv)
    EMA           never updated; still made of the first steps or of the random initial weights
                  (the EMA's weight on each update, from its decay and warm-up, in closed form)
    data          nearly constant or nearly black images (8-bit reading of 16-bit data, a wrong folder)
    samples       statistics far from the data's; pixel-to-pixel variation of noise
    latent        an autoencoder that loses the data (reconstruction PSNR)
    conditional   outputs that do not change with the condition

The run folder holds config.yaml (the data), metrics.csv, checkpoints/last.ckpt (or an export).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import yaml

from ..data import ImageDataModule
from ..models.ema import gamma_from_sigma_rel
from ..evaluation.reconstruction import evaluate_autoencoder
from ..models.pretrained import load_pretrained, model_from_checkpoint
from ..safe_load import load_tensors
from ..viz import read_metric


@dataclass
class Finding:
    ok: bool
    what: str  # what was checked, and what was found
    fix: str = ""  # what to do about it (when not ok)

    def __str__(self) -> str:
        return f"{'ok ' if self.ok else 'BAD'}  {self.what}" + ("" if self.ok else f"\n       fix: {self.fix}")


# ---------------------------------------------------------------------- loss
def check_loss(metrics_csv: Path, key: str = "train/loss") -> list[Finding]:
    if not metrics_csv.exists():
        return [Finding(False, f"no {metrics_csv.name}: the loss was never logged",
                        "log more often (trainer.log_every_n_steps) or train longer than one logging interval")]
    loss = np.array(read_metric(metrics_csv, key)[1])
    if len(loss) == 0:
        return [Finding(False, f"{metrics_csv.name} holds no {key}", "train longer than one logging interval")]
    if not np.isfinite(loss).all():
        first = int(np.argmin(np.isfinite(loss)))
        return [Finding(False, f"the loss became non-finite (first at log row {first} of {len(loss)})",
                        "lower model.lr, add warm-up (model.warmup_steps), check the data for NaN/inf values")]
    k = max(1, len(loss) // 10)
    start, end = loss[:k].mean(), loss[-k:].mean()
    if len(loss) >= 20 and end > 0.9 * start:
        return [Finding(False, f"the loss does not go down: {start:.4g} over the first tenth, {end:.4g} over the last",
                        "raise model.lr (or lower it if the loss is noisy and high), train longer, check the data")]
    return [Finding(True, f"loss {start:.4g} -> {end:.4g} over {len(loss)} logged steps")]


# ---------------------------------------------------------------------- EMA
def ema_weights(decay: float, warmup: bool, n: int, gamma: Optional[float] = None) -> tuple[np.ndarray, float]:
    """(weight of update k = 1..n, weight of the initial weights) in the EMA after n updates:
    theta_n = d_{n-1} theta_{n-1} + (1 - d_{n-1}) w_n with d_k = min(decay, (1 + k) / (10 + k)) (ema.py), or
    d_k = (1 - 1/(k + 1))^(gamma + 1) for a power-function EMA, so w_k carries (1 - d_{k-1}) prod_{j >= k} d_j and
    the initial weights prod_{j >= 0} d_j."""
    k = np.arange(n, dtype=np.float64)
    if gamma is not None:
        d = (1 - 1 / (k + 1)) ** (gamma + 1)  # d_0 = 0: the average starts at the first update's weights
    else:
        d = np.minimum(decay, (1 + k) / (10 + k)) if warmup else np.full(n, decay)  # d_0 .. d_{n-1}
    with np.errstate(divide="ignore"):
        log_tail = np.concatenate([np.cumsum(np.log(d)[::-1])[::-1], [0.0]])  # sum_{j >= k} log d_j, k = 0..n
    return (1 - d) * np.exp(log_tail[1:]), float(np.exp(log_tail[0]))


def check_ema(num_updates: int, steps: int, decay: float, warmup: bool,
              sigma_rel: Optional[float] = None) -> list[Finding]:
    if steps > 0 and num_updates == 0:
        return [Finding(False, f"the EMA was never updated in {steps} optimiser steps: samples come from the "
                               "random initial weights", "update the EMA after each optimiser step "
                               "(DiffusionModule.on_before_zero_grad does; a custom training loop must call "
                               "ema.update)")]
    if num_updates == 0:
        return [Finding(False, "no training step was taken", "train (dff fit)")]
    gamma = gamma_from_sigma_rel(sigma_rel) if sigma_rel is not None else None
    w, w_init = ema_weights(decay, warmup, num_updates, gamma)
    early = w[: max(1, num_updates // 10)].sum() + w_init
    kind = f"power profile, sigma_rel {sigma_rel}" if gamma is not None else \
        f"decay {decay}, warm-up {'on' if warmup else 'off'}"
    finding = f"EMA ({kind}) after {num_updates} updates: " \
              f"{100 * w_init:.1f}% initial weights, {100 * early:.1f}% from the first tenth of training"
    if w_init > 0.05 or early > 0.5:
        return [Finding(False, finding, f"train for several times 1 / (1 - decay) = {1 / (1 - decay):.0f} steps, "
                                        "or lower model.ema_decay, or keep model.ema_warmup on")]
    return [Finding(True, finding)]


# ---------------------------------------------------------------------- data and samples
def tv(x: torch.Tensor) -> float:
    """Mean absolute difference of neighbouring pixels: ~0.33 for uniform noise, small for images."""
    return float(((x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., 1:] - x[..., :-1]).abs().mean()) / 2)


def check_data(x: torch.Tensor) -> list[Finding]:
    if x.max() < 0.1:
        return [Finding(False, f"the training images are nearly black (max {float(x.max()):.4f}): 16-bit data "
                               "read as 8-bit, or a dark data set", "check the files with dff data check PATH")]
    if x.std() < 0.02:
        return [Finding(False, f"the training images are nearly constant (std {float(x.std()):.4f})",
                        "check data.root, and dff data check PATH")]
    return [Finding(True, f"data: {len(x)} images, mean {float(x.mean()):.3f}, std {float(x.std()):.3f}")]


def check_samples(samples: torch.Tensor, data: torch.Tensor) -> list[Finding]:
    """Per-channel mean and std, and the pixel-to-pixel variation, of samples against the data's."""
    m_s, m_d = samples.mean((0, 2, 3)), data.mean((0, 2, 3))
    s_s, s_d = samples.std((0, 2, 3)), data.std((0, 2, 3))
    tv_s, tv_d = tv(samples), tv(data)
    stats = (f"samples mean {m_s.mean():.3f} vs data {m_d.mean():.3f}, std {s_s.mean():.3f} vs {s_d.mean():.3f}, "
             f"pixel-to-pixel variation {tv_s:.3f} vs {tv_d:.3f}")
    found = []
    if tv_s > 2 * tv_d + 0.02:
        found.append(Finding(False, f"samples vary from pixel to pixel like noise: {stats}",
                             "train longer; check the EMA and loss findings; sample with more steps"))
    elif (m_s - m_d).abs().max() > 0.15 or not (0.5 < float(s_s.mean() / s_d.mean()) < 2):
        found.append(Finding(False, f"samples' statistics differ from the data's: {stats}",
                             "train longer; for shifted brightness try model.offset_noise 0.1"))
    else:
        found.append(Finding(True, stats))
    return found


def check_condition_used(model, cond: torch.Tensor, steps: int = 10) -> list[Finding]:
    """The same noise with two different conditions must give different outputs."""
    a = model.sample(cond=cond[:1], steps=steps, seed=0, progress=False)
    b = model.sample(cond=cond[1:2], steps=steps, seed=0, progress=False)
    diff = float((a - b).abs().mean())
    if diff < 0.01:
        return [Finding(False, f"outputs do not change with the condition (mean difference {diff:.4f})",
                        "check that the data give the model its condition (data.pairs) and train longer")]
    return [Finding(True, f"outputs change with the condition (mean difference {diff:.3f})")]


def check_autoencoder(model, x: torch.Tensor) -> list[Finding]:
    p = evaluate_autoencoder(model.latent.autoencoder, x)["psnr"]
    if p < 20:
        return [Finding(False, f"the autoencoder reconstructs the data at {p:.1f} dB PSNR: the latent model cannot "
                               "do better", "train the autoencoder longer or on this data "
                               "(configs/autoencoder_demo.yaml)")]
    return [Finding(True, f"autoencoder reconstruction PSNR {p:.1f} dB")]


# ---------------------------------------------------------------------- the run
def data_of(run: Path, num: int) -> Optional[tuple[torch.Tensor, Optional[torch.Tensor]]]:
    """(images (num, C, H, W), conditions or None) from the data section of the run's config.yaml."""
    cfg_path = run / "config.yaml"
    if not cfg_path.exists():
        return None
    cfg = (yaml.safe_load(cfg_path.read_text()) or {}).get("data") or {}
    dm = ImageDataModule(**{k: v for k, v in cfg.items() if k != "latent_cache"})
    ds = dm.make("train")
    items = [ds[i] for i in torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[:num].tolist()]
    x = torch.stack([it["image"] for it in items])
    return x, (torch.stack([it["cond"] for it in items]) if "cond" in items[0] else None)


def diagnose(run: str | Path, num: int = 64) -> list[Finding]:
    """Every finding for a run folder (see the module docstring)."""
    run = Path(run)
    findings = check_loss(run / "metrics.csv")
    ckpt = run / "checkpoints" / "last.ckpt"
    if ckpt.exists():  # read once: the model, and the step count for the EMA findings
        data = load_tensors(ckpt)
        model = model_from_checkpoint(data, ckpt).eval()
        findings += check_ema(int(model.ema.num_updates), int(data.get("global_step", 0)),
                              model.hparams.ema_decay, model.hparams.ema_warmup, model.hparams.get("ema_sigma_rel"))
    else:
        model = load_pretrained(run)
    loaded = data_of(run, num)
    if loaded is None:
        findings.append(Finding(False, "no config.yaml in the run folder: the data could not be compared",
                                "give a run folder written by dff fit"))
        return findings
    x, cond = loaded
    findings += check_data(x)
    if model.is_latent:
        findings += check_autoencoder(model, x)
    if cond is None:
        samples = model.sample(len(x), seed=0, progress=False)
    else:
        samples = model.sample(cond=cond, seed=0, progress=False)
        findings += check_condition_used(model, cond)
    findings += check_samples(samples.cpu(), x)
    return findings
