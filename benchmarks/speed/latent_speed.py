"""Latent against pixel diffusion at 256x256: training images/s and peak memory, one run.

    python benchmarks/speed/latent_speed.py [--setting 256|demo] [--batch 4] [--steps 5] [--device cpu]

Three variants of one training step (forward, L_simple, backward, AdamW, EMA), each measured in
its own subprocess so that peak memory is its own:
  pixel    the U-Net of configs/latent_maps_256.yaml (dim 64, mults 1,2,4,8, attention) on 256x256x3 pixels
  latent   the same U-Net on 32x32x4 latents of an autoencoder with Stable Diffusion's VAE
           architecture (f = 8; random weights built from its config: the same compute as
           stabilityai/sd-vae-ft-ema, nothing downloaded), encoding every batch
  cached   the latent model trained from cached latents (data.latent_cache): no encoder in the step
--setting demo measures the same three on the latent demo instead (configs/latent_demo.yaml's
U-Net on 32x32x4 latents of configs/autoencoder_demo.yaml's autoencoder, 128x128x1 images; pixel:
that U-Net on the 128x128 pixels): the caching speed-up of the demo.
Batches are random images (the data pipeline is not timed). Prints a table and the ratios.
Peak memory: peak RSS of the process on CPU; torch.cuda.max_memory_allocated on a GPU.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

SETTINGS = {  # image size, channels, U-Net, autoencoder (diffusers AutoencoderKL config)
    "256": dict(size=256, channels=3,
                unet=dict(dim=64, dim_mults=(1, 2, 4, 8), attention=True, schedule="linear", prediction="eps"),
                vae=dict(latent_channels=4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                         norm_num_groups=32)),  # Stable Diffusion's VAE
    "demo": dict(size=128, channels=1,
                 unet=dict(dim=32, dim_mults=(1, 2, 2), attention=False, schedule="cosine", prediction="v"),
                 vae=dict(latent_channels=4, block_out_channels=(32, 64, 64), layers_per_block=1,
                          norm_num_groups=16, mid_attention=False)),
}


def one(setting: str, variant: str, batch: int, steps: int, device: str, vae_dir: str) -> dict:
    """Time `steps` training steps (after 2 warm-up steps) of one variant; peak memory."""
    from dff.module import DiffusionModule

    torch.manual_seed(0)
    cfg = SETTINGS[setting]
    size, ch = cfg["size"], cfg["channels"]
    latent = variant in ("latent", "cached")
    m = DiffusionModule(image_size=size, channels=ch, autoencoder=vae_dir if latent else None,
                        latent_scale=0.18 if latent else None, **cfg["unet"]).to(device)
    m.train()
    opt = torch.optim.AdamW(m.net.parameters(), lr=1e-4)
    f, c = m.latent.factor, m.latent.channels
    if variant == "cached":
        batch_of = lambda: {"latent": torch.randn(batch, c, size // f, size // f, device=device)}  # noqa: E731
    else:
        batch_of = lambda: {"image": torch.rand(batch, ch, size, size, device=device)}  # noqa: E731
    times = []
    for i in range(steps + 2):
        b = batch_of()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = m.training_step(b, i)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        m.ema.update(m.net)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    sec = sum(times) / len(times)
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB (Linux)
    return {"variant": variant, "batch": batch, "s_per_step": sec, "images_per_s": batch / sec, "peak_mib": peak,
            "unet_params": sum(p.numel() for p in m.net.parameters()),
            "autoencoder_params": sum(p.numel() for p in m.latent.autoencoder.parameters())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--setting", default="256", choices=sorted(SETTINGS))
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--variants", default="pixel,latent,cached")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--vae-dir", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.setting, args.one, args.batch, args.steps, args.device, args.vae_dir)))
        return
    from dff.autoencoders import KLAutoencoder, build_autoencoder_kl

    cfg = SETTINGS[args.setting]
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        vae = build_autoencoder_kl(cfg["channels"], image_size=cfg["size"], **cfg["vae"])
        KLAutoencoder(vae).save_pretrained(Path(tmp) / "vae")
        rows = []
        for v in args.variants.split(","):
            out = subprocess.run([sys.executable, __file__, "--one", v, "--setting", args.setting,
                                  "--batch", str(args.batch), "--steps", str(args.steps), "--device", args.device,
                                  "--vae-dir", str(Path(tmp) / "vae")],
                                 capture_output=True, text=True)
            if out.returncode:
                sys.exit(out.stderr[-3000:])
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"{v:7s} {rows[-1]['images_per_s']:.3f} images/s  peak {rows[-1]['peak_mib']:.0f} MiB", flush=True)
    cuda = args.device.startswith("cuda")
    name = torch.cuda.get_device_name() if cuda else f"CPU ({torch.get_num_threads()} threads)"
    print(f"\nsetting {args.setting}: {cfg['size']}x{cfg['size']}x{cfg['channels']}, batch {args.batch}, "
          f"{args.steps} timed steps, {name}, torch {torch.__version__}\n")
    print("| variant | U-Net params | images/s | s/step | peak memory (MiB) |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['unet_params'] / 1e6:.1f} M | {r['images_per_s']:.3f} | {r['s_per_step']:.2f} | "
              f"{r['peak_mib']:.0f} |")
    by = {r["variant"]: r for r in rows}
    if "pixel" in by:
        for v in ("latent", "cached"):
            if v in by:
                print(f"{v} / pixel: {by[v]['images_per_s'] / by['pixel']['images_per_s']:.2f}x images/s, "
                      f"{by[v]['peak_mib'] / by['pixel']['peak_mib']:.2f}x peak memory")
    if "latent" in by and "cached" in by:
        print(f"caching speed-up: {by['cached']['images_per_s'] / by['latent']['images_per_s']:.2f}x images/s")


if __name__ == "__main__":
    main()
