"""The `dff` command.

    dff fit --config configs/pixel_digits.yaml [--model.lr 2e-4 ...]   train (Lightning's CLI: any key overridable)
    dff sample RUN_OR_WEIGHTS --num 64 --sampler ddim --steps 50 --seed 0 --out DIR
    dff demo                                                          train the digits demo, write figures
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import time
import warnings
from pathlib import Path
from typing import Optional, Sequence

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger

from .callbacks import ExportWeights, SampleGrid, run_dir
from .data import ImageDataModule
from .data.datamodule import condition_channels, condition_kind
from .module import DiffusionModule

CONFIG_DIR = Path(__file__).parent / "configs"


# ====================================================================== fit
class DffCLI(LightningCLI):
    """LightningCLI with the data's size and channels linked into the model, periodic checkpoints,
    sample grids and exported weights; logs (CSV, and TensorBoard when installed) go to
    trainer.default_root_dir/version_N."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.image_size", "model.image_size")
        parser.link_arguments("data.channels", "model.channels")
        parser.link_arguments(("data.pairs", "data.channels", "data.cond_image_channels"), "model.cond_channels",
                              compute_fn=condition_channels)
        parser.link_arguments("data.pairs", "model.condition", compute_fn=condition_kind)
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.every_n_train_steps": 1000,
                             "checkpoint.save_top_k": -1, "checkpoint.filename": "step_{step:06d}",
                             "checkpoint.auto_insert_metric_name": False})
        parser.add_lightning_class_args(SampleGrid, "samples")

    def instantiate_trainer(self, **kwargs):
        cfg = self._get(self.config_init, "trainer", default={})
        if cfg.get("logger") in (None, True):
            root = cfg.get("default_root_dir") or "runs"
            csv_logger = CSVLogger(root, name="")
            loggers = [csv_logger]
            if importlib.util.find_spec("tensorboard") is not None:
                from lightning.pytorch.loggers import TensorBoardLogger
                loggers.append(TensorBoardLogger(root, name="", version=csv_logger.version))
            kwargs["logger"] = loggers
        return super().instantiate_trainer(**kwargs)


def fit(argv: Sequence[str], run: bool = True) -> DffCLI:
    """Run `fit` through Lightning's CLI with the given arguments (after the word 'fit')."""
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    # the EMA copy of the network stays in eval mode on purpose
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    return DffCLI(
        DiffusionModule, ImageDataModule,
        args=["fit", *argv] if run else list(argv),
        run=run,
        trainer_defaults={"default_root_dir": "runs", "callbacks": [ExportWeights()]},
        save_config_kwargs={"overwrite": False},
        seed_everything_default=0,
        parser_kwargs={"prog": "dff", "description": "Train a diffusion model (Lightning's CLI)."},
    )


# ====================================================================== sample
def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def check_out_dir(out: Path, overwrite: bool) -> None:
    """Refuse to write into a folder that already holds files, unless asked to."""
    if out.exists() and not out.is_dir():
        raise SystemExit(f"dff: --out {out} is a file; expected a folder")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise SystemExit(f"dff: output folder {out} already holds files; choose another --out or pass --overwrite")


def sample_command(args: argparse.Namespace) -> list[Path]:
    from .pretrained import load_pretrained
    from .viz import save_grid, save_images

    out = Path(args.out)
    check_out_dir(out, args.overwrite)
    try:
        model = load_pretrained(args.weights, pick_device(args.device))
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"dff: {e}")
    g = torch.Generator().manual_seed(args.seed)
    images = []
    for start in range(0, args.num, args.batch_size):
        n = min(args.batch_size, args.num - start)
        try:
            images.append(model.sample(n, args.sampler, args.steps, args.eta, args.spacing, generator=g,
                                       progress=not args.no_progress).cpu())
        except ValueError as e:
            raise SystemExit(f"dff: {e}")
    x = torch.cat(images)  # (num, C, H, W)
    paths = save_images(x, out, [f"sample_{i:04d}" for i in range(len(x))])
    grid = save_grid(x, out / "grid.png")
    print(f"wrote {len(paths)} samples and {grid}")
    return paths


# ====================================================================== demo
def demo_command(args: argparse.Namespace) -> Path:
    """Train the digits config, then write samples, a denoising trajectory and the loss curve."""
    from .viz import plot_loss, plot_trajectory, save_grid

    t0 = time.time()
    overrides = ["--config", str(CONFIG_DIR / "pixel_digits.yaml"), "--trainer.default_root_dir", args.out]
    if args.max_steps is not None:
        overrides += ["--trainer.max_steps", str(args.max_steps)]
    cli = fit(overrides)
    model, out = cli.model.eval(), run_dir(cli.trainer)
    print(f"trained in {time.time() - t0:.0f} s")

    x = model.sample(64, "ddim", 50, seed=0)
    save_grid(x, out / "samples.png", nrow=8)

    states = []  # (t, x_t in [0, 1]) at 9 points of a 50-step DDIM run
    keep = {0, 5, 10, 20, 30, 40, 45, 48, 49}
    def record(s: dict) -> None:
        if s["i"] in keep:
            states.append((s["t"], ((s["x_t"] + 1) / 2).cpu()))
    g = torch.Generator().manual_seed(1)
    x_T = torch.randn(6, model.hparams.channels, model.hparams.image_size, model.hparams.image_size, generator=g)
    states.append((model.hparams.timesteps, ((x_T + 1) / 2)))
    from .diffusion import ddim
    ddim(model.ema, model.diffusion, x_T, steps=50, clip_x0=True, progress=False, callback=record)
    plot_trajectory(states, out / "trajectory.png")
    plot_loss(out / "metrics.csv", out / "loss.png")
    print(f"demo finished in {time.time() - t0:.0f} s; results in {out}:")
    for name in ("samples.png", "trajectory.png", "loss.png", "export/model.safetensors", "export/config.json"):
        print(f"  {out / name}")
    return out


# ====================================================================== main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dff", description="DiffusionFastForward: train and sample diffusion models.")
    sub = p.add_subparsers(dest="command", metavar="{fit,sample,demo}")
    sub.add_parser("fit", help="train a model from a YAML config (dff fit --help for all keys)", add_help=False)

    s = sub.add_parser("sample", help="generate images from exported weights, a run folder or a checkpoint")
    s.add_argument("weights", help="run folder, export folder, model.safetensors or .ckpt")
    s.add_argument("--num", type=int, default=64, help="number of images (default 64)")
    s.add_argument("--sampler", default="ddim", help="ddpm or ddim (default ddim)")
    s.add_argument("--steps", type=int, default=None, help="DDIM steps (default 50); DDPM always takes all T")
    s.add_argument("--eta", type=float, default=0.0, help="DDIM eta in [0, 1] (default 0)")
    s.add_argument("--spacing", default="leading", help="DDIM timestep spacing: leading or trailing")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--batch-size", type=int, default=64)
    s.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    s.add_argument("--out", default="samples", help="output folder (default ./samples)")
    s.add_argument("--overwrite", action="store_true", help="allow writing into a folder that holds files")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")

    d = sub.add_parser("demo", help="train on the built-in digits for a few minutes and write figures")
    d.add_argument("--out", default="runs/demo", help="root folder of the run (a new version_N inside)")
    d.add_argument("--max-steps", type=int, default=None, help="training steps (default: the config's)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "fit":
        fit(argv[1:])
        return
    args = build_parser().parse_args(argv)
    if args.command == "sample":
        sample_command(args)
    elif args.command == "demo":
        demo_command(args)
    else:
        build_parser().print_help()


if __name__ == "__main__":
    main()
