"""Helpers shared by the benchmark scripts: the repository's paths, the digit classifier that judges generated
digits, the digits recipe's benchmark runs and their FID/KID, and the diffusion U-Nets of the speed configs.

    from benchmarks.common import ROOT, train_classifier, judge

A script run as a file (`python benchmarks/gates/digits_demo.py`) has only its own folder on sys.path, so every
script that imports this module puts the repository root there first, with the same commented line (see
benchmarks/README.md, "How the scripts import their helpers"); run as a module from the repository root
(`python -m benchmarks.gates.digits_demo`) it needs nothing. The heavy imports (torch, scikit-learn, dff) are
made inside the functions, so a script that needs only the paths does not pay for them.
"""
from __future__ import annotations

import functools
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the repository
CONFIG_DIR = ROOT / "configs"
DIGITS_CONFIG = CONFIG_DIR / "pixel_digits.yaml"  # the digits recipe, as `dff demo` trains it
RESULTS_DIR = ROOT / "benchmarks" / "results"  # the committed result files the docs quote


# ---------------------------------------------------------------------- the digit classifier (judge of digits)
def train_classifier(image_size: int = 16, seed: int = 0):
    """A digit classifier trained on the real digits at the demo's resolution, to judge generated digits:
    (MLPClassifier on flattened [0, 1] images, held-out accuracy on 25% of the real digits)."""
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier

    from dff.data import load_digits_tensor

    x, y = load_digits_tensor(image_size, 1)
    X = x.flatten(1).numpy()
    Xtr, Xte, ytr, yte = train_test_split(X, y.numpy(), test_size=0.25, random_state=seed, stratify=y.numpy())
    clf = MLPClassifier(hidden_layer_sizes=(256,), max_iter=400, random_state=seed).fit(Xtr, ytr)
    return clf, float(clf.score(Xte, yte))


def judge(clf, images, threshold: float = 0.9) -> dict:
    """Share of images labelled with confidence >= threshold, and the class histogram of those labels."""
    import numpy as np

    p = clf.predict_proba(images[:, :1].flatten(1).cpu().numpy())  # (N, 10)
    labels, conf = p.argmax(1), p.max(1)
    hist = np.bincount(labels[conf >= threshold], minlength=10)
    return {"confident_share": float((conf >= threshold).mean()), "histogram": hist.tolist(),
            "classes_present": int((hist > 0).sum())}


# ---------------------------------------------------------------------- the digits recipe's benchmark runs
def recipe_args(steps: int, root: Path, seed: int) -> list[str]:
    """`dff fit` arguments of one benchmark run of the digits recipe: no grids, no periodic checkpoints, quiet."""
    return ["--config", str(DIGITS_CONFIG), "--trainer.max_steps", str(steps), "--trainer.default_root_dir",
            str(root), "--samples.every_n_steps", "0", "--checkpoint.every_n_train_steps", "1000000",
            "--trainer.enable_progress_bar", "false", "--seed_everything", str(seed)]


def score_digits(export: Path, steps: int, num: int = 1000, precision: str = "32") -> dict:
    """FID and KID (digits features, against the 1,797 digits) of `num` samples of DPM-Solver++(2M) at `steps`
    steps (generator seeded 0, batches of 250) from the exported digits model at `export`; precision "bf16": the
    network's calls in bf16 autocast."""
    import torch

    from dff.data import load_digits_tensor
    from dff.evaluation import evaluate_generation
    from dff.pretrained import load_pretrained

    model = load_pretrained(export)
    g = torch.Generator().manual_seed(0)
    x = torch.cat([model.sample(min(250, num - i), "dpmpp_2m", steps=steps, generator=g, progress=False,
                                precision=precision) for i in range(0, num, 250)])
    r = evaluate_generation(x, load_digits_tensor(16, 1)[0], "digits")
    return {"fid": r["fid"], "kid": r["kid_mean"], "kid_std": r["kid_std"]}


# ---------------------------------------------------------------------- the speed configs' networks
NET_KEYS = ("backbone", "dim", "dim_mults", "num_res_blocks", "attention", "prediction", "loss_weighting", "schedule")
# the configs whose U-Nets the speed benchmarks time; the latent ones on their cached latents
SPEED_CONFIGS = ("pixel_64", "latent_maps_256", "pixel_digits", "latent_demo")
LATENT_SHAPES = {
    "latent_maps_256": dict(image_size=32, channels=4, latent=True),  # SD's VAE: f = 8
    "latent_demo": dict(image_size=16, channels=4, latent=True),  # the demo autoencoder: f = 4
}


def network_of(config: str, **shape) -> dict:
    """The U-Net and diffusion settings of configs/<config>.yaml and its data shape (image_size, channels), or
    `shape` instead: a latent config's U-Net runs on the cached latents."""
    import yaml

    cfg = yaml.safe_load((CONFIG_DIR / f"{config}.yaml").read_text())
    net = {k: v for k, v in cfg["model"].items() if k in NET_KEYS and v is not None}
    return {**net, "image_size": cfg["data"]["image_size"], "channels": cfg["data"]["channels"], **shape}


@functools.cache
def speed_networks() -> dict[str, dict]:
    """The network and data shapes of each of SPEED_CONFIGS (the latent configs: their U-Nets on the cached
    latents), read from the configs once."""
    return {c: network_of(c, **LATENT_SHAPES.get(c, {})) for c in SPEED_CONFIGS}


def build_model(config: str):
    """A DiffusionModule with the U-Net of one of SPEED_CONFIGS (T = 1000, lr 1e-4)."""
    from dff.module import DiffusionModule

    kw = {k: v for k, v in speed_networks()[config].items() if k != "latent"}
    return DiffusionModule(timesteps=1000, lr=1e-4, **kw)


# ---------------------------------------------------------------------- a study's results
def write_study(out: Path, name: str, overrides: list, rows: list[dict], plot) -> None:
    """<out>/<name>.json ({"overrides", "rows"}) and the study's figure <out>/<name>.png drawn by plot(rows, path)."""
    import json

    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps({"overrides": overrides, "rows": rows}, indent=1) + "\n")
    plot(rows, out / f"{name}.png")
    print(f"wrote {out / f'{name}.json'} and {out / f'{name}.png'}")
