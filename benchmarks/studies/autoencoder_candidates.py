"""Which autoencoder for the latent demo? Candidates side by side: their training step's time (interleaved in one
process), then each trained as configs/autoencoder_demo.yaml trains (L1 + 1e-6 KL, Adam lr 1e-3, batch 16, flips)
and scored by what predicts the latent demo: the texture judge on its reconstructions of 256 real training crops
(the share it recognises and the histogram; grass is the texture an autoencoder loses first), and the held-out
PSNR / SSIM.

    python benchmarks/studies/autoencoder_candidates.py [--steps 600] [--size 64] [--time-rounds 6]
        [--candidates 32,64,64 p2:64,64 ...] [--out runs/autoencoder_candidates.json]

A candidate is `[pP:]W1,W2,...[/cC]`: patch size P (default 1), block widths W (f = P 2^(levels - 1)) and C latent
channels (default 4); GroupNorm with 16 groups, no mid-block attention, one block per level, as the demo's.
Absolute times are for the machine it runs on (the script prints it).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from dff.autoencoder_module import AutoencoderModule
from dff.autoencoders import KLAutoencoder, to_image_space, to_model_space
from dff.data.builtin import TEXTURES, PhotoPatches
from dff.evaluation import TextureFeatures
from dff.evaluation.reconstruction import evaluate_autoencoder, reconstruction_images


def parse(spec: str) -> dict:
    """'p2:64,64/c16' -> dict(patch_size=2, block_out_channels=(64, 64), latent_channels=16)."""
    patch, rest = (spec[1:].split(":", 1) if spec.startswith("p") else ("1", spec))
    widths, _, c = rest.partition("/c")
    return dict(patch_size=int(patch), block_out_channels=tuple(int(w) for w in widths.split(",")),
                latent_channels=int(c or 4))


def build(spec: str, size: int, seed: int) -> AutoencoderModule:
    torch.manual_seed(seed)
    return AutoencoderModule(size, 1, **parse(spec), layers_per_block=1, norm_num_groups=16, mid_attention=False,
                             reconstruction="l1", kl_weight=1e-6, lr=1e-3)


def batches(size: int, seed: int, batch: int = 16):
    """Random crops of the textures' training parts with both flips, as the demo's data."""
    ds = PhotoPatches("train", size, 1, repeat=256, hflip=True, vflip=True, seed=seed, source="textures")
    g = torch.Generator().manual_seed(seed)
    while True:
        for idx in torch.randperm(len(ds), generator=g).split(batch):
            if len(idx) == batch:
                yield {"image": torch.stack([ds[int(i)]["image"] for i in idx])}


def step(m: AutoencoderModule, opt: torch.optim.Optimizer, batch: dict) -> float:
    loss = m.training_step(batch, 0)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()


def step_times(specs: list[str], size: int, rounds: int) -> dict:
    """Median ms of one training step per candidate, all in one process, in alternating order per round."""
    models = {s: build(s, size, 0) for s in specs}
    opts = {s: m.configure_optimizers() for s, m in models.items()}  # Adam alone: the rate is constant
    batch = next(batches(size, 0))
    ms: dict = {s: [] for s in specs}
    for r in range(rounds):
        for s in (specs if r % 2 else specs[::-1]):
            t = time.perf_counter()
            step(models[s], opts[s], batch)
            ms[s].append(1000 * (time.perf_counter() - t))
    return {s: {"step_ms": sorted(v[1:])[len(v[1:]) // 2], "params_M": round(sum(
        p.numel() for p in models[s].vae.parameters()) / 1e6, 3)} for s, v in ms.items()}


def real_crops(size: int) -> torch.Tensor:
    """256 random training crops (seed 2), the judge's yardstick: (256, 1, size, size) in [0, 1]."""
    ds = PhotoPatches("train", size, 1, repeat=86, seed=2, source="textures")
    return torch.stack([ds[i]["image"] for i in range(256)])


@torch.no_grad()
def score(m: AutoencoderModule, real: torch.Tensor, held: torch.Tensor, judge: TextureFeatures) -> dict:
    """The judge on m's reconstructions of the real crops, and m's PSNR / SSIM on the held-out patches."""
    ae = KLAutoencoder(m.vae)
    labels = judge.recognise(to_image_space(ae.decode(ae.encode(to_model_space(real)))))
    return {"judge_on_reconstructions_of_256_training_crops": {
                "recognised": (labels >= 0).float().mean().item(),
                "histogram": {t: int((labels == k).sum()) for k, t in enumerate(TEXTURES)}},
            "heldout": evaluate_autoencoder(ae, held)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--candidates", nargs="+", default=["32,64,64", "p2:64,64", "p2:32,64", "16,32,64"])
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--time-rounds", type=int, default=6)
    ap.add_argument("--judge", default=None, help="texture judge weights (default: the shipped ones)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("runs/autoencoder_candidates.json"))
    args = ap.parse_args()
    if args.time_rounds < 2:
        raise SystemExit(f"--time-rounds {args.time_rounds}: at least 2 (the first round is warm-up)")
    from dff.report import cpu_model

    judge = TextureFeatures.pretrained(args.judge)
    if judge.input_size[0] != args.size:
        raise SystemExit(f"the texture judge takes {judge.input_size[0]}-pixel crops, --size is {args.size}: "
                         "train one with `python scripts/train_texture_features.py --size SIZE --out FILE` "
                         "(--judge FILE)")
    real, held = real_crops(args.size), reconstruction_images("textures", 1, args.size)
    res: dict = {"machine": f"{cpu_model()}, {torch.get_num_threads()} torch threads", "steps": args.steps,
                 "size": args.size, "seed": args.seed,
                 "judge_on_the_real_crops": (judge.recognise(real) >= 0).float().mean().item(),
                 "candidates": step_times(args.candidates, args.size, args.time_rounds)}
    for spec in args.candidates:
        m, data = build(spec, args.size, args.seed), batches(args.size, args.seed)
        opt, t0 = m.configure_optimizers(), time.time()
        for _ in range(args.steps):
            loss = step(m, opt, next(data))
        m.eval()
        res["candidates"][spec].update(train_s=round(time.time() - t0, 1), final_loss=loss,
                                       **score(m, real, held, judge))
        print(spec, json.dumps(res["candidates"][spec]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
