"""Training callbacks: a grid of EMA samples every N steps, exported weights at the end of fit, the run
report (report.html) at each checkpoint and at the end, and a checkpoint on Ctrl-C or SIGTERM."""
from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path
from typing import Optional

import lightning as L
import torch

from .autoencoder_module import AutoencoderModule
from ..diffusion import get_sampler
from ..diffusion.samplers import step_options
from .module import DiffusionModule
from ..models.pretrained import EXPORT_DIR, save_pretrained
from .report import hardware, loss_png, write_report
from .runs import run_dir
from .trackers import log_image
from ..viz import save_grid, translation_grid


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
            step_options(self.sampler, pl_module.hparams.timesteps, self.steps, "samples.steps")

    def write(self, trainer: L.Trainer, pl_module) -> Optional[Path]:
        """Called on every rank; rank 0 samples and writes (run_dir is a collective: every rank asks for it)."""
        path = run_dir(trainer) / "samples" / f"step_{trainer.global_step:06d}.png"
        if not trainer.is_global_zero:
            return None
        if not pl_module.condition:
            nc = pl_module.hparams.num_classes
            labels = torch.arange(self.num) % nc if nc else None  # class-conditional: cycle through the classes
            x = pl_module.sample(self.num, self.sampler, steps=self.steps, seed=self.seed, labels=labels,
                                 progress=False)
            return self.logged(trainer, save_grid(x, path, nrow=nc if nc and self.num % nc == 0 else None))
        dm = trainer.datamodule
        ds = getattr(dm, "val_set", None) or dm.train_set
        items = [ds[i] for i in range(min(self.num, len(ds)))]
        cond, target = torch.stack([it["cond"] for it in items]), torch.stack([it["image"] for it in items])
        out = pl_module.sample(sampler=self.sampler, steps=self.steps, seed=self.seed, cond=cond, progress=False)
        images, nrow = translation_grid(cond, out, target)
        return self.logged(trainer, save_grid(images, path, nrow=nrow))

    @staticmethod
    def logged(trainer: L.Trainer, path: Path) -> Path:
        """The grid also goes to every logger that takes images (W&B, MLflow, TensorBoard: trackers.py)."""
        log_image(trainer, "samples", path, trainer.global_step)
        return path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not isinstance(pl_module, DiffusionModule):  # an autoencoder: ExportWeights writes its reconstructions
            return
        step = trainer.global_step
        if (self.every_n_steps > 0 and step > 0 and step % self.every_n_steps == 0
                and step != getattr(self, "_last", -1)):
            self._last = step
            self.write(trainer, pl_module)


class SaveOnSignal(L.Callback):
    """Ctrl-C (SIGINT) or SIGTERM (what SLURM and Kubernetes send before a kill) during fit: the step in progress
    finishes, checkpoints/last.ckpt is written (atomically, as every checkpoint) and fit ends, with a line saying
    how to resume; a second Ctrl-C stops at once. Under DDP the ranks agree every `ddp_every` steps (a collective
    there, none in between), so every rank stops at the same step."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, ddp_every: int = 10):
        self.ddp_every = ddp_every
        self.received: Optional[int] = None  # the signal's number, once one arrived
        self._previous: dict = {}

    def on_train_start(self, trainer, pl_module) -> None:
        if threading.current_thread() is not threading.main_thread():  # handlers can only be set there
            return
        for s in self.SIGNALS:
            self._previous[s] = signal.signal(s, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.received is not None and signum == signal.SIGINT:  # the second Ctrl-C: stop now
            self._restore()
            raise KeyboardInterrupt
        self.received = signum
        print(f"\n{signal.Signals(signum).name}: finishing this step, then saving last.ckpt (Ctrl-C again to stop "
              "at once, without saving)", flush=True)

    def _restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        stop = self.received is not None
        if trainer.world_size > 1:
            if trainer.global_step % self.ddp_every:
                return
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)  # any rank's signal stops them all
        if not stop:
            return
        cb = trainer.checkpoint_callback
        path = (Path(cb.dirpath) if cb is not None else run_dir(trainer) / "checkpoints") / "last.ckpt"
        if cb is not None:  # ModelCheckpoint's save_last at the epoch's end would write last-v1.ckpt from a state
            cb.last_model_path = str(path)  # that counts the epoch as done; it now knows this step is saved (also
            cb._last_global_step_saved = trainer.global_step  # in the checkpoint: a resumed run's last.ckpt stays)
        trainer.save_checkpoint(path)  # at the step's end, as the periodic ones: a resume repeats the rest exactly
        trainer.should_stop = True
        if trainer.is_global_zero:
            name = signal.Signals(self.received).name if self.received else "a signal on another rank"
            print(f"dff: stopped by {name} at step {trainer.global_step}: saved {path}; resume with the same "
                  "command and --ckpt_path last", flush=True)

    def on_exception(self, trainer, pl_module, exception) -> None:
        """A data file lost during training (data.on_bad_file: stop) stops the run after its last whole step: that
        step is saved as last.ckpt, so the run resumes from it once the file is back (one process; under DDP the
        periodic checkpoints are what is there)."""
        from ..data.folder import UnreadableFile

        if not isinstance(exception, UnreadableFile) or trainer.world_size > 1 or trainer.global_step == 0:
            return
        cb = trainer.checkpoint_callback
        path = (Path(cb.dirpath) if cb is not None else run_dir(trainer) / "checkpoints") / "last.ckpt"
        trainer.save_checkpoint(path)
        print(f"dff: a data file could not be read at step {trainer.global_step}: saved {path}; resume with the "
              "same command and --ckpt_path last", flush=True)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._restore()


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


class RunReport(L.Callback):
    """<run>/report.html (report.py), rewritten at each checkpoint, at the end of fit and when fit stops
    on an error; the time spent is kept in the checkpoints, so a resumed run reports its whole time."""

    def __init__(self):
        self.elapsed, self._t0 = 0.0, None  # seconds of fit before this session, and this session's start
        self.last: Optional[tuple[Path, str, dict]] = None  # the last report written: (run, status, info)

    def state_dict(self) -> dict:
        return {"elapsed": self.spent()}

    def load_state_dict(self, state_dict: dict) -> None:
        self.elapsed = float(state_dict.get("elapsed", 0.0))

    def spent(self) -> float:
        return self.elapsed + (time.time() - self._t0 if self._t0 is not None else 0.0)

    def on_fit_start(self, trainer, pl_module) -> None:
        self._t0 = time.time()

    def info(self, trainer: L.Trainer, pl_module) -> dict[str, str]:
        step, spent = trainer.global_step, self.spent()
        max_steps = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        rows = {"steps": f"{step}" + (f" of {max_steps}" if max_steps else ""),
                "time spent": f"{spent / 60:.1f} min" + (f" ({step / spent:.2f} steps/s)"
                                                         if spent > 0 and step else ""),
                "model": type(pl_module).__name__,
                "parameters": f"{sum(p.numel() for p in pl_module.parameters() if p.requires_grad) / 1e6:.2f} "
                              "M trained"}
        h = pl_module.hparams
        if isinstance(pl_module, DiffusionModule):
            rows["image"] = f"{h.image_size}x{h.image_size}, {h.channels} channel(s)" + (
                f", latent factor {pl_module.latent.factor}" if pl_module.is_latent else "")
            rows["diffusion"] = f"T={h.timesteps}, {h.schedule} schedule, predicts {h.prediction}"
            if pl_module.condition:
                rows["condition"] = str(pl_module.condition)
        rows.update({"precision": str(trainer.precision),
                     "devices": f"{trainer.num_devices} x {type(trainer.accelerator).__name__}",
                     "batch size": str(getattr(getattr(trainer.datamodule, "hparams", None), "batch_size", "?"))})
        rows.update(hardware())
        return rows

    def write(self, trainer: L.Trainer, pl_module, status: str) -> Optional[Path]:
        run = run_dir(trainer)  # a collective under DDP: every rank asks, rank 0 writes
        if not trainer.is_global_zero or trainer.global_step == 0 or not run.is_dir():
            return None
        self.last = (run, status, self.info(trainer, pl_module))
        # the same facts for other readers (`dff push`'s model card)
        (run / "run_info.json").write_text(json.dumps({"status": status, **self.last[2]}, indent=1) + "\n")
        return write_report(run, status=status, info=self.last[2])

    def refresh(self) -> Optional[Path]:
        """Rewrite the last report with what the run folder holds now (the demos add figures after fit)."""
        if self.last is None:
            return None
        run, status, info = self.last
        return write_report(run, status=status, info=info)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self.write(trainer, pl_module, f"running: checkpoint at step {trainer.global_step}")

    def on_train_end(self, trainer, pl_module) -> None:
        report = self.write(trainer, pl_module, f"finished at step {trainer.global_step}")
        curve = loss_png(report.parent / "metrics.csv") if report is not None else None
        if curve is not None:  # the report's loss curve, to the loggers that take images
            log_image(trainer, "loss_curve", curve, trainer.global_step)

    def on_exception(self, trainer, pl_module, exception) -> None:
        # not a collective, unlike trainer.log_dir
        log_dir = trainer.logger.log_dir if trainer.logger is not None else None
        if trainer.is_global_zero and trainer.global_step > 0 and log_dir and Path(log_dir).is_dir():
            write_report(Path(log_dir), status=f"stopped at step {trainer.global_step}: {type(exception).__name__}",
                         info=self.info(trainer, pl_module))
