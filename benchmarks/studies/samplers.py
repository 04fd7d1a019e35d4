"""Sample quality against sampling cost: FID and KID (offline digits features) of each sampler at
several step counts, on one trained digits model.

    python benchmarks/studies/samplers.py RUN_OR_WEIGHTS [--num 1000] [--out runs/quality]
        [--plot docs/img/fid_vs_steps.png]

The reference set is the 1,797 real digits at the model's resolution; features come from the small
CNN shipped in dff.evaluation (DigitsFeatures, trained on the digits). FID is biased upwards at
small N, so compare numbers only at one N; KID is unbiased. Every (sampler, steps) pair starts from
the same seeds. Prints a table and writes <out>/quality.json (and the plot).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from dff.data import load_digits_tensor
from dff.evaluation import compute_features, fid_from_features, get_extractor, kid_from_features
from dff.pretrained import load_pretrained

GRID: dict[str, list[int]] = {
    "ddim": [10, 20, 50, 100],
    "dpmpp_2m": [10, 20, 50],
    "dpmpp_2m_sde": [10, 20, 30, 50],
    "euler": [10, 20, 50, 100],
    "heun": [10, 20, 50],
    "ddpm": [1000],
}


def generate(model, sampler: str, steps: int, num: int, batch: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.cat([model.sample(min(batch, num - i), sampler, steps=None if sampler == "ddpm" else steps,
                                   generator=g, progress=False) for i in range(0, num, batch)])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("weights")
    ap.add_argument("--num", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/quality")
    ap.add_argument("--plot", default=None)
    ap.add_argument("--samplers", nargs="+", default=list(GRID))
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    model = load_pretrained(args.weights).eval()
    h = model.hparams
    extractor = get_extractor("digits")
    ref = compute_features(extractor, load_digits_tensor(h.image_size, h.channels)[0])
    rows = []
    for sampler in args.samplers:
        for steps in GRID[sampler]:
            t0 = time.time()
            x = generate(model, sampler, steps, args.num, args.batch, args.seed)
            secs = time.time() - t0
            f = compute_features(extractor, x)
            kid, kid_std = kid_from_features(f, ref, subset_size=min(1000, len(f)))
            rows.append(dict(sampler=sampler, steps=steps, fid=fid_from_features(f, ref), kid=kid, kid_std=kid_std,
                             seconds=secs))
            print(f"{sampler:9s} {steps:5d} FID {rows[-1]['fid']:8.3f}  KID {kid:.4f} ± {kid_std:.4f}  ({secs:.0f} s)",
                  flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res = {"weights": args.weights, "num": args.num, "seed": args.seed, "rows": rows,
           "machine": "CUDA " + torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"}
    (out / "quality.json").write_text(json.dumps(res, indent=2) + "\n")
    ddpm = [r["fid"] for r in rows if r["sampler"] == "ddpm"]
    dpm20 = [r["fid"] for r in rows if r["sampler"] == "dpmpp_2m" and r["steps"] == 20]
    if ddpm and dpm20:
        print(f"DPM-Solver++ 20 steps / DDPM 1000 steps FID: {dpm20[0] / ddpm[0]:.3f} (target <= 1.10)")
    if args.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for sampler in args.samplers:
            r = [x for x in rows if x["sampler"] == sampler]
            evals = [x["steps"] * (2 if sampler == "heun" else 1) for x in r]
            ax.plot(evals, [x["fid"] for x in r], "o-" if len(r) > 1 else "s", label=sampler)
        ax.set_xscale("log"), ax.set_xlabel("network evaluations"), ax.set_ylabel("FID (digits features)")
        ax.set_title(f"{args.num} samples vs the 1,797 real digits"), ax.legend(), ax.grid(alpha=0.3)
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        fig.tight_layout(), fig.savefig(args.plot, dpi=120)


if __name__ == "__main__":
    main()
