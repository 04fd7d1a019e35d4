"""Release gate of array data: a 13-band, 12-bit-in-uint16 set (made from the built-in photos by a fixed spectral
mixing) goes through `dff data check` -> `dff fit` (data.normalize percentile) -> `dff sample` (TIFFs in the
data's units, PNG previews of bands 4,3,2), and the samples are compared with the data band by band in the data's
own units: the mean and standard deviation of each band, and the band-to-band correlations (the spectral structure
a model of 13 independent images would lose).

    python benchmarks/gates/multiband_demo.py [--out runs/multiband] [--steps 1500] [--tiles 512]

Prints a table and writes <out>/multiband.json (and benchmarks/results/multiband_demo-<cpu>.json with --record).
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import tifffile

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for benchmarks.common
from benchmarks.common import RESULTS_DIR  # noqa: E402

BANDS = 13
SIZE = 32


def spectral_mixing(bands: int = BANDS) -> tuple[np.ndarray, np.ndarray]:
    """(M (bands, 3), offset (bands,)): band b sees red, green and blue with smooth Gaussian responses centred
    along the band index (a crude spectrum: blue first, then green, red, and a bright 'near infrared' tail), on
    an offset that rises with b, as dark levels differ between a sensor's bands."""
    centres = np.array([2.0, 4.5, 7.0])  # blue, green, red along the band axis
    b = np.arange(bands)[:, None]
    M = np.exp(-0.5 * ((b - centres) / 1.8) ** 2)  # (bands, 3)
    M[9:] += np.array([0.1, 0.6, 0.3])  # the near-infrared bands: vegetation-like green response
    M /= M.sum(1, keepdims=True)
    offset = 150.0 + 40.0 * np.arange(bands)
    return M, offset


def make_tiles(root: Path, n: int, seed: int = 0) -> np.ndarray:
    """n planar uint16 TIFFs (13, 32, 32) with 12-bit values: 3,000 x (M @ rgb) + offset + sensor noise (sd 8),
    from random 32x32 crops of the built-in photos (scikit-learn's two colour photos); returns the stack
    (n, 13, 32, 32)."""
    from dff.data.builtin import PhotoPatches

    patches = PhotoPatches("train", SIZE, 3, repeat=max(1, n), seed=seed, source="photos")
    M, offset = spectral_mixing()
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    tiles = []
    for i in range(n):
        rgb = patches[i]["image"].numpy()  # (3, 32, 32) in [0, 1]
        t = 3000.0 * np.einsum("bc,chw->bhw", M, rgb) + offset[:, None, None] + rng.normal(0, 8, (BANDS, SIZE, SIZE))
        t = np.clip(np.rint(t), 0, 4095).astype(np.uint16)
        tifffile.imwrite(root / f"tile_{i:04d}.tif", t, photometric="minisblack", planarconfig="separate")
        tiles.append(t)
    return np.stack(tiles)


def band_stats(x: np.ndarray) -> dict:
    """Per-band mean and sd, and the band-to-band correlation matrix of (N, C, H, W) values."""
    flat = x.astype(np.float64).transpose(1, 0, 2, 3).reshape(x.shape[1], -1)  # (C, N H W)
    return {"mean": flat.mean(1), "sd": flat.std(1), "corr": np.corrcoef(flat)}


def dff(*args: str) -> float:
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "dff.cli", *args], capture_output=True, text=True)
    if proc.returncode not in (0, 1) or (proc.returncode == 1 and args[0] != "data"):
        sys.exit(f"dff {args[0]} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return time.time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/multiband")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--tiles", type=int, default=512)
    ap.add_argument("--num", type=int, default=64, help="samples drawn")
    ap.add_argument("--record", action="store_true", help="also write benchmarks/results/multiband_demo-<cpu>.json")
    args = ap.parse_args()
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        sys.exit(f"{out} holds files: give another --out")
    data = make_tiles(out / "tiles", args.tiles)
    dff("data", "check", str(out / "tiles"), "--image-size", str(SIZE))
    fit_s = dff("fit", "--config", str(Path(__file__).resolve().parents[2] / "configs" / "pixel_digits.yaml"),
                "--data.dataset", "folder", "--data.root", str(out / "tiles"), "--data.channels", str(BANDS),
                "--data.image_size", str(SIZE), "--data.normalize", "percentile", "--data.vflip", "true",
                "--model.dim", "24", "--trainer.max_steps", str(args.steps), "--trainer.default_root_dir",
                str(out / "runs"), "--samples.every_n_steps", "0", "--checkpoint.every_n_train_steps", "1000000",
                "--trainer.enable_progress_bar", "false")
    sample_s = dff("sample", str(out / "runs"), "--num", str(args.num), "--sampler", "dpmpp_2m", "--steps", "20",
                   "--out", str(out / "samples"), "--preview-bands", "7,5,3", "--no-progress")
    samples = np.stack([tifffile.imread(p) for p in sorted((out / "samples").glob("sample_*.tif"))])
    d, s = band_stats(data), band_stats(samples)
    iu = np.triu_indices(BANDS, 1)
    res = {
        "command": "python benchmarks/gates/multiband_demo.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "steps": args.steps,
        "tiles": args.tiles, "samples": len(samples), "fit_s": round(fit_s, 1), "sample_s": round(sample_s, 1),
        "sample_dtype": str(samples.dtype), "sample_range": [int(samples.min()), int(samples.max())],
        "data_range": [int(data.min()), int(data.max())],
        "band_mean_data": d["mean"].round(1).tolist(), "band_mean_samples": s["mean"].round(1).tolist(),
        "band_sd_data": d["sd"].round(1).tolist(), "band_sd_samples": s["sd"].round(1).tolist(),
        "max_rel_mean_error": float(np.max(np.abs(s["mean"] - d["mean"]) / d["mean"])),
        "max_rel_sd_error": float(np.max(np.abs(s["sd"] - d["sd"]) / d["sd"])),
        "mean_abs_corr_error": float(np.mean(np.abs(s["corr"][iu] - d["corr"][iu]))),
        "corr_data_range": [float(d["corr"][iu].min()), float(d["corr"][iu].max())],
    }
    print(f"{'band':>4} {'mean data':>10} {'mean samples':>13} {'sd data':>8} {'sd samples':>11}")
    for b in range(BANDS):
        print(f"{b + 1:4d} {d['mean'][b]:10.1f} {s['mean'][b]:13.1f} {d['sd'][b]:8.1f} {s['sd'][b]:11.1f}")
    for k in ("max_rel_mean_error", "max_rel_sd_error", "mean_abs_corr_error", "fit_s", "sample_s"):
        print(f"{k}: {res[k]:.4g}" if isinstance(res[k], float) else f"{k}: {res[k]}")
    (out / "multiband.json").write_text(json.dumps(res, indent=1))
    if args.record:
        cpu = "amd-epyc" if "AMD" in open("/proc/cpuinfo").read() else platform.machine()
        (RESULTS_DIR / f"multiband_demo-{cpu}.json").write_text(json.dumps(res, indent=1))
    print(f"previews: {out / 'samples' / 'grid.png'}")


if __name__ == "__main__":
    main()
