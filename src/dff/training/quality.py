"""Quality while training: every `eval.every_n_steps` steps, FID and KID (Heusel et al. 2017; Binkowski et al. 2018;
evaluation/fid.py) of a fixed set of EMA samples against real training images, through the run's feature extractor.

    eval.every_n_steps   0 (off) or N: score at steps N, 2N, ...
    eval.num             samples scored each time (the same noise every time, so the curve shows the model, not
                         the draw); FID is biased upwards for few images, so compare only at equal eval.num
    eval.extractor       auto (digits / textures for the built-in sets; on other data the evaluation is off, with a
                         line saying so), digits, textures, inception, or your own "module.py:factory" (any
                         channel count: evaluation/features.py)

The values go to metrics.csv (`eval/fid`, `eval/kid`, `eval/seconds`: the cost of one evaluation) and to every
logger, report.html draws them against the step, and `--checkpoint.monitor eval/fid --checkpoint.mode min` (with
checkpoint.every_n_train_steps = eval.every_n_steps) keeps the best checkpoints by them. Rank 0 computes; the
values are broadcast so that every rank's checkpoint callback sees them. Image-to-image models are scored by
validation instead (PSNR/SSIM, every validation epoch).
"""
from __future__ import annotations

import time
from typing import Optional

import lightning as L
import numpy as np
import torch

from ..evaluation.features import get_extractor
from ..evaluation.fid import compute_features, fid_from_features, kid_from_features, min_images_for_fid
from .module import DiffusionModule

AUTO = {"digits": "digits", "textures": "textures"}  # data.dataset -> the extractor trained for it


class QualityEval(L.Callback):
    """FID/KID of `num` EMA samples against up to `reference_num` training images, every `every_n_steps` steps."""

    def __init__(
        self,
        every_n_steps: int = 0,  # 0: off
        num: int = 256,  # samples per evaluation (at least the extractor's feature dimension + 1)
        reference_num: int = 1000,  # training images the samples are compared with (features computed once)
        sampler: str = "dpmpp_2m",
        steps: Optional[int] = 20,
        extractor: str = "auto",  # auto | digits | textures | inception | module.py:factory
        extractor_weights: Optional[str] = None,
        batch_size: int = 128,  # samples drawn at once
        seed: int = 0,
    ):
        if every_n_steps < 0 or num < 2 or reference_num < 2 or batch_size < 1:
            raise ValueError(f"eval.every_n_steps >= 0, eval.num >= 2, eval.reference_num >= 2 and eval.batch_size "
                             f">= 1 expected, got {every_n_steps}, {num}, {reference_num}, {batch_size}")
        self.every_n_steps, self.num, self.reference_num = every_n_steps, num, reference_num
        self.sampler, self.steps, self.extractor_name, self.weights = sampler, steps, extractor, extractor_weights
        self.batch_size, self.seed = batch_size, seed
        self.extractor = self.reference = None

    # ------------------------------------------------------------------ set-up
    def on_fit_start(self, trainer: L.Trainer, pl_module) -> None:
        if not self.every_n_steps or not isinstance(pl_module, DiffusionModule):
            return
        if pl_module.condition:
            raise ValueError("eval.every_n_steps scores generation from noise (FID/KID); an image-to-image model is "
                             "scored by validation (PSNR/SSIM): set eval.every_n_steps 0")
        dataset = getattr(getattr(trainer.datamodule, "hparams", None), "dataset", None)
        if self.extractor_name == "auto" and dataset not in AUTO:  # a recipe's default, on data it has no judge for
            self.every_n_steps = 0
            if trainer.is_global_zero:
                print(f"eval: off: eval.extractor auto knows the built-in digits and textures, not data.dataset "
                      f"{dataset!r}; give eval.extractor (inception for RGB photos, or your own module.py:factory)")
            return
        if trainer.is_global_zero:
            self.extractor = self.make_extractor(trainer).to(pl_module.device)
            self.reference = self.features(self.reference_images(trainer), pl_module.device)  # (N, D)
            need = min_images_for_fid(self.reference.shape[1])
            if min(self.num, len(self.reference)) < need:
                raise ValueError(f"eval: FID with {self.reference.shape[1]}-d features needs at least {need} images "
                                 f"per set; eval.num={self.num}, {len(self.reference)} reference images")

    def make_extractor(self, trainer: L.Trainer) -> torch.nn.Module:
        name = self.extractor_name
        if name == "auto":
            name = AUTO[trainer.datamodule.hparams.dataset]
        try:
            return get_extractor(name, self.weights)
        except (ImportError, AttributeError, TypeError, OSError) as e:  # a custom extractor that cannot be made
            raise ValueError(f"eval.extractor: {e}") from e

    def reference_images(self, trainer: L.Trainer) -> torch.Tensor:
        """Up to reference_num training images (C, H, W) in [0, 1], evenly spread over the data set (cached latents
        are not images: the image data set is built again for them)."""
        dm = trainer.datamodule
        ds = dm.train_set
        if "image" not in ds[0]:
            ds = dm.make("train", flips=False)
        idx = np.linspace(0, len(ds) - 1, min(self.reference_num, len(ds))).round().astype(int)
        return torch.stack([ds[int(i)]["image"].cpu() for i in idx])

    def features(self, images: torch.Tensor, device) -> np.ndarray:
        return compute_features(self.extractor, images, batch_size=self.batch_size, device=device, what="eval")

    # ------------------------------------------------------------------ the evaluation
    def samples(self, pl_module) -> torch.Tensor:
        """eval.num EMA samples, batch k drawn from seed + k (class-conditional models: the classes in turn)."""
        nc, out = pl_module.hparams.num_classes, []
        for k, start in enumerate(range(0, self.num, self.batch_size)):
            n = min(self.batch_size, self.num - start)
            labels = (torch.arange(start, start + n) % nc) if nc else None
            out.append(pl_module.sample(n, self.sampler, steps=self.steps, seed=self.seed + k, labels=labels,
                                        progress=False).cpu())
        return torch.cat(out)

    def evaluate(self, pl_module) -> dict[str, float]:
        """{"eval/fid", "eval/kid", "eval/seconds"} of the model now (rank 0, after on_fit_start)."""
        t0 = time.perf_counter()
        f = self.features(self.samples(pl_module), pl_module.device)
        kid, _ = kid_from_features(f, self.reference, subset_size=min(1000, len(f), len(self.reference)),
                                   seed=self.seed)
        return {"eval/fid": fid_from_features(f, self.reference), "eval/kid": kid,
                "eval/seconds": time.perf_counter() - t0}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if (not self.every_n_steps or not isinstance(pl_module, DiffusionModule) or step == 0
                or step % self.every_n_steps or step == getattr(self, "_last", -1)):
            return
        self._last = step
        values = self.evaluate(pl_module) if trainer.is_global_zero else None
        values = trainer.strategy.broadcast(values, src=0)
        # for checkpoint.monitor (its callback runs after this one, on every rank) and for the loggers
        trainer.callback_metrics.update({k: torch.tensor(v) for k, v in values.items()})
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(values, step=step)
            print(f"eval: step {step}: FID {values['eval/fid']:.3f}, KID {values['eval/kid']:.4f} "
                  f"({self.num} samples, {values['eval/seconds']:.1f} s)")
