"""`dff estimate --config FILE [overrides]`: what a training run will cost, before it starts.

    parameters, FLOPs per training image, memory at the configured batch (weights, gradients, AdamW moments,
    EMA copy, activations), a few steps measured on this machine with the run's precision and speed options,
    and the projected wall-clock of the configured max_steps.

The steps run on synthetic data of the configured shapes (the data folder is not read), through the model's own
loss, the run's optimiser and EMA update, so they cost what the run's steps will (without data loading, logging and
sample grids).
`dff fit` prints the counted lines (no measured steps) before it trains; the command is in cli.py.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from .optim import adamw
from .speed import Speed, apply


@dataclass
class Estimate:
    parameters: int  # trained parameters of the network
    flops_per_image: float  # forward + backward of one training image (the U-Net; the VAE encode when not cached)
    batch: int
    state_gb: float  # weights + gradients + AdamW moments + EMA copy, float32
    activations_gb: Optional[float] = None  # tensors saved for backward at the configured batch (measured)
    peak_gb: Optional[float] = None  # max_memory_allocated over the measured steps (CUDA)
    seconds_per_step: Optional[float] = None
    device: str = "cpu"
    precision: str = "32-true"
    max_steps: Optional[int] = None
    uncompiled: bool = False  # the run compiles its network (speed.compile) but the measured steps did not
    available_gb: Optional[float] = None  # the memory the run may use (free device memory, or given)
    needed_gb: Optional[float] = None  # state + activations at the batch, extrapolated from a small probe
    fits_batch: Optional[int] = None  # the largest batch that fits, when the configured one does not

    def lines(self) -> list[str]:
        out = [f"{self.parameters / 1e6:.2f} M trained parameters; "
               f"{self.flops_per_image / 1e9:.2f} GFLOP per training image (forward + backward)",
               f"memory at batch {self.batch}: weights, gradients, AdamW moments and EMA {self.state_gb:.2f} GB"
               + (f" + activations {self.activations_gb:.2f} GB ({self.precision})"
                  if self.activations_gb is not None else "")
               + (f"; measured peak {self.peak_gb:.2f} GB" if self.peak_gb is not None else "")]
        if self.fits is False:
            out.append(f"does not fit: batch {self.batch} needs about {self.needed_gb:.1f} GB, {self.available_gb:.1f} "
                       f"GB available on {self.device}; try --data.batch_size {self.fits_batch} or "
                       "--speed.checkpointing true (steps not measured)" if self.fits_batch else
                       f"does not fit: even batch 1 needs more than the {self.available_gb:.1f} GB available on "
                       f"{self.device} (the weights, gradients, AdamW moments and EMA alone take "
                       f"{self.state_gb:.1f} GB)")
        if self.seconds_per_step:
            s = self.seconds_per_step
            out.append(f"measured on this machine ({self.device}, {self.precision}): {s * 1e3:.0f} ms per step, "
                       f"{self.batch / s:.1f} images/s")
            if self.max_steps and self.max_steps > 0:
                total = self.max_steps * s
                out.append(f"the configured run: {self.max_steps:,} steps x {self.batch} = "
                           f"{self.max_steps * self.batch / 1e6:.2f} M images, about {human(total)} of training "
                           "on this machine (sample grids and checkpoints not included)")
            if self.uncompiled:
                out.append("measured without torch.compile: the run compiles its network first (about 2 min on an "
                           "H200) and then steps faster (x1.89 there for the 64x64 U-Net; docs/benchmarks.md)")
        return out


    @property
    def fits(self) -> Optional[bool]:
        if self.needed_gb is None or self.available_gb is None:
            return None
        return self.needed_gb <= FIT_SHARE * self.available_gb


FIT_SHARE = 0.9  # of the available memory a run may plan to use (the allocator, the data and Python need the rest)
PROBE_BATCH = 2  # images of the probe that measures activations per image before the configured batch runs


def available_gb(device: torch.device) -> Optional[float]:
    """Free memory for the run: the CUDA device's free memory, or the host's MemAvailable (Linux); None unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] / 2**30
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def human(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def synthetic_batch(model, batch: int, device: torch.device, from_cache: bool) -> dict:
    """A batch of the shapes the model's data gives: images in [0, 1] (or cached latents), condition, labels.
    `model`: a DiffusionModel, or the training shell that holds one (so for count_flops and state_bytes)."""
    model = getattr(model, "model", model)
    h = model.hparams
    if from_cache:
        f = model.latent.factor
        out = {"latent": torch.randn(batch, model.latent.channels, h.image_size // f, h.image_size // f, device=device)}
    else:
        out = {"image": torch.rand(batch, h.channels, h.image_size, h.image_size, device=device)}
    if h.cond_channels:
        out["cond"] = torch.rand(batch, h.cond_channels, h.image_size, h.image_size, device=device)
    if h.num_classes:
        out["label"] = torch.randint(0, h.num_classes, (batch,), device=device)
    return out


def count_flops(model, from_cache: bool) -> float:
    """FLOPs of one training image's step (forward + backward), by torch's FlopCounterMode on the CPU."""
    from torch.utils.flop_counter import FlopCounterMode

    model = getattr(model, "model", model)
    with torch.random.fork_rng(devices=[]):  # the run's random stream is left as it was (CUDA is not touched)
        batch = synthetic_batch(model, 1, torch.device("cpu"), from_cache)
        with FlopCounterMode(display=False) as counter:
            model.loss(batch).backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def state_bytes(model) -> int:
    """Weights, gradients, two AdamW moments (float32) and the EMA copy of the network."""
    model = getattr(model, "model", model)
    n = sum(p.numel() for p in model.net.parameters() if p.requires_grad)
    return 4 * n * 5


def estimate(module, batch: int, *, precision: str = "32-true", device: str = "cpu", speed: Optional[Speed] = None,
             steps: int = 3, max_steps: Optional[int] = None, from_cache: bool = False,
             memory_gb: Optional[float] = None) -> Estimate:
    """Count and measure a training shell's run (DiffusionModule): `steps` timed optimiser steps of its
    DiffusionModel after two warm-up steps (0: count only, the model untouched). Before the configured batch
    runs, a probe of PROBE_BATCH images measures the activations per image; when state + activations at the batch
    would not fit in `memory_gb` (default: the device's free memory), nothing larger runs and the estimate says
    which batch would fit."""
    model, h = module.model, module.hparams
    est = Estimate(parameters=sum(p.numel() for p in model.net.parameters() if p.requires_grad),
                   flops_per_image=count_flops(model, from_cache), batch=batch, state_gb=state_bytes(model) / 2**30,
                   device=device, precision=precision, max_steps=max_steps)
    if steps <= 0:
        return est
    if model.is_latent and not model.latent.has_scale:
        model.latent.set_scale(1.0)  # estimated from the data at fit start; any value costs the same
    dev = torch.device(device)
    model.to(dev).train()
    if speed is not None:
        o = speed.resolve(dev.type == "cuda")
        est.uncompiled = o["compile"]
        o["compile"] = False  # compiling would take longer than the estimate; see docs/benchmarks.md
        apply(model, **o)
    opt = adamw(model.net.parameters(), h.lr, h.weight_decay, h.nonfinite_patience)  # the run's optimiser
    dtype = {"bf16": torch.bfloat16, "16": torch.float16}.get(precision.split("-")[0])
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    # the probe: activations of a small batch, scaled to the configured one (they grow linearly with the batch)
    probe = min(batch, PROBE_BATCH)
    with torch.autocast(dev.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model.loss(synthetic_batch(model, probe, dev, from_cache))
    per_image = sum(saved.values()) / probe / 2**30
    saved.clear()
    est.available_gb = memory_gb if memory_gb is not None else available_gb(dev)
    est.needed_gb = est.state_gb + per_image * batch
    if est.fits is False:
        room = FIT_SHARE * est.available_gb - est.state_gb
        est.fits_batch = int(room // per_image) if room > per_image else None
        est.activations_gb = per_image * batch
        model.plain()
        return est
    data = synthetic_batch(model, batch, dev, from_cache)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    warmup = 2
    for i in range(steps + warmup):
        sync()
        t0 = time.perf_counter()
        with torch.autocast(dev.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            if i == 0:
                with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                    loss = model.loss(data)
            else:
                loss = model.loss(data)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        model.ema.update(model.net)
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    est.activations_gb = sum(saved.values()) / 2**30
    est.seconds_per_step = sorted(times)[len(times) // 2]
    if dev.type == "cuda":
        est.peak_gb = torch.cuda.max_memory_allocated() / 2**30
    model.plain()
    return est
