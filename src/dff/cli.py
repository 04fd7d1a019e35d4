"""The `dff` command.

    dff fit --config configs/pixel_digits.yaml [--model.lr 2e-4 ...]   train (Lightning's CLI: any key overridable)
    dff sample RUN_OR_WEIGHTS --num 64 --sampler ddim --steps 50 --seed 0 --out DIR
    dff translate RUN_OR_WEIGHTS --input FILE_OR_DIR --out DIR [--num-samples K]   image-to-image
    dff eval RUN_OR_WEIGHTS --data DIR|photos                          PSNR/SSIM of translations on pairs
    dff eval AUTOENCODER_RUN --data DIR|textures                       reconstruction PSNR/SSIM
    dff data download NAME [--dir data]                               a pix2pix archive (maps, facades, ...)
    dff demo [latent]                                                 train a demo (digits; or latent), write figures
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import time
import warnings
from pathlib import Path
from typing import Optional, Sequence

import lightning as L
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

    autoencoder_mode = False  # model: class_path: ... (an AutoencoderModule) instead of DiffusionModule's keys

    def add_arguments_to_parser(self, parser) -> None:
        m = "model.init_args." if self.autoencoder_mode else "model."
        parser.link_arguments("data.image_size", m + "image_size")
        parser.link_arguments("data.channels", m + "channels")
        if not self.autoencoder_mode:
            parser.link_arguments(("data.pairs", "data.channels", "data.cond_image_channels"), "model.cond_channels",
                                  compute_fn=condition_channels)
            parser.link_arguments("data.pairs", "model.condition", compute_fn=condition_kind)
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.every_n_train_steps": 1000,
                             "checkpoint.save_top_k": -1, "checkpoint.filename": "step_{step:06d}",
                             "checkpoint.auto_insert_metric_name": False})
        parser.add_lightning_class_args(SampleGrid, "samples")

    clean_errors = False  # the command line: a bad setting ends with "dff: message", not a traceback

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except (ValueError, FileNotFoundError) as e:  # the model's and data's own checks of their settings
            if not self.clean_errors:
                raise
            raise SystemExit(f"dff: {e}") from None

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


def config_model_class_path(argv: Sequence[str]) -> Optional[str]:
    """The `model.class_path` of the --config files in argv, if any (autoencoder configs name one)."""
    import yaml

    paths = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--config"]
    paths += [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    found = None
    for path in paths:
        try:
            cfg = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError):
            continue  # LightningCLI reports unreadable configs itself
        model = cfg.get("model") if isinstance(cfg, dict) else None
        if isinstance(model, dict) and "class_path" in model:
            found = model["class_path"]
    return found


def fit(argv: Sequence[str], run: bool = True, clean_errors: bool = False) -> DffCLI:
    """Run `fit` through Lightning's CLI with the given arguments (after the word 'fit'). A config
    whose model section names a class_path (configs/autoencoder_*.yaml) trains that LightningModule;
    otherwise the keys of model: are DiffusionModule's arguments."""
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    # the EMA copy of the network stays in eval mode on purpose
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    subclass = config_model_class_path(argv) is not None
    cli_class = type("DffFitCLI", (DffCLI,), {"autoencoder_mode": subclass, "clean_errors": clean_errors})
    return cli_class(
        L.LightningModule if subclass else DiffusionModule, ImageDataModule,
        subclass_mode_model=subclass,
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


def load_model(weights: str, device: str):
    from .pretrained import load_pretrained

    try:
        return load_pretrained(weights, pick_device(device))
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"dff: {e}")


def sample_command(args: argparse.Namespace) -> list[Path]:
    from .viz import save_grid, save_images

    out = Path(args.out)
    check_out_dir(out, args.overwrite)
    model = load_model(args.weights, args.device)
    g = torch.Generator().manual_seed(args.seed)
    images = []
    for start in range(0, args.num, args.batch_size):
        n = min(args.batch_size, args.num - start)
        try:
            images.append(model.sample(n, args.sampler, args.steps, args.eta, args.spacing, generator=g,
                                       labels=args.class_, guidance=args.guidance,
                                       progress=not args.no_progress).cpu())
        except ValueError as e:
            raise SystemExit(f"dff: {e}")
    x = torch.cat(images)  # (num, C, H, W)
    paths = save_images(x, out, [f"sample_{i:04d}" for i in range(len(x))])
    grid = save_grid(x, out / "grid.png")
    print(f"wrote {len(paths)} samples and {grid}")
    return paths


# ====================================================================== translate / eval / data
def translate_command(args: argparse.Namespace) -> list[Path]:
    from .translate import translate_files

    out = Path(args.out)
    check_out_dir(out, args.overwrite)
    model = load_model(args.weights, args.device)
    try:
        paths = translate_files(model, args.input, out, args.num_samples, args.sampler, args.steps, args.eta,
                                args.seed, args.mask, args.resize, not args.no_progress, args.average)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"dff: {e}")
    print(f"wrote {len(paths)} output(s) to {out}")
    return paths


def generation_scores(model, args: argparse.Namespace) -> dict:
    """FID/KID of `args.num` generated images against a reference set (digits or a folder)."""
    from .data import load_digits_tensor
    from .evaluation import evaluate_generation, load_image_folder

    h = model.hparams
    if args.data == "digits":
        reference = load_digits_tensor(h.image_size, h.channels)[0]
    else:
        reference = load_image_folder(args.data, h.channels, h.image_size)
    num = args.num or 1000
    g = torch.Generator().manual_seed(args.seed)
    samples = torch.cat([model.sample(min(args.batch_size, num - i), args.sampler, args.steps, generator=g,
                                      progress=False).cpu() for i in range(0, num, args.batch_size)])
    res = evaluate_generation(samples, reference, args.extractor, args.extractor_weights)
    res.update(sampler=args.sampler, steps=args.steps, data=args.data, extractor=args.extractor)
    return res


def is_autoencoder_only(path: str) -> bool:
    """A folder that holds an AutoencoderKL (diffusers' format, or a dff autoencoder run) and no
    diffusion weights."""
    from .autoencoders import find_autoencoder_dir
    from .pretrained import WEIGHTS

    p = Path(path)
    return p.is_dir() and find_autoencoder_dir(p) is not None and not any(p.glob(f"**/{WEIGHTS}"))


def autoencoder_scores(args: argparse.Namespace, alone: bool) -> dict:
    """Reconstruction PSNR/SSIM on --data of an autoencoder folder/run (alone) or of a latent model's."""
    import json

    from .autoencoders import find_autoencoder_dir, load_autoencoder
    from .evaluation.reconstruction import evaluate_autoencoder, reconstruction_images

    if alone:
        folder = find_autoencoder_dir(Path(args.weights))
        channels = json.loads((folder / "config.json").read_text())["in_channels"]
        ae, size = load_autoencoder(str(folder), channels), args.image_size or 256
    else:
        model = load_model(args.weights, args.device)
        if not model.is_latent:
            raise ValueError("--autoencoder: this is a pixel-space model, it has no autoencoder")
        ae, channels, size = model.autoencoder, model.hparams.channels, args.image_size or model.hparams.image_size
    ae = ae.to(pick_device(args.device))
    images = reconstruction_images(args.data, channels, size)
    if args.num:
        images = images[:args.num]
    res = evaluate_autoencoder(ae, images, args.batch_size)
    res.update(data=args.data, image_size=size, autoencoder=getattr(ae, "source", ""))
    return res


def eval_command(args: argparse.Namespace) -> dict:
    from .translate import evaluate, write_json

    try:
        alone = is_autoencoder_only(args.weights)
        if args.autoencoder or alone:
            res = autoencoder_scores(args, alone)
        else:
            model = load_model(args.weights, args.device)
            if model.hparams.condition == "none":
                res = generation_scores(model, args)
            else:
                res = evaluate(model, args.data, args.layout, args.direction, args.num, args.steps, args.batch_size,
                               args.seed, average=args.average or 1)
    except (FileNotFoundError, ValueError, ModuleNotFoundError) as e:
        raise SystemExit(f"dff: {e}")
    for k, v in res.items():
        print(f"{k:18s} {v:.4f}" if isinstance(v, float) else f"{k:18s} {v}")
    if args.json:
        write_json(res, args.json)
    return res


def data_command(args: argparse.Namespace) -> Path:
    from .data.download import PIX2PIX, download

    if args.action == "list" or args.name is None:
        for name, desc in PIX2PIX.items():
            print(f"{name:16s} {desc}")
        return Path(args.dir)
    try:
        path = download(args.name, args.dir, args.base_url, args.sha256, progress=not args.no_progress)
    except (ValueError, FileExistsError, ConnectionError) as e:
        raise SystemExit(f"dff: {e}")
    print(f"extracted {args.name} to {path}")
    return path


# ====================================================================== demo
def demo_command(args: argparse.Namespace) -> Path:
    """Train the digits config, then write samples, a denoising trajectory and the loss curve."""
    from .viz import plot_loss, plot_trajectory, save_grid

    if args.which == "latent":
        return latent_demo(args)
    t0 = time.time()
    args.out = args.out or "runs/demo"
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


def latent_demo(args: argparse.Namespace) -> Path:
    """Train the demo autoencoder on the textures, then a latent model in its latent space;
    write samples next to real patches and the autoencoder's reconstruction scores."""
    from .data.builtin import PhotoPatches
    from .evaluation.reconstruction import evaluate_autoencoder, reconstruction_images
    from .viz import save_grid

    t0 = time.time()
    root = Path(args.out or "runs/latent_demo")
    ae_args = ["--config", str(CONFIG_DIR / "autoencoder_demo.yaml"), "--trainer.default_root_dir", str(root / "autoencoder")]
    if args.autoencoder_steps is not None:
        ae_args += ["--trainer.max_steps", str(args.autoencoder_steps)]
    ae_run = run_dir(fit(ae_args).trainer)
    t_ae = time.time() - t0
    print(f"autoencoder trained in {t_ae:.0f} s: {ae_run}")
    lat_args = ["--config", str(CONFIG_DIR / "latent_demo.yaml"), "--model.autoencoder", str(ae_run),
                "--data.latent_cache", str(root / f"latents_{ae_run.name}.pt"),
                "--trainer.default_root_dir", str(root / "diffusion")]
    if args.max_steps is not None:
        lat_args += ["--trainer.max_steps", str(args.max_steps)]
    cli = fit(lat_args)
    model, out = cli.model.eval(), run_dir(cli.trainer)
    t_train = time.time() - t0
    print(f"latent model trained in {t_train - t_ae:.0f} s ({t_train:.0f} s in total)")

    h = model.hparams
    save_grid(model.sample(16, "ddim", 50, seed=0), out / "samples.png", nrow=4)
    real = PhotoPatches("train", h.image_size, h.channels, repeat=16, seed=0, source="textures")
    save_grid(torch.stack([real[i]["image"] for i in range(16)]), out / "real.png", nrow=4)
    scores = evaluate_autoencoder(model.autoencoder, reconstruction_images("textures", h.channels, h.image_size))
    print(f"autoencoder on the held-out texture patches ({scores['n']} of {h.image_size}x{h.image_size}): "
          f"PSNR {scores['psnr']:.2f} dB, SSIM {scores['ssim']:.3f}; latent scale {float(model.scale):.4f}")
    print(f"latent demo finished in {time.time() - t0:.0f} s; results:")
    for p in (ae_run / "reconstructions.png", out / "samples.png", out / "real.png", out / "export"):
        print(f"  {p}")
    return out


# ====================================================================== main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dff", description="DiffusionFastForward: train and sample diffusion models.")
    sub = p.add_subparsers(dest="command", metavar="{fit,sample,translate,eval,data,demo}")
    sub.add_parser("fit", help="train a model from a YAML config (dff fit --help for all keys)", add_help=False)

    s = sub.add_parser("sample", help="generate images from exported weights, a run folder or a checkpoint")
    s.add_argument("weights", help="run folder, export folder, model.safetensors or .ckpt")
    s.add_argument("--num", type=int, default=64, help="number of images (default 64)")
    s.add_argument("--sampler", default="ddim", help="ddpm, ddim, dpmpp_2m, euler or heun (default ddim)")
    s.add_argument("--steps", type=int, default=None, help="sampling steps (DDIM default 50, dpmpp_2m/euler/heun 20); DDPM always takes all T")
    s.add_argument("--eta", type=float, default=0.0, help="DDIM eta in [0, 1] (default 0)")
    s.add_argument("--spacing", default="leading", help="DDIM timestep spacing: leading or trailing")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--class", dest="class_", type=int, default=None,
                   help="class-conditional models: generate this class (default: unconditional)")
    s.add_argument("--guidance", type=float, default=2.0,
                   help="classifier-free guidance scale with --class: 0 unconditional, 1 conditional, >1 sharper")
    s.add_argument("--batch-size", type=int, default=64)
    s.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    s.add_argument("--out", default="samples", help="output folder (default ./samples)")
    s.add_argument("--overwrite", action="store_true", help="allow writing into a folder that holds files")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")

    t = sub.add_parser("translate", help="image-to-image: translate files with a conditional model")
    t.add_argument("weights", help="run folder, export folder, model.safetensors or .ckpt")
    t.add_argument("--input", required=True, help="an image file or a folder of images (searched recursively)")
    t.add_argument("--out", default="translations", help="output folder; names follow the inputs")
    t.add_argument("--num-samples", type=int, default=1, help="outputs per input (NAME_k.png when > 1)")
    t.add_argument("--sampler", default="ddim", help="ddpm, ddim, dpmpp_2m, euler or heun (default ddim)")
    t.add_argument("--steps", type=int, default=None, help="DDIM steps (default 50)")
    t.add_argument("--eta", type=float, default=0.0)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--mask", default=None, help="inpainting models: mask image, white = region to fill")
    t.add_argument("--resize", action="store_true",
                   help="resize each input to the training size (default: process it whole at its own size)")
    t.add_argument("--average", action="store_true",
                   help="write one output per input: the mean of its --num-samples samples (the posterior-mean "
                        "estimate: higher PSNR/SSIM, less detail)")
    t.add_argument("--device", default="auto")
    t.add_argument("--overwrite", action="store_true", help="allow writing into a folder that holds files")
    t.add_argument("--no-progress", action="store_true")

    e = sub.add_parser("eval", help="FID/KID of generated images (unconditional models), PSNR/SSIM of "
                                    "translations on paired data (conditional models), or of an autoencoder's "
                                    "reconstructions")
    e.add_argument("weights", help="run folder, export folder, model.safetensors or .ckpt")
    e.add_argument("--data", required=True,
                   help="reference images: 'digits' or a folder (FID/KID); 'photos' (held-out photo patches), "
                        "a folder of images (task models) or a pair folder (PSNR/SSIM)")
    e.add_argument("--extractor", default="digits",
                   help="FID/KID features: digits (offline CNN), inception (needs torch-fidelity) or module:factory")
    e.add_argument("--extractor-weights", default=None, help="local weights file of the extractor")
    e.add_argument("--sampler", default="ddim", help="sampler of the generated images (FID/KID)")
    e.add_argument("--layout", default="side_by_side", help="pair folders: side_by_side or folders (A/, B/)")
    e.add_argument("--direction", default="AtoB", help="pair folders: AtoB or BtoA")
    e.add_argument("--num", type=int, default=None,
                   help="generated images for FID/KID (default 1000); or score the first N pairs (default all)")
    e.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50)")
    e.add_argument("--batch-size", type=int, default=32)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--device", default="auto")
    e.add_argument("--json", default=None, help="also write the scores to this JSON file")
    e.add_argument("--average", type=int, default=None,
                   help="translation models: score the mean of K samples per input (posterior-mean estimate)")
    e.add_argument("--autoencoder", action="store_true",
                   help="score the autoencoder's reconstructions (PSNR/SSIM) instead: a latent model's, or give "
                        "an autoencoder folder/run (then this is automatic); --data textures|photos|FOLDER")
    e.add_argument("--image-size", type=int, default=None,
                   help="--autoencoder: side of the evaluated crops (default: the model's size, or 256)")

    a = sub.add_parser("data", help="download a public data set: dff data download maps --dir data")
    a.add_argument("action", choices=["download", "list"])
    a.add_argument("name", nargs="?", default=None, help="pix2pix archive: facades, cityscapes, maps, edges2shoes, ...")
    a.add_argument("--dir", default="data", help="destination folder (default ./data); the set lands in DIR/NAME")
    a.add_argument("--base-url", default=None, help="mirror of the pix2pix server (default: the authors' server)")
    a.add_argument("--sha256", default=None, help="expected SHA-256 of the archive, verified when given")
    a.add_argument("--no-progress", action="store_true")

    d = sub.add_parser("demo", help="train on built-in data for a few minutes and write figures")
    d.add_argument("which", nargs="?", default="digits", choices=["digits", "latent"],
                   help="digits: pixel diffusion on the digits (default); latent: an autoencoder then latent "
                        "diffusion on 128x128 texture patches")
    d.add_argument("--out", default=None, help="root folder of the runs (default runs/demo or runs/latent_demo)")
    d.add_argument("--max-steps", type=int, default=None, help="training steps of the diffusion model (default: the config's)")
    d.add_argument("--autoencoder-steps", type=int, default=None, help="latent demo: autoencoder training steps")
    return p


def main(argv: Optional[Sequence[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "fit":
        fit(argv[1:], clean_errors=True)
        return
    args = build_parser().parse_args(argv)
    if args.command == "sample":
        sample_command(args)
    elif args.command == "translate":
        translate_command(args)
    elif args.command == "eval":
        eval_command(args)
    elif args.command == "data":
        data_command(args)
    elif args.command == "demo":
        demo_command(args)
    else:
        build_parser().print_help()


if __name__ == "__main__":
    main()
