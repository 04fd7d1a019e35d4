"""Training and sampling speed of each speed option, on and off, each variant in its own process.

    python benchmarks/speed/train_speed.py [--configs pixel_64 latent_maps_256] [--budget-s 300] [--out FILE.json]

Synthetic data of each config's shapes, made on the device (no download, no data loading: the step alone):
pixel_64 is the original's 64x64 U-Net (ConvNeXt, dim 64, mults 1,2,4,8) on 3x64x64 images; latent_maps_256 the
same U-Net on its cached latents, 4x32x32 (the VAE is not in the step when training from the latent cache);
pixel_digits the CPU demo (ADM, 1x16x16); latent_demo the latent demo's U-Net on its 4x16x16 latents (the
networks: benchmarks/common.py, speed_networks). Each variant runs in a fresh process through Lightning's Trainer, as
`dff fit` would, and reports training images/s and ms per step (median of the timed steps' windows), peak memory
(max_memory_allocated on a GPU, max RSS on the CPU), the time to the end of the first step (compile included),
FLOPs per image (forward + backward, counted by torch's FlopCounterMode at batch 1), the achieved FLOP/s and
its share of the device's peak (a bf16 matrix product measured here, or fp32 on the CPU), and sampling
images/s for DPM-Solver++(2M) 20 steps at batch 256 (EMA weights, under the variant's precision).

Variants are cumulative: fp32 (every option off) -> +cudnn_benchmark -> +tf32 -> +bf16 (autocast) ->
+channels_last (bf16_cl: the CUDA defaults) -> +compile (fast); fast_no_cl ablates channels_last under compile;
*_ckpt adds activation checkpointing (speed.checkpointing), ckpt alone on float32.
They run in priority order while the time budget lasts; a skipped or failed variant is a row with an error.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

T0 = time.perf_counter()  # this process's start, before torch is imported (as near as Python gets)
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for benchmarks.common
from benchmarks.common import RESULTS_DIR, build_model, speed_networks  # noqa: E402

ON = dict(cudnn_benchmark=True, tf32=True)
VARIANTS = {
    "fp32": dict(precision="32-true"),
    "cudnn": dict(precision="32-true", cudnn_benchmark=True),
    "tf32": dict(precision="32-true", **ON),
    "bf16": dict(precision="bf16-mixed", **ON),
    "bf16_cl": dict(precision="bf16-mixed", channels_last=True, **ON),
    "fast": dict(precision="bf16-mixed", channels_last=True, compile=True, **ON),
    "fast_no_cl": dict(precision="bf16-mixed", compile=True, **ON),
    "cl": dict(precision="32-true", channels_last=True),  # CPU: channels_last alone
    "ckpt": dict(precision="32-true", checkpointing=True),  # activation checkpointing alone
    "bf16_cl_ckpt": dict(precision="bf16-mixed", channels_last=True, checkpointing=True, **ON),
    "fast_ckpt": dict(precision="bf16-mixed", channels_last=True, compile=True, checkpointing=True, **ON),
}
# (config, variant, batch) in priority order: what the targets need first. On an NVIDIA H200 (2026-11-29) a
# process took 35 s for fp32, 60-100 s with cuDNN autotuning (33-59 s of it in the first step) and 137-154 s with
# compile (first step 102-124 s), so the default 330 s budget of gpu_check.sh reaches the first three rows; the
# rest need a larger SPEED_BUDGET_S or --variants (e.g. --configs pixel_64 --variants bf16_cl bf16_cl_ckpt --batch 16)
GPU_PLAN = [
    ("pixel_64", "fp32", 256), ("pixel_64", "fast", 256), ("pixel_64", "bf16_cl", 256),
    ("latent_maps_256", "fast", 512),
    ("pixel_64", "bf16_cl", 16), ("pixel_64", "bf16_cl_ckpt", 16), ("latent_maps_256", "bf16_cl", 8),
    ("pixel_64", "fast", 16), ("latent_maps_256", "bf16_cl", 512), ("pixel_64", "fast_ckpt", 256),
    ("pixel_64", "cudnn", 256), ("latent_maps_256", "fp32", 512), ("pixel_64", "bf16", 256), ("pixel_64", "tf32", 256),
    ("pixel_64", "fp32", 16), ("latent_maps_256", "fp32", 8), ("pixel_64", "fast_no_cl", 256),
]
CPU_PLAN = [
    ("pixel_digits", "fp32", 32), ("pixel_digits", "bf16", 32), ("pixel_digits", "cl", 32),
    ("pixel_digits", "bf16_cl", 32),
    ("pixel_64", "fp32", 16), ("pixel_64", "bf16", 16), ("pixel_64", "cl", 16), ("pixel_64", "ckpt", 16),
    ("latent_demo", "fp32", 32), ("latent_demo", "cl", 32), ("latent_demo", "bf16", 32), ("latent_demo", "bf16_cl", 32),
]


def device_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"


def flops_per_image(config: str) -> float:
    """Forward + backward FLOPs of one training image (dff.estimate.count_flops: batch 1, CPU, float32)."""
    from dff.estimate import count_flops

    return count_flops(build_model(config), from_cache=False)  # the latent config's model already takes latents


def peak_flops() -> tuple[float, str]:
    """The device's measured peak: a bf16 8192^3 matrix product on a GPU, fp32 2048^3 on the CPU (median of 10)."""
    cuda = torch.cuda.is_available()
    n, dtype = (8192, torch.bfloat16) if cuda else (2048, torch.float32)
    dev = "cuda" if cuda else "cpu"
    a, b = torch.randn(n, n, device=dev, dtype=dtype), torch.randn(n, n, device=dev, dtype=dtype)
    times = []
    for i in range(13):
        sync()
        t0 = time.perf_counter()
        a @ b
        sync()
        if i >= 3:
            times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times), f"{'bf16' if cuda else 'fp32'} {n}^3 matmul"


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run_one(config: str, variant: str, batch: int, steps: int, warmup: int, sample_batch: int,
            compile_backend: str | None) -> dict:
    """One variant in this process: train warmup + steps steps on a synthetic batch, then time sampling."""
    import lightning as L

    from dff.speed import Speed

    torch.manual_seed(0)
    cuda = torch.cuda.is_available()
    dev = torch.device("cuda" if cuda else "cpu")
    opts = dict(VARIANTS[variant])
    precision = opts.pop("precision")
    c = speed_networks()[config]
    model = build_model(config)
    key = "latent" if c.get("latent") else "image"
    shape = (batch, c["channels"], c["image_size"], c["image_size"])
    batches = [{key: torch.randn(shape, device=dev) if key == "latent" else torch.rand(shape, device=dev)}
               for _ in range(4)]  # latents ~ N(0, 1) (scaled cache), images in [0, 1]

    class Repeat(torch.utils.data.IterableDataset):
        def __iter__(self):
            i = 0
            while True:
                yield batches[i % len(batches)]
                i += 1

    marks: dict[str, float] = {}
    window: list[float] = []

    class Clock(L.Callback):
        def on_train_start(self, trainer, pl_module):
            sync()
            marks["start"] = time.perf_counter()
            print(f"STARTED {time.perf_counter() - T0:.1f}", flush=True)  # seconds since the process started

        def on_train_batch_end(self, trainer, pl_module, outputs, b, batch_idx):
            step = trainer.global_step
            if step == 1 or step >= warmup:
                sync()
                now = time.perf_counter()
                if step == 1:
                    marks["first"] = now - marks["start"]
                    print(f"FIRST {marks['first']:.1f}", flush=True)  # a timed-out parent still learns this
                if step >= warmup:
                    window.append(now)

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    speed = Speed(compile=opts.get("compile", False), compile_backend=compile_backend,
                  channels_last=opts.get("channels_last", False), tf32=opts.get("tf32", False),
                  cudnn_benchmark=opts.get("cudnn_benchmark", False), checkpointing=opts.get("checkpointing", False),
                  verbose=False)
    trainer = L.Trainer(accelerator="gpu" if cuda else "cpu", devices=1, precision=precision,
                        max_steps=warmup + steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[speed, Clock()], log_every_n_steps=50)
    loader = torch.utils.data.DataLoader(Repeat(), batch_size=None)
    trainer.fit(model, train_dataloaders=loader)
    dts = [b - a for a, b in zip(window, window[1:])]
    ms = statistics.median(dts) * 1e3
    train_peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    row = dict(device=device_name(), config=config, variant=variant, batch=batch, precision=precision,
               options=sorted(k for k, v in speed.chosen.items() if v is True), images_per_s=batch / ms * 1e3,
               ms_per_step=ms, ms_per_step_spread=[min(dts) * 1e3, max(dts) * 1e3], first_step_s=marks["first"],
               timed_steps=len(dts), peak_mem_gb=train_peak)
    # sampling: DPM-Solver++(2M) 20 steps with the EMA weights, under the variant's autocast
    if sample_batch:
        model.to(dev)
        autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision.startswith("bf16"))
        times = []
        for _ in range(2):  # the first run pays cuDNN's autotuning
            sync()
            t0 = time.perf_counter()
            with autocast:
                x = model.sample(sample_batch, "dpmpp_2m", steps=20, seed=0, progress=False)
            sync()
            times.append(time.perf_counter() - t0)
        assert torch.isfinite(x).all()
        row["sample_images_per_s"] = sample_batch / times[-1]
        row["sample_batch"] = sample_batch
    if not cuda:
        row["peak_mem_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # max RSS (kB -> GiB)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--configs", nargs="+", default=None, help="only these configs")
    ap.add_argument("--variants", nargs="+", default=None, help="only these variants")
    ap.add_argument("--batch", type=int, default=None, help="one batch size for every run (default: the plan's)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 20 on a GPU, 5 on the CPU)")
    ap.add_argument("--warmup", type=int, default=None, help="steps before timing (default 5 on a GPU, 2 on the CPU)")
    ap.add_argument("--sample-batch", type=int, default=None,
                    help="sampling batch (default 256 on a GPU, 0 = off on the CPU)")
    ap.add_argument("--compile-backend", default=None,
                    help="torch.compile backend (default inductor; aot_eager on the CPU)")
    ap.add_argument("--budget-s", type=float, default=600.0, help="stop starting variants after this many seconds")
    ap.add_argument("--timeout-s", type=float, default=150.0, help="limit for one variant's process")
    ap.add_argument("--compile-timeout-s", type=float, default=300.0, help="limit for a compiled variant's process")
    ap.add_argument("--out", default=None,
                    help="JSON file of the rows (default benchmarks/results/speed-<device>.json)")
    ap.add_argument("--plan", choices=["gpu", "cpu"], default=None, help="the variants to run (default: the device's)")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # a child process: config,variant,batch
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    steps = args.steps or (20 if cuda else 5)
    warmup = args.warmup or (5 if cuda else 2)
    sample_batch = args.sample_batch if args.sample_batch is not None else (256 if cuda else 0)
    backend = args.compile_backend or (None if cuda else "aot_eager")
    if args.one:
        config, variant, batch = args.one.split(",")
        row = run_one(config, variant, int(batch), steps, warmup, sample_batch, backend)
        print("ROW " + json.dumps(row), flush=True)
        return

    t_start = time.time()
    plan = [p for p in (GPU_PLAN if (args.plan or ("gpu" if cuda else "cpu")) == "gpu" else CPU_PLAN)
            if (args.configs is None or p[0] in args.configs) and (args.variants is None or p[1] in args.variants)]
    if args.batch:
        plan = list(dict.fromkeys((c, v, args.batch) for c, v, _ in plan))
    peak, peak_how = peak_flops()
    if cuda:
        torch.cuda.empty_cache()
    flops = {c: flops_per_image(c) for c in dict.fromkeys(p[0] for p in plan)}
    print(f"device: {device_name()}; peak {peak / 1e12:.2f} TFLOP/s ({peak_how}); torch {torch.__version__}",
          flush=True)
    for c, f in flops.items():
        print(f"{c}: {f / 1e9:.2f} GFLOP per training image (forward + backward)", flush=True)
    slug = "".join(ch if ch.isalnum() else "-" for ch in device_name()).strip("-")
    out = Path(args.out or RESULTS_DIR / f"speed-{slug}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for config, variant, batch in plan:
        left = args.budget_s - (time.time() - t_start)
        base = dict(device=device_name(), config=config, variant=variant, batch=batch)
        limit = min(args.compile_timeout_s if VARIANTS[variant].get("compile") else args.timeout_s, left)
        if left < 20:
            rows.append({**base, "error": "skipped: time budget spent"})
            continue
        cmd = [sys.executable, __file__, "--one", f"{config},{variant},{batch}", "--steps", str(steps),
               "--warmup", str(warmup), "--sample-batch", str(sample_batch)]
        if backend:
            cmd += ["--compile-backend", backend]
        t0 = time.time()
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=limit, env=env)
            found = [ln for ln in p.stdout.splitlines() if ln.startswith("ROW ")]
            if found:
                row = json.loads(found[-1][4:])
            else:
                tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
                row = {**base, "error": f"exit {p.returncode}: " + " | ".join(tail)}
        except subprocess.TimeoutExpired as e:
            row = {**base, "error": f"timed out after {limit:.0f} s" + progress(e.stdout)}
        row["process_s"] = time.time() - t0
        if "images_per_s" in row:
            row["flops_per_image"] = flops[config]
            row["tflops"] = row["images_per_s"] * flops[config] / 1e12
            row["share_of_peak"] = row["tflops"] * 1e12 / peak
            row["peak"] = f"{peak / 1e12:.2f} TFLOP/s ({peak_how})"
        rows.append(row)
        print(line(row), flush=True)
        out.write_text(json.dumps(rows, indent=1) + "\n")  # after every row: a killed run keeps what it measured
    out.write_text(json.dumps(rows, indent=1) + "\n")
    print(f"\n{table(rows)}\nwrote {out} ({time.time() - t_start:.0f} s)")


def progress(stdout: bytes | str | None) -> str:
    """How far a timed-out child got, from its STARTED and FIRST lines."""
    text = stdout.decode(errors="replace") if isinstance(stdout, bytes) else (stdout or "")
    marks = dict(ln.split()[:2] for ln in text.splitlines() if ln.startswith(("STARTED ", "FIRST ")))
    if "STARTED" not in marks:
        return " (before training started)"
    s = f" (training started {marks['STARTED']} s into the process; "
    return s + (f"first step done after {marks['FIRST']} s)" if "FIRST" in marks else "first step not done)")


def line(r: dict) -> str:
    if "error" in r:
        return f"{r['config']:16s} {r['variant']:10s} b{r['batch']:<4d} ERROR {r['error'][:300]}"
    s = (f"{r['config']:16s} {r['variant']:10s} b{r['batch']:<4d} {r['images_per_s']:9.1f} img/s "
         f"{r['ms_per_step']:8.2f} ms/step  peak {r['peak_mem_gb']:.2f} GB  first step {r['first_step_s']:.1f} s  "
         f"{r['tflops']:.1f} TFLOP/s ({100 * r['share_of_peak']:.0f}% of peak)")
    if "sample_images_per_s" in r:
        s += f"  sampling {r['sample_images_per_s']:.0f} img/s"
    return s


def table(rows: list[dict]) -> str:
    """Rows with their speed-up over the fp32 row of the same config and batch."""
    base = {(r["config"], r["batch"]): r["images_per_s"] for r in rows
            if r.get("variant") == "fp32" and "images_per_s" in r}
    out = []
    for r in rows:
        s = line(r)
        b = base.get((r["config"], r["batch"]))
        if b and "images_per_s" in r:
            s += f"  x{r['images_per_s'] / b:.2f} vs fp32"
        out.append(s)
    return "\n".join(out)


if __name__ == "__main__":
    main()
