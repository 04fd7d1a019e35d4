"""Sweep variants of the demo recipe at the demo's step budget and judge each one's samples.

    python benchmarks/studies/demo_sweep.py --out runs/sweep [--parallel 4] [--seeds 0 1] [--extra '...'] [NAME ...]

Each variant is configs/pixel_digits.yaml plus command-line overrides (VARIANTS below), trained
in its own process (several at once with --parallel, e.g. on a GPU), then 256 samples (DDIM 50,
seed 0) are labelled by the digit classifier of benchmarks/common.py. Prints one JSON
line per run and a table sorted by the confident share; writes <out>/sweep.json.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for benchmarks.common
from benchmarks.common import DIGITS_CONFIG, ROOT  # noqa: E402

VARIANTS: dict[str, list[str]] = {
    "baseline": [],
    "min_snr": ["--model.loss_weighting", "min_snr"],
    "v": ["--model.prediction", "v"],
    "v_min_snr": ["--model.prediction", "v", "--model.loss_weighting", "min_snr"],
    "lr2e-3": ["--model.lr", "2e-3"],
    "lr2e-3_min_snr": ["--model.lr", "2e-3", "--model.loss_weighting", "min_snr"],
    "ema0.999": ["--model.ema_decay", "0.999"],
    "dim32": ["--model.dim", "32"],
    "no_attn": ["--model.attention", "false"],
    "x0": ["--model.prediction", "x0"],
    "batch48": ["--data.batch_size", "48"],
    "linear_min_snr": ["--model.schedule", "linear", "--model.loss_weighting", "min_snr"],
}

CHILD = r"""
import json, sys, time, torch
sys.path.insert(0, {root!r})
from benchmarks.common import train_classifier, judge
from dff import fit
t0 = time.time()
cli = fit(["--config", {config!r}, "--trainer.enable_progress_bar", "false", "--samples.every_n_steps", "0",
           "--trainer.default_root_dir", {run!r}, "--seed_everything", str({seed}), *{overrides!r}])
train_s = time.time() - t0
m = cli.model.eval()
t0 = time.time()
s = m.sample(256, "ddim", steps=50, seed=0, progress=False)
sample_s = time.time() - t0
clf, acc = train_classifier()
print("RESULT " + json.dumps(dict(judge(clf, s), train_s=train_s, sample_s=sample_s)))
"""


def run(name: str, seed: int, out: Path, extra: list[str]) -> dict:
    code = CHILD.format(root=str(ROOT), config=str(DIGITS_CONFIG), run=str(out / f"{name}_s{seed}"), seed=seed,
                        overrides=VARIANTS[name] + extra)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    res = {"name": name, "seed": seed, "overrides": " ".join(VARIANTS[name])}
    if proc.returncode or not lines:
        res["error"] = proc.stderr[-1500:]
    else:
        res.update(json.loads(lines[-1][7:]))
    print(json.dumps(res), flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("names", nargs="*", default=list(VARIANTS))
    ap.add_argument("--out", default="runs/sweep")
    ap.add_argument("--parallel", type=int, default=1)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--extra", default="", help="overrides added to every variant, e.g. '--trainer.max_steps 2000'")
    args = ap.parse_args()
    unknown = [n for n in args.names if n not in VARIANTS]
    if unknown:
        sys.exit(f"unknown variant(s) {unknown}: expected some of {list(VARIANTS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    jobs = [(n, s) for s in args.seeds for n in args.names]
    with ThreadPoolExecutor(args.parallel) as pool:
        results = list(pool.map(lambda j: run(j[0], j[1], out, args.extra.split()), jobs))
    (out / "sweep.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\n{len(jobs)} runs in {time.time() - t0:.0f} s")
    print(f"{'variant':18s} {'seed':>4s} {'confident':>9s} {'classes':>7s} {'train s':>8s}")
    for r in sorted(results, key=lambda r: -r.get("confident_share", -1)):
        print(f"{r['name']:18s} {r['seed']:4d} {r.get('confident_share', float('nan')):9.3f} "
              f"{r.get('classes_present', 0):7d} {r.get('train_s', float('nan')):8.1f}")


if __name__ == "__main__":
    main()
