"""Class-conditional digits with classifier-free guidance: does a requested class come out, and at what cost
in diversity?

    python benchmarks/studies/guidance.py [--label-dropouts 0.1 0.2] [--runs RUN_DIR ...] [--out runs/guidance]
        [--per-class 50] [--scales 0 0.5 1 1.5 2 3 4] [--intervals 0.28,5.42] [--sampler dpmpp_2m --steps 20]

Trains configs/pixel_digits.yaml with model.num_classes=10, once per label dropout (unless --runs names
finished runs), then for each guidance scale, guided at every step and only inside each noise interval
lo < sigma <= hi (Kynkaanniemi et al. 2024), generates --per-class samples of every class (seed 0) and
measures: the share labelled as the requested class by two judges trained on the real digits (the shipped
DigitsFeatures CNN and the MLP of benchmarks/common.py), and FID/KID of the class-balanced
samples against the real digits (digits features): fidelity to the class against diversity. Writes
<out>/guidance.json and <out>/guidance_chart.png (share against FID).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from dff import fit
from dff.data import load_digits_tensor
from dff.evaluation import DigitsFeatures, evaluate_generation
from dff.pretrained import load_pretrained
from dff.viz import save_grid

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for benchmarks.common
from benchmarks.common import DIGITS_CONFIG, train_classifier  # noqa: E402


def measure(model, y, scale: float, interval, args, cnn, mlp, reference) -> dict:
    x = model.sample(len(y), args.sampler, steps=args.steps, seed=0, labels=y, guidance=scale,
                     guidance_interval=interval, progress=False)
    with torch.no_grad():
        by_cnn = cnn.classify(x).argmax(1)
    by_mlp = torch.as_tensor(mlp.predict(x[:, :1].flatten(1).numpy()))
    per_class = [(by_cnn[y == c] == c).float().mean().item() for c in range(10)]
    r = evaluate_generation(x, reference, "digits")
    first8 = (torch.arange(10).view(1, -1) * args.per_class + torch.arange(8).view(-1, 1)).reshape(-1)
    return {"cnn_agrees": (by_cnn == y).float().mean().item(), "mlp_agrees": (by_mlp == y).float().mean().item(),
            "cnn_worst_class": min(per_class), "fid": r["fid"], "kid": r["kid_mean"],
            "kid_std": r["kid_std"]}, x[first8]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", nargs="+", default=None, help="finished class-conditional runs (instead of training)")
    ap.add_argument("--label-dropouts", type=float, nargs="+", default=[0.1, 0.2])
    ap.add_argument("--out", default="runs/guidance")
    ap.add_argument("--per-class", type=int, default=50)
    ap.add_argument("--scales", type=float, nargs="+", default=[0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0])
    ap.add_argument("--intervals", nargs="*", default=["0.28,5.42"], help="noise intervals lo,hi to guide in")
    ap.add_argument("--sampler", default="dpmpp_2m")
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    out = Path(args.out)
    runs = {}
    if args.runs is None:
        for p in args.label_dropouts:
            t0 = time.time()
            cli = fit(["--config", str(DIGITS_CONFIG), "--model.num_classes", "10",
                       "--model.label_dropout", str(p), "--trainer.default_root_dir", str(out / f"dropout_{p:g}"),
                       "--trainer.enable_progress_bar", "false", "--samples.every_n_steps", "0"])
            runs[p] = Path(cli.trainer.log_dir)
            print(f"label dropout {p:g}: trained in {time.time() - t0:.0f} s", flush=True)
    else:
        runs = {float(load_pretrained(r).hparams.label_dropout): Path(r) for r in args.runs}
    cnn = DigitsFeatures.pretrained().eval()
    mlp, _ = train_classifier(16)
    reference = load_digits_tensor(16, 1)[0]
    y = torch.arange(10).repeat_interleave(args.per_class)
    intervals = [None] + [tuple(float(v) for v in iv.split(",")) for iv in args.intervals]
    rows = []
    for p, run in runs.items():
        model = load_pretrained(run).eval()
        for iv in intervals:
            for s in args.scales:
                if iv is not None and s == 1.0:
                    continue  # the conditional prediction either way
                row, grid = measure(model, y, s, iv, args, cnn, mlp, reference)
                rows.append({"label_dropout": p, "interval": iv, "scale": s, **row})
                where = "every step" if iv is None else f"{iv[0]:g} < sigma <= {iv[1]:g}"
                print(f"dropout {p:g}, guidance {s:3.1f} ({where}): as requested {row['cnn_agrees']:.1%} (CNN), "
                      f"{row['mlp_agrees']:.1%} (MLP), worst class {row['cnn_worst_class']:.0%}; FID {row['fid']:.2f}, "
                      f"KID {row['kid']:.4f} +- {row['kid_std']:.4f}", flush=True)
                tag = "all" if iv is None else f"{iv[0]:g}-{iv[1]:g}"
                save_grid(grid, out / f"classes_dropout{p:g}_{tag}_guidance_{s:g}.png", nrow=10)  # a column per class
    out.mkdir(parents=True, exist_ok=True)
    res = {"runs": {str(k): str(v) for k, v in runs.items()}, "sampler": f"{args.sampler} {args.steps}", "rows": rows}
    (out / "guidance.json").write_text(json.dumps(res, indent=1) + "\n")
    chart(rows, out / "guidance_chart.png")


def chart(rows: list[dict], path: Path) -> None:
    """Share labelled as requested (x) against FID (y), one line per label dropout and interval, scales marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    for p, iv in sorted({(r["label_dropout"], r["interval"] or ()) for r in rows}):
        mine = [r for r in rows if r["label_dropout"] == p]
        # scale 1 is the conditional prediction whatever the interval: measured once, on every line
        line = sorted((r for r in mine if (r["interval"] or ()) == iv or r["scale"] == 1.0), key=lambda r: r["scale"])
        label = f"dropout {p:g}, " + ("every step" if not iv else f"{iv[0]:g} < sigma <= {iv[1]:g}")
        ax.plot([r["cnn_agrees"] for r in line], [r["fid"] for r in line], "o-" if not iv else "s--", label=label)
        for r in line:
            ax.annotate(f"{r['scale']:g}", (r["cnn_agrees"], r["fid"]), fontsize=6, xytext=(3, 3),
                        textcoords="offset points")
    ax.set(yscale="log", xlabel="labelled as the requested class (digits CNN)", ylabel="FID (digits features)",
           title="classifier-free guidance: class fidelity against diversity")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
