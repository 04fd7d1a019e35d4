"""Memory format and precision A/B on a noisy machine: the variants' training steps interleaved in one process.

    python benchmarks/speed/interleaved_speed.py [--configs pixel_digits latent_demo autoencoder_demo]
                                                 [--variants fp32 cl] [--rounds 60]

On a shared 2-core machine the speed of one process drifts by +-30% from minute to minute (the digits step took
221-335 ms in six alternating processes of benchmarks/speed/train_speed.py), which swamps a 15% effect. Here every
variant has its own copy of the network (same initial weights), and round r runs one training step of each
variant, in alternating order; the median of each variant's step times is compared, so slow minutes hit all
variants alike. A step is the network's forward and backward on a fixed random batch of the config's shape plus
AdamW (the diffusion loss's few element-wise operations and the EMA are the same for every variant and left out).

Variants: fp32 (contiguous, float32), cl (channels_last, float32), bf16 (bf16 autocast), bf16_cl. Configs: the
diffusion U-Nets of benchmarks/common.py's speed_networks (pixel_digits, latent_demo, pixel_64, latent_maps_256) and
autoencoder_demo (configs/autoencoder_demo.yaml's AutoencoderKL, batch 16 of 1x64x64).
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for benchmarks.common
from benchmarks.common import CONFIG_DIR, build_model, speed_networks  # noqa: E402

VARIANTS = {"fp32": (False, False), "cl": (True, False), "bf16": (False, True), "bf16_cl": (True, True)}


def build(config: str, batch: int | None) -> tuple[torch.nn.Module, tuple[int, ...], bool]:
    """(network, input shape, is_autoencoder) with the seed fixed, so that every variant starts from the same
    weights."""
    torch.manual_seed(0)
    if config == "autoencoder_demo":
        import inspect

        import yaml

        from dff.autoencoders import build_autoencoder_kl

        cfg = yaml.safe_load((CONFIG_DIR / "autoencoder_demo.yaml").read_text())
        known = inspect.signature(build_autoencoder_kl).parameters
        args = {k: v for k, v in cfg["model"]["init_args"].items() if k in known}
        c, size = cfg["data"]["channels"], cfg["data"]["image_size"]
        return build_autoencoder_kl(c, **args), (batch or cfg["data"]["batch_size"], c, size, size), True
    c = speed_networks()[config]
    return build_model(config).net, (batch or 32, c["channels"], c["image_size"], c["image_size"]), False


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--configs", nargs="+", default=["pixel_digits", "latent_demo", "autoencoder_demo"])
    ap.add_argument("--variants", nargs="+", default=["fp32", "cl"], choices=list(VARIANTS))
    ap.add_argument("--rounds", type=int, default=60, help="timed rounds (after 3 untimed ones)")
    ap.add_argument("--batch", type=int, default=None,
                    help="batch (default: 32 for the U-Nets, 16 for the autoencoder)")
    args = ap.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.rounds} rounds of interleaved steps")
    for config in args.configs:
        runs = {}
        for v in args.variants:
            net, shape, is_ae = build(config, args.batch)
            x = torch.randn(shape)
            if VARIANTS[v][0]:
                net.to(memory_format=torch.channels_last)
                x = x.contiguous(memory_format=torch.channels_last)
            runs[v] = (net, x, torch.optim.AdamW(net.parameters(), lr=1e-4), is_ae)
        times: dict[str, list[float]] = {v: [] for v in runs}
        g = torch.Generator().manual_seed(0)
        for r in range(args.rounds + 3):
            t = torch.randint(0, 1000, (shape[0],), generator=g)
            for v in (args.variants if r % 2 == 0 else args.variants[::-1]):
                net, x, opt, is_ae = runs[v]
                bf16 = torch.autocast("cpu", dtype=torch.bfloat16) if VARIANTS[v][1] else contextlib.nullcontext()
                t0 = time.perf_counter()
                with bf16:
                    out = net(x).sample if is_ae else net(x, t)
                loss = out.float().square().mean()
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                if r >= 3:
                    times[v].append(time.perf_counter() - t0)
        base = statistics.median(times[args.variants[0]])
        for v, ts in times.items():
            m = statistics.median(ts)
            q = statistics.quantiles(ts, n=4)
            print(f"{config:17s} {v:8s} b{shape[0]:<3d} {m * 1e3:7.1f} ms/step "
                  f"(quartiles {q[0] * 1e3:.0f}-{q[2] * 1e3:.0f})  x{base / m:.2f} vs {args.variants[0]}", flush=True)


if __name__ == "__main__":
    main()
