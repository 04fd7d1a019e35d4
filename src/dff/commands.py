"""What each `dff` sub-command does, once cli.py has parsed its arguments: one function per command, each
calling the library (models, tools, training, evaluation); user errors leave as SystemExit("dff: ...")."""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Optional, Sequence

import torch

from . import files
from .data.stream import draw_seed
from .diffusion import default_steps
from .training.fit import fit


# ====================================================================== sample
def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def check_out_dir(out: Path, overwrite: bool) -> None:
    """files.check_out_dir, as a one-line command-line error."""
    try:
        files.check_out_dir(out, overwrite)
    except ValueError as e:
        raise SystemExit(f"dff: {e}") from None


def load_model(weights: str, device: str):
    from .models.pretrained import load_pretrained

    try:
        return load_pretrained(weights, pick_device(device))
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"dff: {e}")


def check_positive(**values: Optional[int]) -> None:
    """Counts given on the command line are at least 1 (None: not given)."""
    for name, v in values.items():
        if v is not None and v < 1:
            raise SystemExit(f"dff: --{name.replace('_', '-')} must be at least 1, got {v}")


GRID_MAX = 64  # images in grid.png, whatever --num
MANIFEST = "samples.json"  # what a `dff sample` folder was drawn with, and how far it got


def sample_command(args: argparse.Namespace) -> list[Path]:
    """`dff sample`: batches drawn and written one at a time (batch k from its own seed), under one progress bar; a
    folder that holds an interrupted run of the same settings (samples.json) is continued, not refused."""
    import json

    from tqdm import tqdm

    from .viz import save_grid, save_images
    from .viz.images import parse_bands, preview

    check_positive(num=args.num, batch_size=args.batch_size, steps=args.steps)
    out = Path(args.out)
    settings = {"weights": str(args.weights), "sampler": args.sampler, "steps": args.steps, "eta": args.eta,
                "spacing": args.spacing, "seed": args.seed, "class": args.class_, "guidance": args.guidance,
                "guidance_interval": list(args.guidance_interval), "batch_size": args.batch_size,
                "format": args.format, "preview_bands": args.preview_bands, "precision": args.precision}
    done, width = 0, max(4, len(str(args.num - 1)))
    manifest = out / MANIFEST
    if args.overwrite and out.is_dir():  # the files an earlier `dff sample` wrote go; nothing else is touched
        for f in [*out.glob("sample_*"), out / "grid.png", manifest]:
            if f.is_file():
                f.unlink()
    elif manifest.is_file():
        try:
            saved = json.loads(manifest.read_text())
        except (ValueError, OSError):
            saved = {}
        if saved.get("settings") == settings:  # the same run, interrupted or shorter: go on from where it stopped
            done, width = min(int(saved.get("done", 0)), args.num), int(saved.get("width", width))
    if not done:
        check_out_dir(out, args.overwrite)
    model = load_model(args.weights, args.device)
    try:
        bands = parse_bands(args.preview_bands)
    except ValueError as e:
        raise SystemExit(f"dff: {e}")
    out.mkdir(parents=True, exist_ok=True)
    written, grid = [], []
    bar = tqdm(total=args.num, initial=done, unit="image", desc="dff sample", disable=args.no_progress)
    for k, start in enumerate(range(0, args.num, args.batch_size)):
        n = min(args.batch_size, args.num - start)
        if start + n <= done and start >= GRID_MAX:
            continue  # written by the earlier run, and not needed for the grid
        g = torch.Generator().manual_seed(args.seed if k == 0 else draw_seed(args.seed, k))  # batch k's own noise
        try:
            x = model.sample(n, args.sampler, steps=args.steps, eta=args.eta, spacing=args.spacing, generator=g,
                             labels=args.class_, guidance=args.guidance, guidance_interval=args.guidance_interval,
                             progress=False, precision=args.precision).cpu()  # (n, C, H, W) in [0, 1]
            shown = preview(x, bands)
        except ValueError as e:
            raise SystemExit(f"dff: {e}")
        grid.append(shown[:max(0, GRID_MAX - start)])
        if start + n > done:
            names = [f"sample_{i:0{width}d}" for i in range(start, start + n)]
            arrays = write_arrays(model, x, out, names, args.format)  # none for PNG output
            pngs = save_images(shown, out, names)  # the samples, or the previews of the arrays
            written += arrays or pngs
            done = start + n
            manifest.write_text(json.dumps({"settings": settings, "done": done, "width": width}, indent=1) + "\n")
            bar.update(n)
    bar.close()
    path = save_grid(torch.cat(grid)[:GRID_MAX], out / "grid.png")
    arrays = [p for p in written if p.suffix != ".png"]
    print(f"wrote {len(written)} samples" + (f" as .{arrays[0].suffix[1:]} in the data's units and PNG previews"
                                            if arrays else "") + f" ({done} in {out} in all), and {path}")
    return written


def write_arrays(model, x: torch.Tensor, out: Path, names: list[str], fmt: str) -> list[Path]:
    """--format: each sample as a file in the training data's units and dtype (auto: for models of array data, in
    their format); none for png. A model of images writes uint8 arrays."""
    from dataclasses import replace

    from .data.arrays import DataRange, write_array

    units = model.units
    if fmt == "png" or (fmt == "auto" and units is None):
        return []
    if units is None:  # an image model: 8-bit values
        units = DataRange((0.0,) * x.shape[1], (255.0,) * x.shape[1], "uint8", fmt)
    elif fmt != "auto":
        units = replace(units, format=fmt)
    return [write_array(img, out / name, units) for img, name in zip(x, names)]


# ====================================================================== translate / eval / data
def translate_command(args: argparse.Namespace) -> list[Path]:
    from .tools.translate import translate_files

    check_positive(num_samples=args.num_samples, steps=args.steps)
    out = Path(args.out)
    check_out_dir(out, args.overwrite)
    model = load_model(args.weights, args.device)
    try:
        paths = translate_files(model, args.input, out, num_samples=args.num_samples, sampler=args.sampler,
                                steps=args.steps, eta=args.eta, seed=args.seed, mask=args.mask, resize=args.resize,
                                progress=not args.no_progress, average=args.average)
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
    elif model.units is not None:  # array data: the training bands, by the training data's range (centre crops)
        from .data.shards import folder_class

        folder = folder_class(args.data, arrays=True)(args.data, h.image_size, h.channels, data_range=model.units,
                                                      bands=model.units.bands, crop="center", hflip=False, vflip=False)
        reference = torch.stack([folder[i]["image"] for i in range(len(folder))])  # (N, C, H, W) in [0, 1]
    else:
        reference = load_image_folder(args.data, h.channels, h.image_size)
    num = args.num or 1000
    g = torch.Generator().manual_seed(args.seed)
    samples = torch.cat([model.sample(min(args.batch_size, num - i), args.sampler, steps=args.steps, generator=g,
                                      progress=False, precision=args.precision).cpu()
                         for i in range(0, num, args.batch_size)])
    res = evaluate_generation(samples, reference, args.extractor, weights=args.extractor_weights)
    steps = default_steps(args.sampler) if args.steps is None else args.steps
    res.update(sampler=args.sampler, steps=steps or model.hparams.timesteps, data=args.data, extractor=args.extractor,
               precision=args.precision)
    return res


def is_autoencoder_only(path: str) -> bool:
    """A folder that holds an AutoencoderKL (diffusers' format, or a dff autoencoder run) and no
    diffusion weights, or the `dff:` name of an autoencoder shipped in the package."""
    from .models.autoencoders import find_autoencoder_dir
    from .models.pretrained import WEIGHTS

    if path.startswith("dff:"):
        return True
    p = Path(path)
    return p.is_dir() and find_autoencoder_dir(p) is not None and not any(p.glob(f"**/{WEIGHTS}"))


def autoencoder_scores(args: argparse.Namespace, alone: bool) -> dict:
    """Reconstruction PSNR/SSIM on --data of an autoencoder folder/run (alone) or of a latent model's."""
    import json

    from .models.autoencoders import builtin_autoencoder_dir, find_autoencoder_dir, image_channels, load_autoencoder
    from .evaluation.reconstruction import evaluate_autoencoder, reconstruction_images

    if alone:
        shipped = args.weights.startswith("dff:")
        folder = builtin_autoencoder_dir(args.weights) if shipped else find_autoencoder_dir(Path(args.weights))
        channels = image_channels(json.loads((folder / "config.json").read_text()))
        ae, size = load_autoencoder(args.weights if shipped else str(folder), channels), args.image_size or 256
    else:
        model = load_model(args.weights, args.device)
        if not model.is_latent:
            raise ValueError("--autoencoder: this is a pixel-space model, it has no autoencoder")
        ae, channels = model.latent.autoencoder, model.hparams.channels
        size = args.image_size or model.hparams.image_size
    ae = ae.to(pick_device(args.device))
    images = reconstruction_images(args.data, channels, size)
    if args.num:
        images = images[:args.num]
    res = evaluate_autoencoder(ae, images, args.batch_size)
    res.update(data=args.data, image_size=size, autoencoder=getattr(ae, "source", ""))
    return res


def eval_command(args: argparse.Namespace) -> dict:
    from .tools.translate import evaluate, write_json

    check_positive(num=args.num, batch_size=args.batch_size, steps=args.steps, average=args.average)
    try:
        alone = is_autoencoder_only(args.weights)
        if args.autoencoder or alone:
            res = autoencoder_scores(args, alone)
        else:
            model = load_model(args.weights, args.device)
            if not model.condition:
                res = generation_scores(model, args)
            else:
                res = evaluate(model, args.data, layout=args.layout, direction=args.direction, num=args.num,
                               steps=args.steps, batch_size=args.batch_size, seed=args.seed, average=args.average or 1)
    except (FileNotFoundError, ValueError, ModuleNotFoundError) as e:
        raise SystemExit(f"dff: {e}")
    for k, v in res.items():
        print(f"{k:18s} {v:.4f}" if isinstance(v, float) else f"{k:18s} {v}")
    if args.json:
        write_json(res, args.json)
    return res


def data_command(args: argparse.Namespace) -> Path:
    from .data.download import PIX2PIX, download

    if args.action == "check":
        return check_command(args)
    if args.action == "pack":
        return pack_command(args)
    if args.action == "list" or args.name is None:
        for name, desc in PIX2PIX.items():
            print(f"{name:16s} {desc}")
        return Path(args.dir)
    try:
        path = download(args.name, args.dir, base_url=args.base_url, sha256=args.sha256, progress=not args.no_progress)
    except (ValueError, FileExistsError, ConnectionError) as e:
        raise SystemExit(f"dff: {e}")
    print(f"extracted {args.name} to {path}")
    return path


def pack_command(args: argparse.Namespace) -> Path:
    """dff data pack FOLDER OUT: check every file once, in parallel, and pack them into tar shards."""
    from .data.shards import pack

    if args.name is None or args.target is None:
        raise SystemExit("dff: dff data pack needs the folder and the output: dff data pack FOLDER OUT")
    try:
        meta = pack(args.name, args.target, shard_items=args.shard_items, labels=args.labels, skip_bad=args.skip_bad,
                    workers=args.workers)
    except (FileNotFoundError, NotADirectoryError, ValueError) as e:
        raise SystemExit(f"dff: {e}")
    print(f"packed {meta['items']} item(s) into {meta['shards']} shard(s) in {args.target}: train with "
          f"--data.root {args.target}")
    return Path(args.target)


def check_command(args: argparse.Namespace) -> Path:
    """dff data check PATH: print the report; exit code 1 when a file would stop training."""
    from .data.check import check_folder, report

    if args.name is None:
        raise SystemExit("dff: dff data check needs the folder to check: dff data check PATH")
    try:
        text, stops = report(check_folder(args.name, args.image_size, args.crop, args.pairs))
    except (FileNotFoundError, NotADirectoryError, ValueError) as e:
        raise SystemExit(f"dff: {e}")
    print(text)
    if stops:
        raise SystemExit(1)
    return Path(args.name)


def doctor_command(args: argparse.Namespace) -> list:
    """dff doctor RUN: print each finding; exit code 1 when one is bad."""
    from .tools.doctor import diagnose

    check_positive(num=args.num)
    try:
        findings = diagnose(args.run, num=args.num)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"dff: {e}")
    for f in findings:
        print(f)
    bad = sum(not f.ok for f in findings)
    print(f"{bad} problem(s) found" if bad else "no problem found")
    if bad:
        raise SystemExit(1)
    return findings


# ====================================================================== demo
def demo_command(args: argparse.Namespace) -> Path:
    from .tools.demo import digits_demo, latent_demo

    if args.which == "latent":
        return latent_demo(out=args.out, max_steps=args.max_steps, autoencoder_steps=args.autoencoder_steps,
                           train_autoencoder=args.train_autoencoder)
    return digits_demo(out=args.out, max_steps=args.max_steps)


# ====================================================================== explore
def explore_command(args: argparse.Namespace) -> list[Path]:
    from .tools.explore import explore

    try:
        written = explore(args.out, image=args.image, schedule=args.schedule, timesteps=args.timesteps,
                          size=args.size, run=args.run, seed=args.seed, overwrite=args.overwrite)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"dff explore: {e}")
    for path in written:
        print(path)
    return written


# ====================================================================== posthoc-ema
def posthoc_ema_command(args: argparse.Namespace) -> list[Path]:
    from .training.posthoc_ema import export_posthoc

    try:
        return export_posthoc(Path(args.run), args.sigma_rel, step=args.step, out=args.out)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"dff posthoc-ema: {e}")


def export_command(args: argparse.Namespace) -> Path:
    """`dff export WEIGHTS OUT --format diffusers`: a pipeline folder written whole (or not at all)."""
    from .files import atomic_folder
    from .models.to_diffusers import export_diffusers

    out = Path(args.out)
    check_out_dir(out, args.overwrite)
    model = load_model(args.weights, "cpu")
    try:
        with atomic_folder(out) as tmp:
            export_diffusers(model, tmp, args.scheduler)
    except ValueError as e:
        raise SystemExit(f"dff export: {e}") from None
    print(f"wrote a diffusers pipeline ({args.scheduler}) to {out}: DiffusionPipeline.from_pretrained({str(out)!r})")
    return out


def push_command(args: argparse.Namespace) -> str:
    """`dff push RUN OWNER/NAME`: the export, its model card (and diffusers pipeline) to the hub."""
    from .tools.push import push

    try:
        url = push(args.weights, args.repo_id, private=args.private, token=args.token, scheduler=args.scheduler)
    except (ValueError, FileNotFoundError, OSError) as e:
        raise SystemExit(f"dff push: {str(e).splitlines()[0]}") from None
    print(f"pushed {args.weights} to {args.repo_id}: {url}")
    return url


# ====================================================================== estimate
def estimate_command(argv: Sequence[str], steps: int = 3):
    """`dff estimate --config FILE [overrides]`: the config parsed as `dff fit` parses it (nothing is trained and no
    run folder is made); `--steps N` timed steps (default 3); `--latent-shape C,F` for an autoencoder on the hub
    that cannot be reached (stand_in_autoencoder); `--memory-gb G` the memory to plan for (default: the device's
    free memory; a batch that would not fit is not run); prints the estimate."""
    argv = list(argv)
    if "--steps" in argv:  # ours, not a key of the config
        i = argv.index("--steps")
        steps = int(argv[i + 1])
        del argv[i:i + 2]
    latent_shape = None
    if "--latent-shape" in argv:  # ours: C,F of an autoencoder that cannot be reached
        i = argv.index("--latent-shape")
        latent_shape = argv[i + 1]
        del argv[i:i + 2]
    memory_gb = None
    if "--memory-gb" in argv:  # ours: the memory to plan for (default: the device's free memory)
        i = argv.index("--memory-gb")
        try:
            memory_gb = float(argv[i + 1])
        except (IndexError, ValueError):
            raise SystemExit("dff estimate: --memory-gb takes a number of GB, e.g. 24") from None
        del argv[i:i + 2]
    if not any(a.startswith("--data.root") for a in argv):
        argv += ["--data.root", "."]  # the data are not read: a config without data.root is estimated too
    with tempfile.TemporaryDirectory() as tmp:
        stand_in = stand_in_autoencoder(argv, latent_shape, Path(tmp))
        if stand_in is not None:
            argv += stand_in
        return estimate_run(argv, steps, stand_in is not None, memory_gb)


def stand_in_autoencoder(argv: list, latent_shape: Optional[str], tmp: Path) -> Optional[list]:
    """The overrides that estimate a latent config whose autoencoder is a hub id neither cached nor reachable: a
    stand-in AutoencoderKL of the same latent shape (known for common hub ids, else --latent-shape C,F), so the
    U-Net, whose cost the estimate is, sees the latents it would see. None when the autoencoder loads."""
    from .models.autoencoders import build_autoencoder_kl, hub_reachable, load_autoencoder
    from .training.fit import configured

    spec = configured(argv, "model.autoencoder")
    if not isinstance(spec, str) or spec in ("", "identity") or Path(spec).expanduser().exists():
        return None
    channels = int(configured(argv, "data.channels", 3))
    try:
        load_autoencoder(spec, channels, local_files_only=True)  # in the hub's cache: the real one is used
        return None
    except ValueError:
        pass
    if latent_shape is None and hub_reachable():
        return None  # fit downloads it
    shape = latent_shape or KNOWN_LATENT_SHAPES.get(spec)
    if shape is None:
        raise SystemExit(f"dff estimate: the autoencoder {spec!r} is not in the hub's cache and the hub cannot be "
                         "reached; give its latent shape, channels and down-sampling factor: --latent-shape 4,8")
    try:
        c, f = (int(v) for v in str(shape).split(","))
        if c < 1 or f < 1 or f & (f - 1):
            raise ValueError
    except ValueError:
        raise SystemExit(f"dff estimate: --latent-shape {shape!r}: expected C,F, latent channels and a power-of-two "
                         "factor, e.g. 4,8") from None
    levels = f.bit_length()  # f = 2^(levels - 1)
    build_autoencoder_kl(channels, latent_channels=c, block_out_channels=(8,) * levels, norm_num_groups=4,
                         mid_attention=False).save_pretrained(tmp / "stand_in")
    print(f"dff estimate: the autoencoder {spec!r} cannot be reached: the U-Net is estimated on a stand-in of its "
          f"latent shape ({c} channels, factor {f}); the autoencoder's own cost is not counted")
    overrides = ["--model.autoencoder", str(tmp / "stand_in")]
    if configured(argv, "model.latent_scale") in (None, "null"):
        overrides += ["--model.latent_scale", "1.0"]  # nothing to estimate it from
    return overrides


# latent channels and down-sampling factor of common autoencoders on the hub
KNOWN_LATENT_SHAPES = {"stabilityai/sd-vae-ft-ema": "4,8", "stabilityai/sd-vae-ft-mse": "4,8",
                       "stabilityai/sdxl-vae": "4,8", "madebyollin/sdxl-vae-fp16-fix": "4,8"}


def estimate_run(argv: list, steps: int, stand_in: bool, memory_gb: Optional[float] = None):
    """dff estimate of a config given as `dff fit` arguments; prints and returns the estimate."""
    from .training.estimate import estimate
    from .training.module import DiffusionModule
    from .training.speed import Speed

    cli = fit([*argv, "--trainer.logger", "false"], run=False, clean_errors=True)
    model = cli.model
    if not isinstance(model, DiffusionModule):
        raise SystemExit(f"dff: estimate is for diffusion models; this config trains a {type(model).__name__}")
    trainer = cli.trainer
    speed = next((c for c in trainer.callbacks if isinstance(c, Speed)), None)
    device = trainer.strategy.root_device
    h = cli.datamodule.hparams
    est = estimate(model, int(h.batch_size), precision=str(trainer.precision), device=str(device), speed=speed,
                   steps=steps, max_steps=trainer.max_steps, from_cache=bool(h.latent_cache), memory_gb=memory_gb)
    configs = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--config"]
    print(f"dff estimate: {', '.join(configs) or 'defaults'}"
          + (" (a stand-in autoencoder of the same latent shape: its encoding not counted)" if stand_in
             else " (latent cache)" if h.latent_cache else " (the VAE encodes every batch)" if model.is_latent
             else ""))
    for line in est.lines():
        print("  " + line)
    return est
