"""EMA length chosen after training (EDM2's post-hoc EMA, dff.posthoc_ema) on the digits recipe: one run per
length and seed with snapshots of two power-function EMAs (sigma_rel 0.05 and 0.10), then exports for a range of
sigma_rel reconstructed from them, each scored with FID/KID (digits features, 1,000 samples against the 1,797
digits; DPM-Solver++(2M) 20 steps), next to the run's own export (dff.ema's warm-up average, gamma ~8 early on).

    python benchmarks/studies/posthoc_ema.py [--steps 800 1600] [--seeds 0 1] [--sigma-rels 0.03 0.05 ...]
                                             [--out runs/posthoc_ema] [dff fit overrides]

Writes <out>/posthoc_ema.json and <out>/posthoc_ema.png (FID against sigma_rel, one line per run).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from dff import fit  # noqa: E402
from dff.posthoc_ema import export_posthoc  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for benchmarks.common
from benchmarks.common import recipe_args, score_digits, write_study  # noqa: E402


def plot(rows: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for key in dict.fromkeys((r["steps"], r["seed"]) for r in rows):
        r = sorted((x for x in rows if (x["steps"], x["seed"]) == key and x["sigma_rel"] is not None),
                   key=lambda x: x["sigma_rel"])
        line = ax.plot([x["sigma_rel"] for x in r], [x["fid"] for x in r], "o-", label=f"{key[0]} steps, seed {key[1]}")
        own = next(x for x in rows if (x["steps"], x["seed"]) == key and x["sigma_rel"] is None)
        ax.axhline(own["fid"], color=line[0].get_color(), ls=":", lw=1)
    ax.set(xlabel="sigma_rel (EMA length / run length)", ylabel="FID (digits features)", yscale="log",
           title="post-hoc EMA (dotted: the run's own EMA)")
    ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, nargs="+", default=[800, 1600])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--sigma-rels", type=float, nargs="+", default=[0.03, 0.05, 0.08, 0.12, 0.18, 0.25])
    p.add_argument("--snapshots", type=int, default=16, help="snapshots per run (every steps / N steps)")
    p.add_argument("--out", default="runs/posthoc_ema")
    args, overrides = p.parse_known_args()
    out = Path(args.out)
    rows = []
    for steps in args.steps:
        for seed in args.seeds:
            root = out / f"{steps}steps_seed{seed}"
            cli = fit(recipe_args(steps, root, seed) + ["--posthoc_ema.every_n_steps", str(steps // args.snapshots),
                                                        *overrides])
            run = Path(cli.trainer.log_dir)
            exports = [(None, run / "export")] + list(zip(args.sigma_rels, export_posthoc(run, args.sigma_rels)))
            for s, export in exports:
                rows.append({"steps": steps, "seed": seed, "sigma_rel": s, **score_digits(export, 20)})
                print(json.dumps(rows[-1]), flush=True)
    write_study(out, "posthoc_ema", overrides, rows, plot)


if __name__ == "__main__":
    main()
