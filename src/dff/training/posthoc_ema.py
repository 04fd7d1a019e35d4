"""Power-function EMA and its post-hoc reconstruction (Karras et al. 2024, "Analyzing and Improving the Training
Dynamics of Diffusion Models" (EDM2), Sec. 3 and Appendix C.2).

A power-function EMA averages the weights theta(tau) of steps tau = 1..t with a weight that grows as tau^gamma:

    theta_hat(t) = beta(t) theta_hat(t - 1) + (1 - beta(t)) theta(t),   beta(t) = (1 - 1/t)^(gamma + 1)   (EDM2 eq. 2)

so its profile over the run is p_{t,gamma}(tau) = (gamma + 1) tau^gamma / t^(gamma + 1) on [0, t], and its length,
relative to the run, is its standard deviation over t:

    sigma_rel = sqrt(gamma + 1) / ((gamma + 2) sqrt(gamma + 3))                                      (EDM2 eq. 3)

Unlike a fixed decay, the average keeps the same relative length at any point of the run (dff.models.ema's warm-up
min(decay, (1 + n) / (10 + n)) is this profile with gamma = 8, sigma_rel = 0.09, until it reaches `decay`).

Post hoc: during training, two power EMAs (sigma_rel 0.05 and 0.10 by default) are written as snapshots every N
steps. Any other profile (t_r, gamma_r) is then approximated by a linear combination of the snapshots' profiles,
the least-squares fit in L2 over tau (Appendix C.2): with the Gram matrix A_ij = <p_i, p_j> and b_i = <p_i, p_r>,
the weights x solve A x = b, and the reconstructed average is sum_i x_i theta_hat_i. `PostHocEMA` writes the
snapshots (a callback; `posthoc_ema:` in a config), `reconstruct` combines them, and `dff posthoc-ema RUN
--sigma-rel ...` exports the results as ordinary dff exports to sample and score.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional, Sequence

import lightning as L
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..files import usual_mode
from ..models.ema import SIGMA_REL_MAX, beta, gamma_from_sigma_rel, posthoc_weights, profile_dot, sigma_rel_from_gamma  # noqa: F401 (the math, re-exported)
from ..models.pretrained import load_pretrained, save_pretrained
from .runs import run_dir

SNAPSHOT_DIR = "posthoc_ema"


# ---------------------------------------------------------------- during training
class PostHocEMA(L.Callback):
    """Power-function EMAs of the network for `sigma_rels`, written every `every_n_steps` optimiser steps to
    <run>/posthoc_ema/step_XXXXXX.safetensors (one file per snapshot, every average in it); `dff posthoc-ema`
    turns them into exports of any EMA length. The averages are part of the checkpoint, so a resumed run
    continues them. 0 steps: off (the default)."""

    def __init__(
        self,
        every_n_steps: int = 0,  # steps between snapshots (0: off); EDM2 takes ~every 1-2% of the run
        sigma_rels: Sequence[float] = (0.05, 0.10),  # lengths of the tracked averages (EDM2's two)
    ):
        if every_n_steps < 0:
            raise ValueError(f"posthoc_ema.every_n_steps must be >= 0, got {every_n_steps}")
        if len(sigma_rels) < 1:
            raise ValueError("posthoc_ema.sigma_rels: give at least one length")
        self.every_n_steps, self.sigma_rels = every_n_steps, [float(s) for s in sigma_rels]
        self.gammas = [gamma_from_sigma_rel(s) for s in self.sigma_rels]
        self.averages: Optional[list[list[torch.Tensor]]] = None  # per gamma, the network's parameters
        self.t = 0  # updates made (= optimiser steps seen)
        self._loaded: Optional[dict] = None

    def state_dict(self) -> dict:
        if self.averages is None:
            return {}
        return {"t": self.t, "gammas": self.gammas, "averages": [[a.cpu() for a in avg] for avg in self.averages]}

    def load_state_dict(self, state_dict: dict) -> None:
        self._loaded = state_dict or None

    def on_train_start(self, trainer, pl_module) -> None:
        if not self.every_n_steps:
            return
        params = [p.detach() for p in pl_module.net.parameters()]
        if self._loaded is not None:  # a resumed run
            if [round(g, 9) for g in self._loaded["gammas"]] != [round(g, 9) for g in self.gammas]:
                raise ValueError(f"posthoc_ema.sigma_rels={self.sigma_rels} differ from the checkpoint's averages "
                                 f"(gammas {self._loaded['gammas']}): resume with the same sigma_rels")
            self.t = self._loaded["t"]
            self.averages = [[a.to(p) for a, p in zip(avg, params)] for avg in self._loaded["averages"]]
        else:
            self.t = 0
            self.averages = [[p.clone() for p in params] for _ in self.gammas]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self.every_n_steps or trainer.global_step <= self.t:  # no optimiser step (accumulation, skipped)
            return
        self.t = trainer.global_step
        params = [p.detach() for p in pl_module.net.parameters()]
        with torch.no_grad():
            for avg, g in zip(self.averages, self.gammas):
                torch._foreach_lerp_(avg, params, 1.0 - beta(self.t, g))
        if self.t % self.every_n_steps == 0:
            self.write(trainer, pl_module)

    def write(self, trainer, pl_module) -> Optional[Path]:
        folder = run_dir(trainer) / SNAPSHOT_DIR  # a collective under DDP: every rank asks
        if not trainer.is_global_zero:
            return None
        names = [n for n, _ in pl_module.net.named_parameters()]
        tensors = {f"{i}.{n}": a.detach().cpu().contiguous() for i, avg in enumerate(self.averages)
                   for n, a in zip(names, avg)}
        meta = {"t": str(self.t), "gammas": ",".join(repr(g) for g in self.gammas),
                "sigma_rels": ",".join(repr(s) for s in self.sigma_rels)}
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"step_{self.t:06d}.safetensors"
        tmp = path.with_suffix(".tmp")
        save_file(tensors, tmp, metadata=meta)
        usual_mode(tmp).replace(path)
        return path


# ---------------------------------------------------------------- after training
def snapshot_files(run: Path) -> list[Path]:
    """The snapshot files of a run folder (or of its posthoc_ema folder), by step."""
    run = Path(run)
    folder = run if run.name == SNAPSHOT_DIR else run / SNAPSHOT_DIR
    files = sorted(folder.glob("step_*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{folder}: no post-hoc EMA snapshots (train with posthoc_ema.every_n_steps > 0)")
    return files


def reconstruct(run: Path, sigma_rel: float, step: Optional[int] = None) -> tuple[dict[str, torch.Tensor], dict]:
    """The network's parameters averaged with the power-function profile of `sigma_rel` at `step` (default: the
    last snapshot), from the snapshots up to that step; and how: {t, gamma, snapshots, weights}."""
    return reconstruct_many(run, [sigma_rel], step)[0]


def reconstruct_many(run: Path, sigma_rels: Sequence[float],
                     step: Optional[int] = None) -> list[tuple[dict[str, torch.Tensor], dict]]:
    """`reconstruct` for several lengths, reading each snapshot file once."""
    files = snapshot_files(run)
    metas = []
    for f in files:
        with safe_open(str(f), "pt") as h:
            m = h.metadata()
        metas.append((int(m["t"]), [float(g) for g in m["gammas"].split(",")]))
    t_r = step if step is not None else metas[-1][0]
    used = [(f, t, gs) for f, (t, gs) in zip(files, metas) if t <= t_r]
    if not used:
        raise ValueError(f"step {t_r}: the first snapshot in {files[0].parent} is at step {metas[0][0]}")
    t = [t for _, t, gs in used for _ in gs]
    g = [x for _, _, gs in used for x in gs]
    gammas_r = [gamma_from_sigma_rel(s) for s in sigma_rels]
    weights = [posthoc_weights(t, g, t_r, g_r) for g_r in gammas_r]  # one weight per (snapshot, average)
    outs: list[dict[str, torch.Tensor]] = [{} for _ in sigma_rels]
    first = 0  # index of the file's first average among all (snapshot, average) pairs
    for f, _, gs in used:
        for name, v in load_file(f).items():  # keys "<average index>.<parameter name>"
            i, key = name.split(".", 1)
            v = v.double()
            for out, w in zip(outs, weights):
                term = float(w[first + int(i)]) * v
                out[key] = out[key] + term if key in out else term
        first += len(gs)
    return [({n: v.float() for n, v in out.items()},
             {"t": t_r, "sigma_rel": s, "gamma": g_r, "snapshots": len(used), "weights": [float(x) for x in w]})
            for out, s, g_r, w in zip(outs, sigma_rels, gammas_r, weights)]


def export_posthoc(run: Path, sigma_rels: Sequence[float], step: Optional[int] = None,
                   out: Optional[Path] = None) -> list[Path]:
    """One dff export per sigma_rel, at <run>/posthoc_ema/sigma_<s>[_step_<t>]/ (or below `out`): the run's exported
    model (its config, autoencoder and buffers) with the reconstructed network weights."""
    run = Path(run)
    model = load_pretrained(run)
    root = Path(out) if out else run / SNAPSHOT_DIR
    paths = []
    for s, (state, info) in zip(sigma_rels, reconstruct_many(run, sigma_rels, step)):
        missing, unexpected = model.ema.model.load_state_dict(state, strict=False)
        if unexpected or any(not re.search(r"(running_|num_batches)", m) for m in missing):
            raise ValueError(f"{run}: the snapshots do not match the run's network (missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]})")
        name = f"sigma_{s:.3f}" + (f"_step_{step}" if step is not None else "")
        paths.append(save_pretrained(model, root / name))
        print(f"sigma_rel {s:.3f} (gamma {info['gamma']:.2f}) at step {info['t']}, from {info['snapshots']} "
              f"snapshots: {paths[-1]}")
    return paths
