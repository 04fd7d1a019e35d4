"""Training callbacks: a grid of EMA samples every N steps, exported weights at the end of fit."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import lightning as L
import torch

from .autoencoder_module import AutoencoderModule
from .diffusion import default_steps, get_sampler
from .diffusion.samplers import check_steps
from .module import DiffusionModule
from .pretrained import EXPORT_DIR, save_pretrained
from .viz import save_grid, translation_grid


def run_dir(trainer: L.Trainer) -> Path:
    """The folder of this run: the logger's version folder, else the trainer's root. Under DDP this is a
    collective (Trainer.log_dir broadcasts rank 0's folder): call it on every rank, never on one alone."""
    return Path(trainer.log_dir or trainer.default_root_dir)


class SampleGrid(L.Callback):
    """Every `every_n_steps` optimiser steps, sample with the EMA weights and write samples/step_XXXXXX.png.
    For a conditional model the grid has one row per condition: [condition | output | target], the
    conditions being the first `num` items of the validation set (else of the training set)."""

    def __init__(
        self,
        every_n_steps: int = 1000,  # 0 disables
        num: int = 16,  # images per grid
        sampler: str = "ddim",  # sampler for the grids
        steps: Optional[int] = None,  # sampler steps (None: the sampler's default, 50 for DDIM)
        seed: int = 0,  # the same noise every time, so grids are comparable across steps
    ):
        get_sampler(sampler)  # an unknown name is an error now, not at the first grid
        if every_n_steps < 0 or num < 1:
            raise ValueError(f"samples.every_n_steps must be >= 0 and samples.num >= 1, got {every_n_steps} and {num}")
        self.every_n_steps, self.num, self.sampler, self.steps, self.seed = every_n_steps, num, sampler, steps, seed

    def on_fit_start(self, trainer, pl_module) -> None:
        """Settings the model cannot sample with stop the run before its first step, not at its first grid."""
        if self.every_n_steps and isinstance(pl_module, DiffusionModule):
            T = pl_module.hparams.timesteps
            steps = self.steps if self.steps is not None else default_steps(self.sampler)
            if steps is None or self.sampler == "ddpm":
                if steps not in (None, T):
                    raise ValueError(f"samples.steps={steps}: the ddpm sampler always takes all T={T} steps")
            else:
                check_steps(T, steps, f"samples.steps ({self.sampler}, default {default_steps(self.sampler)})")

    def write(self, trainer: L.Trainer, pl_module) -> Optional[Path]:
        """Called on every rank; rank 0 samples and writes (run_dir is a collective: every rank asks for it)."""
        path = run_dir(trainer) / "samples" / f"step_{trainer.global_step:06d}.png"
        if not trainer.is_global_zero:
            return None
        if not pl_module.hparams.cond_channels:
            nc = pl_module.hparams.num_classes
            labels = torch.arange(self.num) % nc if nc else None  # class-conditional: cycle through the classes
            x = pl_module.sample(self.num, self.sampler, steps=self.steps, seed=self.seed, labels=labels, progress=False)
            return save_grid(x, path, nrow=nc if nc and self.num % nc == 0 else None)
        dm = trainer.datamodule
        ds = getattr(dm, "val_set", None) or dm.train_set
        items = [ds[i] for i in range(min(self.num, len(ds)))]
        cond, target = torch.stack([it["cond"] for it in items]), torch.stack([it["image"] for it in items])
        out = pl_module.sample(sampler=self.sampler, steps=self.steps, seed=self.seed, cond=cond, progress=False)
        images, nrow = translation_grid(cond, out, target)
        return save_grid(images, path, nrow=nrow)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not isinstance(pl_module, DiffusionModule):  # an autoencoder: ExportWeights writes its reconstructions
            return
        step = trainer.global_step
        if self.every_n_steps > 0 and step > 0 and step % self.every_n_steps == 0 and step != getattr(self, "_last", -1):
            self._last = step
            self.write(trainer, pl_module)


class ExportWeights(L.Callback):
    """At the end of fit, write the EMA weights as <run>/export/{model.safetensors, config.json};
    an autoencoder writes <run>/export/autoencoder (diffusers' format) and reconstructions.png."""

    def on_train_end(self, trainer, pl_module) -> None:
        run = run_dir(trainer)  # a collective (Trainer.log_dir broadcasts): every rank asks, rank 0 writes
        if not trainer.is_global_zero:
            return
        if isinstance(pl_module, AutoencoderModule):
            out = pl_module.export(run / EXPORT_DIR)
            print(f"exported the autoencoder to {out}")
            dm = trainer.datamodule
            ds = getattr(dm, "val_set", None) or dm.train_set
            idx = torch.linspace(0, len(ds) - 1, min(8, len(ds))).round().long().tolist()  # spread over the set
            images = torch.stack([ds[i]["image"] for i in idx])
            print(f"wrote {pl_module.export_reconstructions(images, run / 'reconstructions.png')}")
            return
        out = save_pretrained(pl_module, run / EXPORT_DIR)
        print(f"exported EMA weights to {out}")
