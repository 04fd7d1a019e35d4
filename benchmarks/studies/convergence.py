"""Quality against training time: the digits recipe (configs/pixel_digits.yaml, as `dff demo` trains it) on this
machine, its EMA weights saved after 0.5, 1, 2, 4 and 8 minutes of training, each scored with FID/KID (digits
features, 1,000 samples against the 1,797 digits) at DPM-Solver++(2M) 10 and 20 steps.

    python benchmarks/studies/convergence.py [--minutes 0.5 1 2 4 8] [--seeds 0] [--out runs/convergence] [overrides]

By the clock (--minutes): one run per seed at a constant learning rate after the warm-up (`--model.lr_decay
none` is set, since the recipe's linear decay is tied to the run's length) and a fixed EMA decay, so its state
after t minutes is what a constant-rate t-minute run ends with. Extra arguments are `dff fit` overrides (e.g.
--model.lr 2e-3) for trying recipes against the same clock. By length (--steps 800 1600): one run per length,
each with the recipe's own schedule (its linear decay to 0 at that length; `--model.lr_decay none` for the
constant rate), its measured training minutes recorded. Writes <out>/convergence.json and
<out>/convergence.png (FID against minutes, log-log).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import lightning as L
import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from dff import fit  # noqa: E402
from dff.pretrained import save_pretrained  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for benchmarks.common
from benchmarks.common import recipe_args, score_digits, write_study  # noqa: E402


class Snapshots(L.Callback):
    """Export the EMA weights when the training clock (from the first step, snapshots not counted) passes each mark."""

    def __init__(self, minutes: list[float], out: Path):
        self.marks, self.out, self.taken = sorted(minutes), out, []

    def on_train_start(self, trainer, pl_module) -> None:
        self.clock, self.last = 0.0, time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.clock += time.perf_counter() - self.last
        if len(self.taken) < len(self.marks) and self.clock >= 60 * self.marks[len(self.taken)]:
            m = self.marks[len(self.taken)]
            save_pretrained(pl_module, self.out / f"{m:g}min")
            images = trainer.global_step * pl_module.global_batch()
            self.taken.append({"minutes": m, "step": trainer.global_step, "images": images})
            print(f"{m:g} min: step {trainer.global_step}", flush=True)
            trainer.should_stop = len(self.taken) == len(self.marks)
        self.last = time.perf_counter()


def plot(rows: list[dict], path: Path) -> None:
    """FID against training minutes (log-log), one line per seed and sampler."""
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for seed in dict.fromkeys(r["seed"] for r in rows):
        for steps, style in ((10, "o--"), (20, "s-")):
            r = [x for x in rows if x["seed"] == seed and x["sampler_steps"] == steps]
            ax.plot([x["minutes"] for x in r], [x["fid"] for x in r], style, label=f"seed {seed}, DPM-Solver++ {steps}")
    minutes = sorted({r["minutes"] for r in rows})
    ax.set(xscale="log", yscale="log", xlabel="training minutes (this machine)", ylabel="FID (digits features)",
           title="digits recipe: quality against training time")
    ax.set_xticks(minutes, [f"{m:.2g}" for m in minutes])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, nargs="+", default=[0.5, 1, 2, 4, 8])
    p.add_argument("--steps", type=int, nargs="+", default=None,
                   help="one run per length instead of snapshots by the clock (recipes with a length-tied schedule)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--out", default="runs/convergence")
    args, overrides = p.parse_known_args()
    out = Path(args.out)
    rows = []
    for seed in args.seeds:
        snaps = out / f"seed{seed}"
        taken = []
        for length in args.steps or [1_000_000]:
            root = snaps / f"{length}steps" if args.steps else snaps
            clock = [] if args.steps else ["--model.lr_decay", "none"]  # snapshots of one run: no length-tied decay
            cli = fit(recipe_args(length, root, seed) + [*clock, *overrides], run=False)
            cb = Snapshots([] if args.steps else args.minutes, snaps)
            cli.trainer.callbacks.append(cb)
            cli.trainer.fit(cli.model, datamodule=cli.datamodule)
            if args.steps:  # the run's end: its EMA weights and its training clock
                minutes = round(cb.clock / 60, 3)
                save_pretrained(cli.model, snaps / f"{minutes:g}min")
                cb.taken.append({"minutes": minutes, "step": length, "images": length * cli.model.global_batch()})
                print(f"{length} steps: {minutes:g} min", flush=True)
            taken += cb.taken
        for snap in taken:
            for steps in (10, 20):
                scores = score_digits(snaps / f"{snap['minutes']:g}min", steps)
                rows.append({"seed": seed, **snap, "sampler_steps": steps, **scores})
                print(json.dumps(rows[-1]), flush=True)
    write_study(out, "convergence", overrides, rows, plot)


if __name__ == "__main__":
    main()
