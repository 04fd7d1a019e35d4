"""Sampling speed: DPM-Solver++(2M) images/s of the configs' U-Nets in float32, channels_last and bf16 autocast, the
variants interleaved in one process (the machine's speed drifts; see interleaved_speed.py).

    python benchmarks/speed/sample_speed.py [--configs pixel_digits latent_demo] [--variants fp32 cl bf16 bf16_cl]
                                            [--batch 64] [--steps 20] [--rounds 5] [--out FILE.json]

Each variant has its own copy of the model (the same random weights: speed does not depend on them); round r
draws one batch with each variant, in alternating order, and the median time per batch is compared. The latent
configs' U-Nets run on their latent shape (the decoder is not timed). bf16: the sampler's network calls under
torch.autocast (float32 sampler arithmetic), what a CPU with AMX-bf16 or a GPU would use.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for benchmarks.common
from benchmarks.common import speed_networks  # noqa: E402

VARIANTS = {"fp32": (False, False), "cl": (True, False), "bf16": (False, True), "bf16_cl": (True, True)}


def build(config: str, channels_last: bool):
    from dff.models.diffusion_model import DiffusionModel

    torch.manual_seed(0)
    kw = {k: v for k, v in speed_networks()[config].items() if k != "latent"}
    model = DiffusionModel(timesteps=1000, **kw).eval()
    if channels_last:
        model.speed_up(channels_last=True)
    return model


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--configs", nargs="+", default=["pixel_digits", "latent_demo"])
    ap.add_argument("--variants", nargs="+", default=["fp32", "cl", "bf16"], choices=list(VARIANTS))
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds (after one untimed)")
    ap.add_argument("--out", default=None, help="write the result as JSON here")
    args = ap.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    result = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu", "torch": torch.__version__,
              "threads": torch.get_num_threads(), "batch": args.batch, "sampler": "dpmpp_2m", "steps": args.steps,
              "rounds": args.rounds, "configs": {}}
    for config in args.configs:
        models = {v: build(config, VARIANTS[v][0]).to(device) for v in args.variants}
        times: dict[str, list[float]] = {v: [] for v in args.variants}
        for r in range(args.rounds + 1):
            order = args.variants if r % 2 == 0 else list(reversed(args.variants))
            for v in order:
                bf16 = VARIANTS[v][1]
                ctx = torch.autocast(device, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
                if device == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                with ctx:
                    models[v].sample(args.batch, "dpmpp_2m", steps=args.steps, seed=r, progress=False)
                if device == "cuda":
                    torch.cuda.synchronize()
                if r > 0:
                    times[v].append(time.perf_counter() - t0)
        rows = {}
        for v in args.variants:
            med = statistics.median(times[v])
            rows[v] = {"seconds_per_batch": round(med, 4), "images_per_s": round(args.batch / med, 2)}
        base = rows[args.variants[0]]["images_per_s"]
        for v in args.variants:
            rows[v]["ratio_to_" + args.variants[0]] = round(rows[v]["images_per_s"] / base, 3)
        result["configs"][config] = rows
        print(config, json.dumps(rows))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
