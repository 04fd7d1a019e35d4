"""Our default digits recipe beside a well-known implementation at the same CPU budget.

    python benchmarks/studies/peer.py [--budget SECONDS] [--num 1000] [--variants diffusers ...] [--out runs/peer]

Ours: configs/pixel_digits.yaml trained as shipped (Lightning, 1400 steps; periodic sample grids off).
Peer: diffusers' UNet2DModel + DDPMScheduler trained by a plain PyTorch loop in the manner of diffusers'
unconditional training example (noise, random timesteps, scheduler.add_noise, MSE on eps, AdamW with
the example's betas and weight decay, gradient clipping at 1, diffusers' EMAModel with its warm-up),
on the same data (the 1,797 digits at 16x16, in [-1, 1]), batch 32, with a parameter count matched
to ours (block_out_channels (32, 32, 64), two ResNet layers per block; both counts are printed).

Budget: by default ours trains its 1400 steps and its training-loop time T (measured in this run) is
the budget of every peer variant: each trains for T seconds of wall-clock, however many steps that
is. --budget S gives every recipe, ours included, S seconds. --same-steps trains the peers for ours'
number of steps instead (times are then reported, not equalised). Run with one thread
(torch.set_num_threads(1)), so that times are comparable within a run.

Samplers: ours DDIM 50 and DPM-Solver++ (2M) 20 (model.sample, EMA weights); the peer diffusers'
DDPMScheduler (all 1000 steps) and DDIMScheduler (50 steps) on its EMA weights; extra peer variants
DDIM 50 only. --num samples each, every row from the same seeds (the same x_T for the deterministic
samplers), FID and KID against the real digits on the shipped digits CNN's features (as
benchmarks/studies/samplers.py). Prints a markdown table and writes <out>/peer.json.
"""
from __future__ import annotations

import torch

torch.set_num_threads(1)
torch.set_num_interop_threads(1)

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import dff  # noqa: E402
import lightning as L  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from dff import fit  # noqa: E402
from dff.data import load_digits_tensor  # noqa: E402
from dff.evaluation import compute_features, fid_from_features, get_extractor, kid_from_features  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for benchmarks.common
from benchmarks.common import DIGITS_CONFIG  # noqa: E402


# The peer's network: diffusers' UNet2DModel with its standard ResNet blocks (and its default
# attention in the middle block), three levels as ours, sized to ours' parameter count.
PEER_UNET = dict(sample_size=16, in_channels=1, out_channels=1, layers_per_block=2, block_out_channels=(32, 32, 64),
                 down_block_types=("DownBlock2D",) * 3, up_block_types=("UpBlock2D",) * 3)
# Training settings of the peer: those of diffusers' unconditional example (AdamW betas 0.95/0.999,
# weight decay 1e-6, eps 1e-8, clip grad norm 1, EMAModel max decay 0.9999 with warm-up inv_gamma 1,
# power 3/4; linear betas, T = 1000, eps prediction), except the learning rate: the example's 1e-4
# with 500 warm-up steps (then cosine decay) is meant for long runs, so the default peer takes ours
# (1e-3, 100 warm-up steps, then constant). Variants change one thing each.
PEER_BASE = dict(lr=1e-3, warmup=100, beta_schedule="linear", betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8,
                 clip=1.0, ema_max_decay=0.9999, ema_inv_gamma=1.0, ema_power=0.75)
VARIANTS = {
    "diffusers": {},
    "diffusers-lr1e-4": dict(lr=1e-4, warmup=500),  # the example's learning rate and warm-up
    "diffusers-cosine": dict(beta_schedule="squaredcos_cap_v2"),  # cosine betas, as ours
}


def n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


# ---------------------------------------------------------------------- ours
class LoopTimer(L.Callback):
    """Wall-clock of the training loop only (from on_train_start to on_train_end)."""

    def on_train_start(self, trainer, pl_module):
        self.t0 = time.perf_counter()

    def on_train_end(self, trainer, pl_module):
        self.seconds = time.perf_counter() - self.t0


def train_ours(out: Path, budget: float | None, seed: int):
    argv = ["--config", str(DIGITS_CONFIG), "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir",
            str(out / "ours"), "--samples.every_n_steps", "0", "--seed_everything", str(seed)]
    if budget is not None:  # train for the budget instead of the config's max_steps
        s = int(round(budget))
        # --model.lr_decay none: a run by the clock has no length to decay over
        argv += ["--trainer.max_steps", "-1", "--model.lr_decay", "none", "--trainer.max_time",
                 f"00:{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"]
    cli = fit(argv, run=False)
    timer = LoopTimer()
    cli.trainer.callbacks.append(timer)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return cli.model.eval(), cli.trainer.global_step, timer.seconds


def sample_ours(model, sampler: str, steps: int, num: int, batch: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.cat([model.sample(min(batch, num - i), sampler, steps=steps, generator=g, progress=False)
                      for i in range(0, num, batch)])


# ---------------------------------------------------------------------- peer
def train_peer(data: torch.Tensor, cfg: dict, budget: float | None, steps: int | None, seed: int, batch: int):
    """diffusers' UNet2DModel + DDPMScheduler, trained by the plain loop of diffusers' unconditional
    example, for `budget` seconds (or `steps` steps). data: (N, 1, 16, 16) in [-1, 1]."""
    from diffusers import DDPMScheduler, UNet2DModel
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    torch.manual_seed(seed)
    unet = UNet2DModel(**PEER_UNET)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule=cfg["beta_schedule"], prediction_type="epsilon")
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg["lr"], betas=cfg["betas"], weight_decay=cfg["weight_decay"],
                            eps=cfg["eps"])
    lr_sched = get_scheduler("constant_with_warmup", opt, num_warmup_steps=cfg["warmup"])
    ema = EMAModel(unet.parameters(), decay=cfg["ema_max_decay"], use_ema_warmup=True, inv_gamma=cfg["ema_inv_gamma"],
                   power=cfg["ema_power"])
    g = torch.Generator().manual_seed(seed)
    T = scheduler.config.num_train_timesteps
    unet.train()
    step, losses, perm, pos = 0, [], None, len(data)
    t0 = time.perf_counter()
    while (time.perf_counter() - t0 < budget) if steps is None else (step < steps):
        if pos + batch > len(data):  # a new epoch: reshuffle, drop the last incomplete batch (as ours)
            perm, pos = torch.randperm(len(data), generator=g), 0
        clean = data[perm[pos:pos + batch]]
        pos += batch
        noise = torch.randn(clean.shape, generator=g)
        t = torch.randint(0, T, (clean.shape[0],), generator=g)
        noisy = scheduler.add_noise(clean, noise, t)
        loss = F.mse_loss(unet(noisy, t).sample.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), cfg["clip"])
        opt.step()
        lr_sched.step()
        opt.zero_grad()
        ema.step(unet.parameters())
        step += 1
        losses.append(loss.item())
    seconds = time.perf_counter() - t0
    ema_unet = copy.deepcopy(unet).eval().requires_grad_(False)
    ema.copy_to(ema_unet.parameters())
    return ema_unet, scheduler, step, seconds, losses


@torch.no_grad()
def sample_peer(unet, train_scheduler, sampler: str, steps: int, num: int, batch: int, seed: int) -> torch.Tensor:
    """diffusers' DDPMScheduler (all its steps) or DDIMScheduler (`steps`, eta 0), their default
    settings (clip_sample, leading spacing), from the same x_T as ours for one seed."""
    from diffusers import DDIMScheduler, DDPMScheduler

    if sampler == "ddpm":
        sched = DDPMScheduler.from_config(train_scheduler.config)
        sched.set_timesteps(train_scheduler.config.num_train_timesteps)
    else:
        sched = DDIMScheduler.from_config(train_scheduler.config)
        sched.set_timesteps(steps)
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(0, num, batch):
        x = torch.randn((min(batch, num - i), 1, 16, 16), generator=g)
        for t in sched.timesteps:
            eps = unet(x, t).sample
            step = sched.step(eps, t, x, generator=g) if sampler == "ddpm" else sched.step(eps, t, x)
            x = step.prev_sample
        out.append((x / 2 + 0.5).clamp(0, 1))
    return torch.cat(out)


# ---------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", type=float, default=None,
                    help="training seconds for every recipe (default: ours' time for its 1400 steps, in this run)")
    ap.add_argument("--same-steps", action="store_true", help="train the peers for ours' number of steps instead")
    ap.add_argument("--num", type=int, default=1000, help="samples per row")
    ap.add_argument("--batch", type=int, default=500, help="sampling batch")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variants", nargs="+", default=["diffusers"], choices=list(VARIANTS))
    ap.add_argument("--peer-ddpm", action=argparse.BooleanOptionalAction, default=True,
                    help="also sample the main peer with DDPM, 1000 steps (the slowest row)")
    ap.add_argument("--out", default="runs/peer")
    args = ap.parse_args()
    warnings.filterwarnings("ignore", message=".*(does not have many workers|Found \\d+ module|deprecated).*")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()

    images = load_digits_tensor(16, 1)[0]
    extractor = get_extractor("digits")
    ref = compute_features(extractor, images)
    rows: list[dict] = []

    def score(recipe: str, params: int, steps: int, train_s: float, sampler: str, x: torch.Tensor, sample_s: float):
        f = compute_features(extractor, x)
        kid, kid_std = kid_from_features(f, ref, subset_size=min(1000, len(f)))
        rows.append(dict(recipe=recipe, params=params, steps=steps, train_seconds=train_s, sampler=sampler,
                         fid=fid_from_features(f, ref), kid=kid, kid_std=kid_std, sample_seconds=sample_s))
        r = rows[-1]
        print(f"{recipe:18s} {sampler:14s} FID {r['fid']:7.3f}  KID {kid:.4f} ± {kid_std:.4f}  "
              f"(sampling {sample_s:.0f} s)", flush=True)

    # ours
    model, our_steps, our_s = train_ours(out, args.budget, args.seed)
    our_params = n_params(model.net)
    budget = args.budget if args.budget is not None else our_s
    print(f"ours: {our_params:,} parameters, {our_steps} steps in {our_s:.1f} s ({our_steps / our_s:.2f} steps/s)",
          flush=True)
    torch.set_grad_enabled(False)
    for sampler, steps, name in [("ddim", 50, "DDIM 50"), ("dpmpp_2m", 20, "DPM-Solver++ 20")]:
        t0 = time.perf_counter()
        x = sample_ours(model, sampler, steps, args.num, args.batch, args.seed)
        score("dff (ours)", our_params, our_steps, our_s, name, x, time.perf_counter() - t0)
    del model

    # the peers
    data = images * 2 - 1
    batch = 32
    for vi, variant in enumerate(args.variants):
        cfg = {**PEER_BASE, **VARIANTS[variant]}
        torch.set_grad_enabled(True)
        unet, sched, steps, secs, losses = train_peer(data, cfg, None if args.same_steps else budget,
                                                       our_steps if args.same_steps else None, args.seed, batch)
        torch.set_grad_enabled(False)
        params = n_params(unet)
        print(f"{variant}: {params:,} parameters ({params / our_params - 1:+.1%} vs ours), {steps} steps in "
              f"{secs:.1f} s ({steps / secs:.2f} steps/s), final loss (mean of last 50) "
              f"{sum(losses[-50:]) / len(losses[-50:]):.4f}", flush=True)
        samplers = [("ddim", 50, "DDIM 50")]
        if vi == 0 and args.peer_ddpm:
            samplers.append(("ddpm", 1000, "DDPM 1000"))
        for sampler, n, name in samplers:
            t0 = time.perf_counter()
            x = sample_peer(unet, sched, sampler, n, args.num, args.batch, args.seed)
            score(variant, params, steps, secs, name, x, time.perf_counter() - t0)

    # report
    table = ["| recipe | params | steps | train s | sampler | FID | KID (mean ± std) | sampling s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    table += [f"| {r['recipe']} | {r['params'] / 1e6:.3f} M | {r['steps']} | {r['train_seconds']:.0f} | "
              f"{r['sampler']} | {r['fid']:.3f} | {r['kid']:.4f} ± {r['kid_std']:.4f} | {r['sample_seconds']:.0f} |"
              for r in rows]
    print("\n" + "\n".join(table))
    ours = [r for r in rows if r["recipe"] == "dff (ours)"]
    main_peer = [r for r in rows if r["recipe"] == args.variants[0]]
    ratios = {}
    if main_peer:
        o_ddim = next(r["fid"] for r in ours if r["sampler"] == "DDIM 50")
        p_ddim = next(r["fid"] for r in main_peer if r["sampler"] == "DDIM 50")
        o_best, p_best = min(ours, key=lambda r: r["fid"]), min(main_peer, key=lambda r: r["fid"])
        ratios = {"ddim50": o_ddim / p_ddim, "best": o_best["fid"] / p_best["fid"]}
        print(f"\nFID ours / peer ({args.variants[0]}), both DDIM 50: {ratios['ddim50']:.3f}; best sampler each "
              f"(ours {o_best['sampler']}, peer {p_best['sampler']}): {ratios['best']:.3f}   (target <= 0.7)")
    try:  # the commit of the dff code that ran (empty when it is not a git checkout, e.g. an exported tree)
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(dff.__file__).parent, capture_output=True,
                                text=True).stdout.strip()
    except OSError:
        commit = ""
    res = dict(num=args.num, seed=args.seed, budget_seconds=budget, same_steps=args.same_steps, threads=1,
               torch=torch.__version__, commit=commit, peer_unet={k: list(v) if isinstance(v, tuple) else v
                                                                  for k, v in PEER_UNET.items()},
               peer_variants={v: {**PEER_BASE, **VARIANTS[v]} for v in args.variants}, rows=rows,
               fid_ratio_ours_over_peer=ratios, dff_source=str(Path(dff.__file__).parent),
               total_seconds=time.time() - t_start)
    (out / "peer.json").write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {out / 'peer.json'} (total {res['total_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
