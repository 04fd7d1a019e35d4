"""Train the digits feature extractor used by `dff eval` (FID/KID) and write its shipped weights.

    python scripts/train_digits_features.py            # writes src/dff/evaluation/digits_features.{safetensors,json}

scikit-learn's 1,797 digits, upsampled to 16x16 (dff.data.load_digits_tensor), are split 75/25,
stratified by class with a fixed seed (dff.evaluation.features.digits_split); the CNN trains on
the 75% with random 1-pixel shifts and its accuracy on the held-out 25% is printed and stored in
the JSON beside the weights. Runs single-threaded on the CPU so that a seed gives the same
weights on any machine with the same torch version (about a minute).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from dff.data import load_digits_tensor
from dff.evaluation.features import DIGITS_WEIGHTS, DigitsFeatures, digits_split


def shift(x: torch.Tensor, g: torch.Generator, max_shift: int = 1) -> torch.Tensor:
    """Each image moved by a random integer (dy, dx) in [-max_shift, max_shift]^2, zero fill."""
    b, _, h, w = x.shape
    m = max_shift
    padded = F.pad(x, (m, m, m, m))
    dy = torch.randint(0, 2 * m + 1, (b,), generator=g)
    dx = torch.randint(0, 2 * m + 1, (b,), generator=g)
    rows = (dy[:, None] + torch.arange(h)[None]).view(b, 1, h, 1).expand(b, x.shape[1], h, w + 2 * m)
    out = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w)[None]).view(b, 1, 1, w).expand(b, x.shape[1], h, w)
    return out.gather(3, cols)


@torch.no_grad()
def accuracy(model: DigitsFeatures, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return (model.classify(x).argmax(1) == y).float().mean().item()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=DIGITS_WEIGHTS, help="safetensors file to write (JSON beside it)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    args = p.parse_args()

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    images, labels = load_digits_tensor(16, 1)
    train_idx, test_idx = digits_split(labels, seed=args.seed)
    xtr, ytr = images[train_idx], labels[train_idx]
    xte, yte = images[test_idx], labels[test_idx]

    model = DigitsFeatures()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    steps = args.epochs * -(-len(xtr) // args.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps, pct_start=0.2)
    t0 = time.time()
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(xtr), generator=g)
        total = 0.0
        for i in range(0, len(xtr), args.batch_size):
            j = perm[i:i + args.batch_size]
            loss = F.cross_entropy(model.classify(shift(xtr[j], g)), ytr[j], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(j)
        if (epoch + 1) % 5 == 0 or epoch == args.epochs - 1:
            print(f"epoch {epoch + 1:3d}  loss {total / len(xtr):.4f}"
                  f"  held-out accuracy {accuracy(model, xte, yte):.4f}  ({time.time() - t0:.0f} s)")

    acc = accuracy(model, xte, yte)
    print(f"held-out accuracy {acc:.4f} ({len(test_idx)} digits), train accuracy {accuracy(model, xtr, ytr):.4f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(args.out))  # no metadata: its key order varies, and the JSON holds it
    info = {
        "accuracy": round(acc, 4),
        "split": {"method": "sklearn train_test_split, stratified by class", "test_fraction": 0.25,
                  "random_state": args.seed, "n_train": len(train_idx), "n_heldout": len(test_idx)},
        "seed": args.seed,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "augmentation": "random integer shifts of up to 1 pixel (16x16), zero fill",
        "data": "sklearn.datasets.load_digits upsampled bilinearly to 16x16 (dff.data.load_digits_tensor)",
        "torch": torch.__version__,
    }
    args.out.with_suffix(".json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KB) and {args.out.with_suffix('.json').name}")


if __name__ == "__main__":
    main()
