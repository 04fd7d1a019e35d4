"""How the folder path and the packed path (`dff data pack`) grow with the number of images: time to the first
training batch, the loader's steady images/s alone, peak memory, and the digits model's own images/s beside them.

    python benchmarks/speed/data_scale.py [--sizes 10000 30000 100000] [--out runs/data_scale] [--record]

It writes N small PNGs (16x16 digits with noise, N the largest size; each smaller size is the first N files), and
a 13-band uint16 TIFF set (--bands-items of them), then measures each (path, N) in a fresh process: the data
module's setup (listing and checking the files, or reading the index) plus the first batch of 64, then 100
batches with data.num_workers 2. Packing is timed too (`dff data pack`, every file decoded once, in 2 processes).
Prints a table and writes <out>/data_scale.json (benchmarks/results/data_scale-<cpu>.json with --record).
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

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for benchmarks.common
from benchmarks.common import RESULTS_DIR  # noqa: E402

BATCH = 64

MEASURE = r"""
import json, resource, sys, time
from dff.data.datamodule import ImageDataModule
t0 = time.time()  # after the imports: the data's own time
root, size, channels, batches = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
extra = {"normalize": "percentile"} if channels > 4 else {}
dm = ImageDataModule("folder", root, image_size=size, channels=channels, batch_size=%d, num_workers=2, **extra)
dm.setup()
it = iter(dm.train_dataloader())
next(it)
first = time.time() - t0
t1, n = time.time(), 0
for _ in range(batches):
    try:
        n += len(next(it)["image"])
    except StopIteration:
        it = iter(dm.train_dataloader())
t = time.time() - t1
print(json.dumps({"first_batch_s": first, "loader_images_per_s": n / t,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
""" % BATCH


def write_digits(root: Path, n: int) -> None:
    """n 16x16 grayscale PNGs: scikit-learn's digits upscaled, with noise, in folders of 1,000."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits().images / 16.0  # (1797, 8, 8)
    rng = np.random.default_rng(0)
    for i in range(n):
        d = np.kron(digits[i % len(digits)], np.ones((2, 2)))
        a = np.clip((d + rng.normal(0, 0.05, d.shape)) * 255, 0, 255).astype(np.uint8)
        folder = root / f"{i // 1000:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(a, "L").save(folder / f"{i:07d}.png")


def write_bands(root: Path, n: int) -> None:
    import tifffile

    rng = np.random.default_rng(1)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        tifffile.imwrite(root / f"{i:06d}.tif", rng.integers(0, 4096, (13, 16, 16), dtype=np.uint16),
                         photometric="minisblack", planarconfig="separate")


def subset(src: Path, dst: Path, n: int) -> Path:
    """A folder of links to the first n files of src (sorted), in the same sub-folders."""
    files = sorted(src.rglob("*.png"))[:n]
    for f in files:
        link = dst / f.relative_to(src)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(f)
    return dst


def measure(root: Path, size: int, channels: int, batches: int) -> dict:
    proc = subprocess.run([sys.executable, "-c", MEASURE, str(root), str(size), str(channels), str(batches)],
                          capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"measuring {root} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def pack_time(src: Path, dst: Path) -> float:
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "dff.cli", "data", "pack", str(src), str(dst), "--workers", "2"],
                          capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"packing {src} failed:\n{proc.stderr[-3000:]}")
    return time.time() - t0


def model_images_per_s(steps: int = 20) -> float:
    """Training images/s of the digits recipe's model alone (batch 32, data in memory)."""
    import torch
    import yaml

    from dff.models import DiffusionModel
    from dff.training.optim import adamw

    cfg = yaml.safe_load((Path(__file__).resolve().parents[2] / "configs" / "pixel_digits.yaml").read_text())
    keep = {k: v for k, v in cfg["model"].items() if k not in ("lr", "lr_decay", "warmup_steps")}
    model = DiffusionModel(image_size=16, channels=1, **keep)
    opt = adamw(model.net.parameters(), 1e-3, 0.0, 0)
    x = {"image": torch.rand(32, 1, 16, 16)}
    for i in range(steps + 3):
        if i == 3:
            t0 = time.time()
        loss = model.loss(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return steps * 32 / (time.time() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 30_000, 100_000])
    ap.add_argument("--bands-items", type=int, default=10_000)
    ap.add_argument("--batches", type=int, default=100)
    ap.add_argument("--out", default="runs/data_scale")
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        sys.exit(f"{out} holds files: give another --out")
    t0 = time.time()
    write_digits(out / "all", max(args.sizes))
    write_bands(out / "bands", args.bands_items)
    print(f"wrote the images in {time.time() - t0:.0f} s")
    rows = []
    for n in args.sizes:
        folder = out / "all" if n == max(args.sizes) else subset(out / "all", out / f"first_{n}", n)
        packed = out / f"packed_{n}"
        row = {"images": n, "pack_s": pack_time(folder, packed)}
        row["folder"] = measure(folder, 16, 1, args.batches)
        row["packed"] = measure(packed, 16, 1, args.batches)
        rows.append(row)
        print(json.dumps(row))
    bands = {"items": args.bands_items, "pack_s": pack_time(out / "bands", out / "packed_bands"),
             "folder": measure(out / "bands", 16, 13, args.batches),
             "packed": measure(out / "packed_bands", 16, 13, args.batches)}
    print(json.dumps(bands))
    res = {"command": "python benchmarks/speed/data_scale.py " + " ".join(sys.argv[1:]),
           "date": time.strftime("%Y-%m-%d"), "machine": platform.machine(), "batch": BATCH, "workers": 2,
           "digits": rows, "bands_13_uint16": bands,
           "model_images_per_s": model_images_per_s()}
    print(f"\n{'images':>8} {'pack s':>7} | {'first batch s: folder':>22} {'packed':>7} | "
          f"{'loader img/s: folder':>21} {'packed':>7} | {'peak MB: folder':>15} {'packed':>7}")
    for r in rows:
        f, p = r["folder"], r["packed"]
        print(f"{r['images']:8d} {r['pack_s']:7.1f} | {f['first_batch_s']:22.1f} {p['first_batch_s']:7.2f} | "
              f"{f['loader_images_per_s']:21.0f} {p['loader_images_per_s']:7.0f} | {f['peak_rss_mb']:15.0f} "
              f"{p['peak_rss_mb']:7.0f}")
    print(f"the digits model alone trains {res['model_images_per_s']:.0f} images/s")
    (out / "data_scale.json").write_text(json.dumps(res, indent=1))
    if args.record:
        cpu = "amd-epyc" if "AMD" in open("/proc/cpuinfo").read() else platform.machine()
        (RESULTS_DIR / f"data_scale-{cpu}.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
