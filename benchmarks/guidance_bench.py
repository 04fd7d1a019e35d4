"""Class-conditional digits with classifier-free guidance: does a requested class come out?

    python benchmarks/guidance_bench.py [--run RUN_DIR] [--out runs/guidance] [--per-class 50]

Trains configs/pixel_digits.yaml with model.num_classes=10 (unless --run names a finished run),
then for each guidance scale generates --per-class samples of every class (DDIM 50, seed 0) and
labels them with two judges trained on the real digits: the shipped DigitsFeatures CNN and the
MLP of benchmarks/digit_classifier.py. Reports the share labelled as the requested class.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from digit_classifier import train_classifier  # noqa: E402

from dff import fit  # noqa: E402
from dff.evaluation import DigitsFeatures  # noqa: E402
from dff.pretrained import load_pretrained  # noqa: E402
from dff.viz import save_grid  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default=None)
    ap.add_argument("--out", default="runs/guidance")
    ap.add_argument("--per-class", type=int, default=50)
    ap.add_argument("--scales", type=float, nargs="+", default=[1.0, 2.0, 4.0])
    args = ap.parse_args()
    res: dict = {}
    if args.run is None:
        t0 = time.time()
        cli = fit(["--config", str(ROOT / "configs/pixel_digits.yaml"), "--model.num_classes", "10",
                   "--trainer.default_root_dir", args.out, "--trainer.enable_progress_bar", "false"])
        res["train_s"], run = time.time() - t0, Path(cli.trainer.log_dir)
    else:
        run = Path(args.run)
    model = load_pretrained(run).eval()
    cnn = DigitsFeatures.pretrained().eval()
    mlp, _ = train_classifier(model.hparams.image_size)
    y = torch.arange(10).repeat_interleave(args.per_class)
    res["run"], res["scales"] = str(run), {}
    for s in args.scales:
        x = model.sample(len(y), "ddim", steps=50, seed=0, labels=y, guidance=s, progress=False)
        with torch.no_grad():
            by_cnn = cnn.classify(x).argmax(1)
        by_mlp = torch.as_tensor(mlp.predict(x[:, :1].flatten(1).numpy()))
        per_class = [(by_cnn[y == c] == c).float().mean().item() for c in range(10)]
        res["scales"][s] = {"cnn_agrees": (by_cnn == y).float().mean().item(),
                            "mlp_agrees": (by_mlp == y).float().mean().item(), "cnn_per_class": per_class}
        print(f"guidance {s:4.1f}: labelled as requested {res['scales'][s]['cnn_agrees']:.1%} (CNN), "
              f"{res['scales'][s]['mlp_agrees']:.1%} (MLP); worst class {min(per_class):.0%}", flush=True)
        first8 = (torch.arange(10).view(1, -1) * args.per_class + torch.arange(8).view(-1, 1)).reshape(-1)
        save_grid(x[first8], Path(args.out) / f"classes_guidance_{s:g}.png", nrow=10)  # a column per class
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "guidance.json").write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
