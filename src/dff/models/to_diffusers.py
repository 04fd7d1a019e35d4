"""A trained pixel model as a diffusers pipeline: `dff export RUN --format diffusers OUT`.

The ADM U-Net in its diffusers layout (nn/adm.py) is diffusers' `UNet2DModel` layer for layer:

    dff (ADMUNet)                              diffusers (UNet2DModel)
    time_mlp.1, time_mlp.3                     time_embedding.linear_1, linear_2 (Timesteps: flip_sin_to_cos
                                               False, freq_shift 1: [sin, cos] of t 10000^(-i / (half - 1)))
    class_emb (num_classes + 1 rows)           class_embedding (num_class_embeds = num_classes + 1)
    init_conv                                  conv_in
    downs: level i, block j                    down_blocks.i.resnets.j (.attentions.j at the lowest level)
           level i's stride-2 conv             down_blocks.i.downsamplers.0.conv
    mid1, mid_attn, mid2                       mid_block.resnets.0, .attentions.0, .resnets.1
    ups: level i (from the lowest), block j    up_blocks.(L-1-i).resnets.j, upsamplers.0.conv
    ResBlock in_layers.0/.2, emb.1, out_norm,  norm1, conv1, time_emb_proj, norm2, conv2, conv_shortcut
             out_layers.1, skip                (resnet_time_scale_shift "scale_shift": norm2(h) (1 + s) + b)
    SelfAttention group_norm, to_q/k/v, to_out group_norm, to_q/k/v, to_out.0
    final.0, final.2                           conv_norm_out, conv_out

The scheduler carries the run's betas (trained_betas: the table itself, whatever the schedule), prediction type
(epsilon | v_prediction | sample), x0 clipping and DDIM's timestep spacing, so `DiffusionPipeline.from_pretrained`
samples what `dff sample` samples. What has no diffusers counterpart is refused with the reason: the ConvNeXt
U-Net, the v1 layout (attention and per-layer groups of earlier checkpoints), image-conditioned models, latent
models whose autoencoder is patched.
"""
from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Optional

import torch

from .diffusion_model import DiffusionModel

SCHEDULERS = ("ddim", "ddpm", "dpmpp_2m")
PREDICTION_TYPES = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}


def refusal(model: DiffusionModel) -> Optional[str]:
    """Why this model cannot become a diffusers UNet2DModel pipeline, or None when it can."""
    h, net = model.hparams, model.net
    if h.backbone != "adm":
        return (f"the {h.backbone} backbone has no diffusers counterpart; only backbone: adm maps onto "
                "diffusers' UNet2DModel")
    if model.condition:
        return (f"the model is conditioned on an image (condition={model.condition.kind!r}); diffusers' "
                "UNet2DModel pipelines generate from noise alone: use `dff translate`")
    if model.is_latent and getattr(model.latent.autoencoder, "patch", 1) != 1:
        return ("its autoencoder folds pixel patches into channels around diffusers' AutoencoderKL (dff's patched "
                "autoencoder), which diffusers' pipelines do not do")
    groups = {m.num_groups for m in net.modules() if isinstance(m, torch.nn.GroupNorm)}
    if net.layout != "diffusers" and (h.attention or len(groups) > 1):
        return ("the U-Net has the v1 layout of earlier checkpoints (GroupNorm(1) attention with a bias-free 4 x 32 "
                "qkv, or per-layer group counts), which diffusers' blocks cannot hold: train with model.adm_layout: "
                "diffusers (the default) to export")
    return None


def unet_config(model: DiffusionModel) -> dict:
    """UNet2DModel's settings for the model's ADM U-Net."""
    h, net = model.hparams, model.net
    L, dim = len(h.dim_mults), h.dim
    groups = next(m.num_groups for m in net.modules() if isinstance(m, torch.nn.GroupNorm))
    down = ["AttnDownBlock2D" if h.attention and i == L - 1 else "DownBlock2D" for i in range(L)]
    up = ["AttnUpBlock2D" if h.attention and i == 0 else "UpBlock2D" for i in range(L)]
    c = model.latent.channels  # the image's channels, or the latent's
    return dict(sample_size=h.image_size // model.latent.factor, in_channels=c, out_channels=c,
                block_out_channels=[dim * m for m in h.dim_mults], layers_per_block=h.num_res_blocks,
                down_block_types=down, up_block_types=up, norm_num_groups=groups, attn_norm_num_groups=groups,
                attention_head_dim=net.head_dim, add_attention=bool(h.attention), act_fn="silu", norm_eps=1e-5,
                resnet_time_scale_shift="scale_shift", flip_sin_to_cos=False, freq_shift=1, downsample_padding=1,
                num_class_embeds=h.num_classes + 1 if h.num_classes else None, center_input_sample=False)


def _resblock(src: str, dst: str) -> dict[str, str]:
    names = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb.1": "time_emb_proj", "out_norm": "norm2",
             "out_layers.1": "conv2", "skip": "conv_shortcut"}
    return {f"{src}.{a}": f"{dst}.{b}" for a, b in names.items()}


def _attention(src: str, dst: str) -> dict[str, str]:
    names = {"group_norm": "group_norm", "to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out": "to_out.0"}
    return {f"{src}.{a}": f"{dst}.{b}" for a, b in names.items()}


def _pairs(names: dict, src: str, k: int, dst: str, count: int) -> int:
    """Name `count` (ResBlock, attention) pairs src.k, src.k+1, ... as dst's resnets.j and attentions.j; returns
    the position after them."""
    for j in range(count):
        names.update(_resblock(f"{src}.{k + j}.0", f"{dst}.resnets.{j}"))
        names.update(_attention(f"{src}.{k + j}.1", f"{dst}.attentions.{j}"))
    return k + count


def module_names(model: DiffusionModel) -> dict[str, str]:
    """dff module name -> diffusers module name, for every module that holds weights (the table above)."""
    h = model.hparams
    L, n = len(h.dim_mults), h.num_res_blocks
    names = {"time_mlp.1": "time_embedding.linear_1", "time_mlp.3": "time_embedding.linear_2",
             "class_emb": "class_embedding", "init_conv": "conv_in", "final.0": "conv_norm_out",
             "final.2": "conv_out"}
    k = 0  # position in net.downs
    for i in range(L):
        k = _pairs(names, "downs", k, f"down_blocks.{i}", n)
        if i < L - 1:
            names[f"downs.{k}"] = f"down_blocks.{i}.downsamplers.0.conv"
            k += 1
    names.update(_resblock("mid1", "mid_block.resnets.0"))
    names.update(_attention("mid_attn", "mid_block.attentions.0"))
    names.update(_resblock("mid2", "mid_block.resnets.1"))
    k = 0  # position in net.ups
    for u in range(L):  # up block u works at level L - 1 - u
        k = _pairs(names, "ups", k, f"up_blocks.{u}", n + 1)
        if u < L - 1:
            names[f"ups.{k}.1"] = f"up_blocks.{u}.upsamplers.0.conv"
            k += 1
    return names


def unet_state_dict(model: DiffusionModel, ema: bool = True) -> dict[str, torch.Tensor]:
    """The U-Net's weights (its EMA copy by default, what `dff sample` uses) under UNet2DModel's names."""
    net = model.ema.model if ema else model.net
    names = module_names(model)
    out = {}
    for key, value in net.state_dict().items():
        module, _, param = key.rpartition(".")
        if module not in names:
            raise KeyError(f"no diffusers name for the U-Net weight {key}")
        out[f"{names[module]}.{param}"] = value.detach().clone()
    return out


def scheduler(model: DiffusionModel, kind: str = "ddim"):
    """diffusers' scheduler of this model's process: DDIM (eta and steps chosen at call time), DDPM, or
    DPM-Solver++(2M), with the run's betas, prediction type and clipping."""
    import diffusers

    d, h = model.diffusion, model.hparams
    common = dict(num_train_timesteps=d.T, trained_betas=d.betas.double().tolist(),
                  prediction_type=PREDICTION_TYPES[h.prediction])
    clip = model.clips_x0
    if kind == "ddim":  # dff's DDIM spacing: leading, or trailing when alpha_bar_T = 0
        spacing = "trailing" if float(d.alpha_bar[-1]) == 0.0 else "leading"
        return diffusers.DDIMScheduler(**common, clip_sample=clip, clip_sample_range=1.0, set_alpha_to_one=True,
                                       timestep_spacing=spacing)
    if kind == "ddpm":
        return diffusers.DDPMScheduler(**common, clip_sample=clip, clip_sample_range=1.0, variance_type="fixed_small")
    if kind == "dpmpp_2m":
        return diffusers.DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++", solver_order=2,
                                                     thresholding=clip, sample_max_value=1.0,
                                                     timestep_spacing="trailing")  # dff's dpmpp_2m default
    raise ValueError(f"unknown scheduler {kind!r} for a diffusers export: expected one of {', '.join(SCHEDULERS)}")


def to_unet(model: DiffusionModel, ema: bool = True):
    """The model's U-Net as a diffusers UNet2DModel holding the same weights."""
    import diffusers

    why = refusal(model)
    if why:
        raise ValueError(f"cannot export to diffusers: {why}")
    unet = diffusers.UNet2DModel(**unet_config(model))
    unet.load_state_dict(unet_state_dict(model, ema), strict=True)
    return unet.eval()


def export_diffusers(model: DiffusionModel, out: str | Path, kind: str = "ddim") -> Path:
    """Write `out` as a diffusers pipeline folder (model_index.json, unet/, scheduler/) that
    `DiffusionPipeline.from_pretrained(out)` loads: DDIMPipeline for the ddim scheduler, DDPMPipeline otherwise
    (it runs any scheduler's step). A class-conditional or latent model's folder holds `pipeline.py` instead
    (models/diffusers_pipeline.py: class labels and classifier-free guidance, the AutoencoderKL with the run's latent
    scale as its scaling_factor), loaded with `DiffusionPipeline.from_pretrained(out, custom_pipeline=out,
    trust_remote_code=True)`."""
    import diffusers

    unet = to_unet(model)
    sched = scheduler(model, kind)
    out = Path(out)
    if model.hparams.num_classes or model.is_latent:
        from .diffusers_pipeline import DffPipeline

        vae = None
        if model.is_latent:  # its own copy, whose scaling_factor is the run's s (z_0 = s E(x))
            vae = copy.deepcopy(model.latent.autoencoder.vae)
            vae.register_to_config(scaling_factor=float(model.latent.s()))
        pipe = DffPipeline(unet=unet, scheduler=sched, vae=vae)
        pipe.save_pretrained(out, safe_serialization=True)
        shutil.copyfile(Path(__file__).with_name("diffusers_pipeline.py"), out / "pipeline.py")
    else:
        pipe = (diffusers.DDIMPipeline if kind == "ddim" else diffusers.DDPMPipeline)(unet=unet, scheduler=sched)
        pipe.save_pretrained(out, safe_serialization=True)
    info = {"exported_by": "dff", "scheduler": kind, "clip_x0": model.clips_x0,
            "note": "DDIMPipeline: pass use_clipped_model_output=True (and eta=0) for dff's DDIM when clip_x0 is on"}
    (out / "dff_export.json").write_text(json.dumps(info, indent=2) + "\n")
    return out
