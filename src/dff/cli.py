"""The `dff` command.

    dff fit --config configs/pixel_digits.yaml [--model.lr 2e-4 ...]   train (Lightning's CLI: any key overridable)
    dff estimate --config configs/pixel_64.yaml [overrides]            what that run will cost, before it starts
    dff sample RUN_OR_WEIGHTS --num 64 --sampler ddim --steps 50 --seed 0 --out DIR
    dff translate RUN_OR_WEIGHTS --input FILE_OR_DIR --out DIR [--num-samples K]   image-to-image
    dff eval RUN_OR_WEIGHTS --data DIR|photos                          PSNR/SSIM of translations on pairs
    dff eval AUTOENCODER_RUN --data DIR|textures                       reconstruction PSNR/SSIM
    dff data download NAME [--dir data]                               a pix2pix archive (maps, facades, ...)
    dff data check PATH [--image-size S] [--pairs folders]            what training would make of a folder
    dff data pack FOLDER OUT [--labels] [--skip-bad]                  check once, in parallel; pack into tar shards
    dff doctor RUN                                                    why are my samples noise? findings with fixes
    dff demo [latent]                                                 train a demo (digits; or latent), write figures
    dff explore --out DIR [--image PATH] [--schedule NAME|all] [--run RUN]   the diffusion process, visualised
    dff posthoc-ema RUN --sigma-rel 0.05 0.1 0.2 [--step N]            other EMA lengths, chosen after training
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence


from . import __version__
from .commands import (data_command, demo_command, doctor_command, estimate_command, eval_command, export_command,
                       explore_command, posthoc_ema_command, push_command, sample_command, translate_command)
from .diffusion import SAMPLERS, default_steps
from .diffusion.guidance import DEFAULT_INTERVAL
from .training.fit import fit

__all__ = ["main", "run", "fit", "build_parser", "estimate_command"]
SAMPLER_NAMES = ", ".join(SAMPLERS)
STEPS_HELP = ("sampling steps (default: " + ", ".join(f"{name} {default_steps(name) or 'all T'}" for name in SAMPLERS)
              + ")")

# ====================================================================== main
def positive_int(text: str) -> int:
    """An argparse type for a count of steps: a whole number >= 1 (Lightning reads max_steps -1 as no limit and 0 as
    no training, neither of which a demo wants)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: expected a number of steps >= 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dff", description="DiffusionFastForward: train and sample diffusion models.")
    p.add_argument("--version", action="version", version=f"dff {__version__}")
    sub = p.add_subparsers(dest="command",
                           metavar="{fit,sample,translate,eval,data,doctor,demo,explore,posthoc-ema}")
    sub.add_parser("fit", help="train a model from a YAML config (dff fit --help for all keys)", add_help=False)
    sub.add_parser("estimate", help="what a config's run will cost: parameters, FLOPs, memory, measured steps, "
                                    "projected time (the arguments of fit)", add_help=False)

    s = sub.add_parser("sample", help="generate images from exported weights, a run folder or a checkpoint")
    s.add_argument("weights", help="run folder, export folder, model.safetensors or .ckpt")
    s.add_argument("--num", type=int, default=64, help="number of images (default 64)")
    s.add_argument("--sampler", default="ddim", help=f"{SAMPLER_NAMES} (default ddim)")
    s.add_argument("--steps", type=int, default=None, help=STEPS_HELP)
    s.add_argument("--eta", type=float, default=0.0, help="DDIM eta in [0, 1] (default 0)")
    s.add_argument("--spacing", default=None, help="DDIM timestep spacing: leading or trailing (default: trailing for "
                                                  "a model trained with zero terminal SNR, else leading)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--class", dest="class_", type=int, default=None,
                   help="class-conditional models: generate this class (default: unconditional)")
    s.add_argument("--guidance", type=float, default=1.5,
                   help="classifier-free guidance scale with --class: 0 unconditional, 1 conditional, >1 sharper")
    s.add_argument("--guidance-interval", type=float, nargs=2, default=DEFAULT_INTERVAL, metavar=("LO", "HI"),
                   help="guide only at noise levels LO < sigma <= HI, conditional elsewhere (Kynkaanniemi et al. "
                        "2024; default: 0.28 5.42; 0 inf: at every step)")
    s.add_argument("--batch-size", type=int, default=64)
    s.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    s.add_argument("--out", default="samples", help="output folder (default ./samples)")
    s.add_argument("--format", default="auto", choices=("auto", "png", "tif", "npy"),
                   help="auto: PNG for image models; for models of array data, files in the data's units and dtype "
                        "(.tif or .npy, as the training files) plus PNG previews. png: PNGs (previews) only")
    s.add_argument("--preview-bands", default=None,
                   help="bands shown in the PNGs of multiband models, numbered from 1: one (grey) or three (RGB), "
                        "e.g. 4,3,2; each is percentile-stretched (default: the first three)")
    s.add_argument("--overwrite", action="store_true", help="allow writing into a folder that holds files")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.add_argument("--precision", default="32", choices=["32", "bf16"],
                   help="32 (default) or bf16: the network in bf16 autocast, faster on GPUs and on CPUs with bf16 "
                        "instructions (AVX-512 bf16, AMX); FID within the float32 run's noise on the digits bench")

    t = sub.add_parser("translate", help="image-to-image: translate files with a conditional model")
    t.add_argument("weights", help="run folder, export folder, model.safetensors or .ckpt")
    t.add_argument("--input", required=True, help="an image file or a folder of images (searched recursively)")
    t.add_argument("--out", default="translations", help="output folder; names follow the inputs")
    t.add_argument("--num-samples", type=int, default=1, help="outputs per input (NAME_k.png when > 1)")
    t.add_argument("--sampler", default="ddim", help=f"{SAMPLER_NAMES} (default ddim)")
    t.add_argument("--steps", type=int, default=None, help=STEPS_HELP)
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
                   help="FID/KID features: digits or textures (offline CNNs), inception (needs torch-fidelity) "
                        "or module:factory")
    e.add_argument("--extractor-weights", default=None, help="local weights file of the extractor")
    e.add_argument("--sampler", default="ddim", help="sampler of the generated images (FID/KID)")
    e.add_argument("--layout", default="side_by_side", help="pair folders: side_by_side or folders (A/, B/)")
    e.add_argument("--direction", default="AtoB", help="pair folders: AtoB or BtoA")
    e.add_argument("--num", type=int, default=None,
                   help="generated images for FID/KID (default 1000); or score the first N pairs (default all)")
    e.add_argument("--steps", type=int, default=None, help=STEPS_HELP)
    e.add_argument("--batch-size", type=int, default=32)
    e.add_argument("--precision", default="32", choices=["32", "bf16"], help="sampling precision (as dff sample)")
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

    a = sub.add_parser("data", help="download a public data set (dff data download maps --dir data), check an "
                                    "image folder before training (dff data check PATH --image-size 64), or pack "
                                    "a large one into shards (dff data pack FOLDER OUT)")
    a.add_argument("action", choices=["download", "list", "check", "pack"])
    a.add_argument("name", nargs="?", default=None,
                   help="download: pix2pix archive (facades, cityscapes, maps, edges2shoes, ...); check, pack: the "
                        "folder")
    a.add_argument("target", nargs="?", default=None, help="pack: the output folder of the shards (new or empty)")
    a.add_argument("--labels", action="store_true", help="pack: keep each file's class (its top-level sub-folder)")
    a.add_argument("--skip-bad", action="store_true",
                   help="pack: leave unreadable files out (listed in OUT/skipped_files.txt) instead of stopping")
    a.add_argument("--shard-items", type=int, default=10_000, help="pack: items per tar shard (default 10000)")
    a.add_argument("--workers", type=int, default=None, help="pack: processes that check the files (default: cores)")
    a.add_argument("--image-size", type=int, default=None, help="check: the training size (reports smaller images)")
    a.add_argument("--crop", default="random", choices=["random", "center", "resize"], help="check: data.crop")
    a.add_argument("--pairs", default="none", choices=["none", "side_by_side", "folders"], help="check: data.pairs")
    a.add_argument("--dir", default="data", help="destination folder (default ./data); the set lands in DIR/NAME")
    a.add_argument("--base-url", default=None, help="mirror of the pix2pix server (default: the authors' server)")
    a.add_argument("--sha256", default=None, help="expected SHA-256 of the archive, verified when given")
    a.add_argument("--no-progress", action="store_true")

    o = sub.add_parser("doctor", help="why are my samples noise? check a run folder: loss, EMA, data, samples, "
                                      "autoencoder, condition; each finding with its fix")
    o.add_argument("run", help="a run folder written by dff fit (runs/NAME/version_N)")
    o.add_argument("--num", type=int, default=64, help="images sampled and compared with the data (default 64)")

    d = sub.add_parser("demo", help="train on built-in data for a few minutes and write figures")
    d.add_argument("which", nargs="?", default="digits", choices=["digits", "latent"],
                   help="digits: pixel diffusion on the digits (default); latent: latent diffusion on 64x64 "
                        "texture patches, in the space of the autoencoder shipped with dff")
    d.add_argument("--out", default=None, help="root folder of the runs (default runs/demo or runs/latent_demo)")
    d.add_argument("--max-steps", type=positive_int, default=None,
                   help="training steps of the diffusion model (default: the config's)")
    d.add_argument("--train-autoencoder", action="store_true",
                   help="latent demo: train the autoencoder first (stage 1, configs/autoencoder_demo.yaml) instead of "
                        "using the shipped one")
    d.add_argument("--autoencoder-steps", type=positive_int, default=None,
                   help="latent demo: train the autoencoder first, for this many steps")

    x = sub.add_parser("explore", help="the diffusion process on one image, visualised (forward grid, steps vs. jump, "
                                       "schedules, x0 from x_t, the reverse chain); with --run, a model's trajectory")
    x.add_argument("--out", required=True, help="output folder for the figures")
    x.add_argument("--image", default=None, help="an image file (default: a bundled photo)")
    x.add_argument("--schedule", default="all", help="linear, quadratic, sigmoid, cosine or all (default: all side by "
                                                     "side, linear for the other figures)")
    x.add_argument("--timesteps", type=int, default=1000, help="T (default 1000)")
    x.add_argument("--size", type=int, default=64, help="side of the centred square crop of the image (default 64)")
    x.add_argument("--run", default=None, help="a run folder or exported weights: also its DDIM trajectory "
                                               "(trajectory.png, trajectory.gif)")
    x.add_argument("--seed", type=int, default=0)
    x.add_argument("--overwrite", action="store_true", help="allow writing into a folder that holds files")

    y = sub.add_parser("export", help="a trained model in another library's format: --format diffusers writes a "
                                      "pipeline folder that diffusers loads alone")
    y.add_argument("weights", help="a run folder, exported weights or a checkpoint (as dff sample takes)")
    y.add_argument("out", help="the folder to write (new, or empty; --overwrite replaces one)")
    y.add_argument("--format", default="diffusers", choices=["diffusers"], help="diffusers: UNet2DModel and "
                   "scheduler, for DiffusionPipeline.from_pretrained (default)")
    y.add_argument("--scheduler", default="ddim", choices=["ddim", "ddpm", "dpmpp_2m"],
                   help="the pipeline's scheduler: ddim (DDIMPipeline), ddpm or dpmpp_2m (DDPMPipeline)")
    y.add_argument("--overwrite", action="store_true", help="replace a folder that already holds files")

    u = sub.add_parser("push", help="upload a run's export to the Hugging Face Hub with a model card (and the "
                                    "diffusers pipeline, where the model has one)")
    u.add_argument("weights", help="a run folder or an export folder")
    u.add_argument("repo_id", help="the hub repository, owner/name (created if missing)")
    u.add_argument("--private", action="store_true", help="create the repository private")
    u.add_argument("--token", default=None, help="a hub token (default: HF_TOKEN or `huggingface-cli login`'s)")
    u.add_argument("--scheduler", default="ddim", choices=["ddim", "ddpm", "dpmpp_2m"],
                   help="the diffusers pipeline's scheduler")

    h = sub.add_parser("posthoc-ema", help="exports of a run averaged with other EMA lengths, reconstructed from the "
                                           "snapshots that posthoc_ema.every_n_steps wrote (EDM2's post-hoc EMA)")
    h.add_argument("run", help="a run folder written by dff fit with posthoc_ema.every_n_steps > 0")
    h.add_argument("--sigma-rel", type=float, nargs="+", required=True,
                   help="EMA lengths relative to the run (EDM2's sigma_rel, 0 < s < 0.3; e.g. 0.05 0.1 0.2)")
    h.add_argument("--step", type=int, default=None, help="the step to average up to (default: the last snapshot)")
    h.add_argument("--out", default=None, help="folder for the exports (default RUN/posthoc_ema/sigma_S)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "fit":
        fit(argv[1:], clean_errors=True)
        return
    if argv and argv[0] == "estimate":  # the same arguments as fit
        if len(argv) == 1 or argv[1] in ("-h", "--help"):
            import dff.training.estimate

            print("usage: dff estimate --config FILE [--steps N] [--key value ...]  (the arguments of dff fit)\n"
                  + dff.training.estimate.__doc__)
            return
        estimate_command(argv[1:])
        return
    args = build_parser().parse_args(argv)
    commands = {"sample": sample_command, "translate": translate_command, "eval": eval_command,
                "data": data_command, "doctor": doctor_command, "demo": demo_command,
                "explore": explore_command, "posthoc-ema": posthoc_ema_command, "export": export_command,
                "push": push_command}
    if args.command in commands:
        commands[args.command](args)
    else:
        build_parser().print_help()


def run() -> None:
    """The `dff` console command: main(), with user errors (SystemExit("dff: ...")) printed as one line
    and exit code 2, as argparse does for bad arguments."""
    try:
        main()
    except SystemExit as e:
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
            raise SystemExit(2) from None
        raise


if __name__ == "__main__":
    run()
