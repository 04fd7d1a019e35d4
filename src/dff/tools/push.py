"""`dff push RUN owner/name`: a run's export to the Hugging Face Hub, with a model card written from the run (data,
model, training, metrics, a sample grid, how to load it with dff and with diffusers) and, where the model maps onto
diffusers (models/to_diffusers.py), the diffusers pipeline beside it, so the one repository loads in both
libraries. The hub is reached at HF_ENDPOINT (models/hub.py) with huggingface_hub's client.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Optional

from ..models.hub import REPO_ID, endpoint
from ..training.report import metrics_table


def run_of(export: Path) -> Optional[Path]:
    """The run folder an export was written in (<run>/export), or None for an export standing alone."""
    return export.parent if export.name == "export" and (export.parent / "config.yaml").is_file() else None


def model_card(model, repo_id: str, run: Optional[Path], diffusers_kind: Optional[str]) -> str:
    """README.md of a pushed model: what it generates, from which data, how it was trained and scored, and how to
    load it with dff and with diffusers."""
    import yaml

    h = model.hparams
    cfg = yaml.safe_load((run / "config.yaml").read_text()) if run is not None else {}
    data = cfg.get("data") or {}
    info = json.loads((run / "run_info.json").read_text()) if run is not None and (run / "run_info.json").is_file() \
        else {}
    what = ("image-to-image translation" if model.condition else
            "class-conditional image generation" if h.num_classes else "unconditional image generation")
    tag = "image-to-image" if model.condition else "unconditional-image-generation"
    lines = ["---", "library_name: dff", f"pipeline_tag: {tag}", "tags:", "- diffusion", "- dff",
             *(["- diffusers"] if diffusers_kind else []), "---", "", f"# {repo_id.split('/')[-1]}", "",
             f"A diffusion model for {what}, trained with dff (DiffusionFastForward): "
             f"{h.image_size}x{h.image_size} images of {h.channels} channel(s)"
             + (f", in the latent space of its autoencoder (factor {model.latent.factor})" if model.is_latent else "")
             + ".", "", "![samples](samples.png)", "", "## Data", ""]
    rows = {"data set": data.get("dataset", "?") + (f" ({data['root']})" if data.get("root") else ""),
            "image size": f"{h.image_size}", "channels": f"{h.channels}",
            "condition": str(model.condition) if model.condition else "none",
            "classes": str(h.num_classes or "none")}
    if getattr(model, "units", None) is not None:
        rows["units"] = f"{model.units.dtype}, per-channel range stored in config.json (data_range)"
    lines += table(rows)
    lines += ["", "## Model", ""]
    params = sum(p.numel() for p in model.net.parameters())
    lines += table({"network": f"{h.backbone} U-Net, dim {h.dim}, levels {list(h.dim_mults)}, "
                               f"{params / 1e6:.2f} M parameters",
                    "diffusion": f"T = {h.timesteps}, {h.schedule} schedule, predicts {h.prediction}"
                                 + (f", {h.loss_weighting} weighting" if h.loss_weighting != "none" else ""),
                    "weights": "EMA"})
    if info:
        lines += ["", "## Training", ""]
        lines += table({k: v for k, v in info.items() if k in ("steps", "time spent", "device", "precision",
                                                               "devices", "batch size", "status")})
    metrics = {k: v for k, v in metrics_table(run / "metrics.csv").items()
               if not k.startswith("train/")} if run is not None else {}
    if metrics:
        lines += ["", "## Metrics (the last logged value of each)", ""]
        lines += table({k: f"{v:.4g} (step {s})" for k, (s, v) in sorted(metrics.items())})
    lines += ["", "## Use it", "", "With dff (`pip install diffusion-fast-forward`):", "", "```python",
              "from dff import load_pretrained", f'model = load_pretrained("{repo_id}")',
              "images = model.sample(16, sampler=\"dpmpp_2m\", steps=20, seed=0"
              + (", labels=[0] * 16" if h.num_classes else "") + ")   # (16, C, H, W) in [0, 1]", "```", "",
              f"or `dff sample {repo_id} --num 16 --out samples/`."]
    if diffusers_kind:
        custom = h.num_classes or model.is_latent  # pipeline.py: labels and guidance, the autoencoder
        load = (f'DiffusionPipeline.from_pretrained("{repo_id}", custom_pipeline="{repo_id}", trust_remote_code=True)'
                if custom else f'DiffusionPipeline.from_pretrained("{repo_id}")')
        call = ("pipe(class_labels=[0, 1, 2], guidance_scale=1.5, num_inference_steps=50).images" if h.num_classes
                else "pipe(batch_size=16, num_inference_steps=50).images" if custom
                else "pipe(batch_size=16, num_inference_steps=50, eta=0.0, use_clipped_model_output=True).images")
        lines += ["", "With diffusers alone (the same weights as a UNet2DModel and the run's scheduler, "
                      f"{diffusers_kind}; the same seed gives dff's images):", "", "```python",
                  "from diffusers import DiffusionPipeline", f"pipe = {load}", f"images = {call}", "```"]
    else:
        lines += ["", "Not available as a diffusers pipeline: " + diffusers_reason(model) + "."]
    return "\n".join(lines) + "\n"


def diffusers_reason(model) -> str:
    from ..models.to_diffusers import refusal

    return refusal(model) or ""


def table(rows: dict[str, str]) -> list[str]:
    return ["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows.items())]


# ---------------------------------------------------------------------- push
def stage(weights: str | Path, repo_id: str, out: Path, scheduler: str = "ddim") -> Path:
    """Write into `out` what `push` uploads: the export (config.json, model.safetensors, autoencoder/), the
    diffusers pipeline where the model has one, samples.png and README.md."""
    from ..models.pretrained import CONFIG, WEIGHTS, find_weights, load_pretrained
    from ..models.to_diffusers import export_diffusers, refusal
    from ..viz import save_grid

    f = find_weights(weights)
    if f.suffix != ".safetensors":
        raise ValueError(f"{f}: a checkpoint; push uploads exports (config.json + model.safetensors): the run's "
                         "export/ folder, written at the end of fit")
    export = f.parent
    model = load_pretrained(export)
    out.mkdir(parents=True, exist_ok=True)
    for name in (CONFIG, WEIGHTS):
        shutil.copyfile(export / name, out / name)
    if (export / "autoencoder").is_dir():
        shutil.copytree(export / "autoencoder", out / "autoencoder")
    kind = None
    if refusal(model) is None:
        export_diffusers(model, out / "_diffusers", scheduler)
        for p in (out / "_diffusers").iterdir():
            if p.name != "dff_export.json":
                p.rename(out / p.name)
        shutil.rmtree(out / "_diffusers")
        kind = scheduler
    run = run_of(export)
    grids = sorted((run / "samples").glob("step_*.png")) if run is not None else []
    if grids:
        shutil.copyfile(grids[-1], out / "samples.png")
    elif not model.condition:
        nc = model.hparams.num_classes
        labels = [i % nc for i in range(16)] if nc else None
        x = model.sample(16, "dpmpp_2m", steps=20, seed=0, labels=labels, progress=False)
        save_grid(x, out / "samples.png")
    (out / "README.md").write_text(model_card(model, repo_id, run, kind))
    return out


def push(weights: str | Path, repo_id: str, *, private: bool = False, token: Optional[str] = None,
         scheduler: str = "ddim") -> str:
    """Upload a run's export to the hub repository `repo_id` (created if missing) with its model card; returns
    the commit's URL."""
    from huggingface_hub import HfApi

    if not REPO_ID.match(repo_id):
        raise ValueError(f"{repo_id!r} is not a hub repository id: expected owner/name")
    with tempfile.TemporaryDirectory() as tmp:
        folder = stage(weights, repo_id, Path(tmp) / "repo", scheduler)
        api = HfApi(endpoint=endpoint(), token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(folder_path=folder, repo_id=repo_id, commit_message="dff push: export and model card")
    return str(info.commit_url if hasattr(info, "commit_url") else info)
