"""Benchmark of the latent demo, judged by the texture CNN (dff.evaluation.TextureFeatures): wall-clock of
`dff demo latent`, the share of samples recognisably brick, grass or gravel and their class histogram,
FID/KID against real patches, the autoencoder's held-out PSNR/SSIM, and a pixel-space model trained on the
same patches for the same wall-clock.

    python benchmarks/gates/latent_demo.py [--out runs/latent_bench] [--skip-demo RUN] [--num 256]
        [--sampler dpmpp_2m_sde --steps 100] [--pixel-seconds S | --no-pixel]

A sample counts as recognised when the texture CNN (held-out accuracy in
src/dff/evaluation/texture_features.json) gives one texture a probability >= 0.9 (the CNN has a fourth class,
"none", for noise, flat grey and blur). Targets (issue 14): >= 80%
recognised, every class at least half its share in the data (1/3 each, so >= 1/6 of the samples).
Real training crops are judged the same way as the yardstick. Writes <out>/latent_bench.json and the
sample grids; absolute times are for the machine it runs on.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from dff.autoencoders import to_image_space, to_model_space
from dff.data.builtin import TEXTURES, PhotoPatches
from dff.demo import LATENT_SAMPLER, LATENT_SAMPLER_STEPS
from dff.evaluation import evaluate_generation
from dff.evaluation import TextureFeatures
from dff.evaluation.reconstruction import evaluate_autoencoder, reconstruction_images
from dff.pretrained import load_pretrained
from dff.viz import save_grid

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for benchmarks.common
from benchmarks.common import CONFIG_DIR  # noqa: E402

DFF = [sys.executable, "-m", "dff.cli"]


def judge(judge_net: TextureFeatures, images: torch.Tensor) -> dict:
    """Share of images recognised as one texture (probability >= 0.9), and the histogram of those labels."""
    labels = judge_net.recognise(images)
    hist = [int((labels == k).sum()) for k in range(len(TEXTURES))]
    n = len(images)
    share = (labels >= 0).float().mean().item()
    ok = share >= 0.8 and all(h / n >= 0.5 / len(TEXTURES) for h in hist)
    return {"confident_share": share, "histogram": dict(zip(TEXTURES, hist)), "target_met": ok}


def real_crops(n: int, size: int, seed: int) -> torch.Tensor:
    ds = PhotoPatches("train", size, 1, repeat=-(-n // len(TEXTURES)), seed=seed, source="textures")
    return torch.stack([ds[i]["image"] for i in range(n)])


def timed(cmd: list[str]) -> float:
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd[2:])} failed:\n{proc.stderr[-3000:]}")
    return time.time() - t0


def machine() -> str:
    """The CPU's model name, its torch threads and whether it multiplies bf16 in hardware (which sets the precision
    `dff demo latent` trains in)."""
    from dff.report import cpu_model
    from dff.speed import cpu_has_amx_bf16

    return (f"{cpu_model()}, {torch.get_num_threads()} torch threads, "
            f"AMX-bf16 {'yes' if cpu_has_amx_bf16() else 'no'}")


def newest(folder: Path) -> Path:
    return sorted(folder.glob("version_*"), key=lambda p: p.stat().st_mtime)[-1]


def score(model, name: str, args, judge_net, reference, out: Path) -> dict:
    t0 = time.time()
    x = model.sample(args.num, args.sampler, steps=args.steps, seed=0, progress=False).clamp(0, 1)
    sample_s = time.time() - t0
    save_grid(x[:16], out / f"{name}_samples.png", nrow=4)
    r = evaluate_generation(x, reference, judge_net)
    return {"sample_s": sample_s, "judged": judge(judge_net, x), "fid": r["fid"], "kid": r["kid_mean"],
            "kid_std": r["kid_std"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/latent_bench")
    ap.add_argument("--skip-demo", default=None, help="a finished latent demo run (its diffusion version folder)")
    ap.add_argument("--num", type=int, default=256, help="samples per model")
    ap.add_argument("--sampler", default=LATENT_SAMPLER, help="sampler of the scored samples (default: the demo's)")
    ap.add_argument("--steps", type=int, default=LATENT_SAMPLER_STEPS, help="its steps (default: the demo's)")
    ap.add_argument("--pixel-seconds", type=float, default=None, help="pixel model's budget (default: the demo's)")
    ap.add_argument("--no-pixel", action="store_true", help="skip the pixel-space comparison")
    ap.add_argument("--judge", default=None, help="texture judge weights (default: the shipped ones)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res: dict = {"machine": machine(), "sampler": f"{args.sampler} {args.steps} steps"}
    if args.skip_demo:
        run = Path(args.skip_demo)
    else:
        res["demo_wall_s"] = timed(DFF + ["demo", "latent", "--out", str(out / "latent_demo")])
        run = newest(out / "latent_demo" / "diffusion")
    res["run"] = str(run)
    model = load_pretrained(run / "export")
    size = model.hparams.image_size
    judge_net = TextureFeatures.pretrained(args.judge)
    if judge_net.input_size[0] != size:
        sys.exit(f"the texture judge was trained on {judge_net.input_size[0]}-pixel crops, the model makes {size}: "
                 f"train one with `python scripts/train_texture_features.py --size {size} --out FILE` (--judge FILE)")
    weights = Path(args.judge) if args.judge else TextureFeatures.weights_file()
    res["judge_heldout_accuracy"] = json.loads(weights.with_suffix(".json").read_text())["accuracy"]
    reference = real_crops(1000, size, seed=1)
    res["real_crops"] = judge(judge_net, real_crops(args.num, size, seed=2))
    res["real_vs_real"] = {k: v for k, v in evaluate_generation(real_crops(args.num, size, seed=2), reference,
                                                               judge_net).items() if k in ("fid", "kid_mean")}

    ae = model.latent.autoencoder
    held = reconstruction_images("textures", 1, size)  # the non-overlapping held-out patches
    res["autoencoder_heldout"] = evaluate_autoencoder(ae, held)
    with torch.no_grad():
        recon = to_image_space(ae.decode(ae.encode(to_model_space(held)))).clamp(0, 1)
    labels = torch.arange(len(TEXTURES)).repeat_interleave(len(held) // len(TEXTURES))
    res["autoencoder_heldout"]["judge_agrees_on_reconstructions"] = (
        judge_net.classify(recon).argmax(1) == labels).float().mean().item()
    res["autoencoder_heldout"]["judge_agrees_on_originals"] = (
        judge_net.classify(held).argmax(1) == labels).float().mean().item()
    res["latent"] = score(model, "latent", args, judge_net, reference, out)

    if not args.no_pixel:
        budget = args.pixel_seconds or res.get("demo_wall_s")
        if budget is None:
            sys.exit("--pixel-seconds is needed with --skip-demo (or pass --no-pixel)")
        h, m = divmod(int(budget), 3600)
        clock = f"00:{h:02d}:{m // 60:02d}:{m % 60:02d}"
        root = out / "pixel"
        res["pixel_wall_s"] = timed(DFF + [
            "fit", "--config", str(CONFIG_DIR / "latent_demo.yaml"), "--model.autoencoder", "null",
            "--data.latent_cache", "null", "--model.dim_mults", "[1,2,2,2]", "--data.batch_size", "8",
            "--trainer.max_steps", "-1", "--trainer.max_time", clock, "--trainer.enable_progress_bar", "false",
            "--trainer.default_root_dir", str(root), "--checkpoint.every_n_train_steps", "100000"])
        pixel = load_pretrained(newest(root) / "export")
        res["pixel"] = score(pixel, "pixel", args, judge_net, reference, out)
        res["pixel"]["budget_s"] = budget

    (out / "latent_bench.json").write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
