"""Exported weights: a safetensors file of the EMA network plus a JSON config beside it.

    weights_dir/
        model.safetensors   the EMA weights of the network (no pickle: tensors only)
        config.json         {"format": "dff", "version": 1, "model_class": "DiffusionModel", "hparams": {...}}
        autoencoder/        latent models: their autoencoder in diffusers' format (hparams say "autoencoder")

`load_pretrained` takes such a folder, the .safetensors file, a run folder (its export, else its
newest checkpoint) or a Lightning .ckpt (read with torch.load(weights_only=True): no code runs), and
returns a DiffusionModel: sampling from it imports no Lightning.
"""
from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Optional, Union

import torch
from safetensors.torch import load_file, save_file

from ..files import atomic_folder, usual_mode
from ..safe_load import load_tensors
from .autoencoders import EXPORT_SUBDIR, is_pixel_space
from .diffusion_model import DiffusionModel

WEIGHTS, CONFIG = "model.safetensors", "config.json"
EXPORT_DIR = "export"
# what exports and checkpoints of dff <= 0.2 name the model class (the Lightning shell and its presets)
MODEL_CLASSES = ("DiffusionModel", "DiffusionModule", "PixelDiffusion", "PixelDiffusionConditional",
                 "LatentDiffusion", "LatentDiffusionConditional")


def model_settings(hparams: dict) -> dict:
    """The DiffusionModel settings among a checkpoint's or export's hyper-parameters (the training shell's own,
    lr and the like, are left out). Files written before a setting existed get the value that reproduces them
    (FILE_DEFAULTS), not today's default."""
    names = set(inspect.signature(DiffusionModel).parameters)
    return {**FILE_DEFAULTS, **{k: v for k, v in hparams.items() if k in names}}


# settings whose default changed: what a file without the key was made with
FILE_DEFAULTS = {"adm_layout": "v1"}  # dff <= 0.2: the ADM U-Net's per-layer groups and 4 x 32 attention


def model_state_dict(state: dict) -> dict:
    """A DiffusionModel's state dict from a checkpoint's: the training shell's `model.` prefix removed; dff 0.1
    kept the latent scale at `scale` (it is `latent.scale`)."""
    state = {(k[len("model."):] if k.startswith("model.") else k): v for k, v in state.items()}
    if "scale" in state:
        state["latent.scale"] = state.pop("scale")
    return state


def save_pretrained(model, out_dir: Union[str, Path]) -> Path:
    """Write model.safetensors (EMA network weights) and config.json into out_dir, atomically: an existing
    export is replaced whole, or left as it was if writing fails. `model`: a DiffusionModel, or the training
    shell that holds one."""
    model: DiffusionModel = getattr(model, "model", model)
    out_dir = Path(out_dir)
    state = {k: v.detach().cpu().contiguous() for k, v in model.ema.model.state_dict().items()}
    hparams = {k: (list(v) if isinstance(v, tuple) else v) for k, v in model.hparams.items()}
    with atomic_folder(out_dir) as tmp:
        save_file(state, tmp / WEIGHTS)
        usual_mode(tmp / WEIGHTS)
        if model.is_latent:
            # self-contained: the autoencoder travels with the weights, the estimated scale in the config
            model.latent.autoencoder.save_pretrained(tmp / EXPORT_SUBDIR)
            hparams["autoencoder"] = EXPORT_SUBDIR  # relative to this folder
            hparams["latent_scale"] = float(model.latent.s())
        cfg = {"format": "dff", "version": 1, "model_class": "DiffusionModel", "hparams": hparams}
        (tmp / CONFIG).write_text(json.dumps(cfg, indent=2) + "\n")
    return out_dir


def _build(model_class: str, hparams: dict, source: Path) -> DiffusionModel:
    if model_class not in MODEL_CLASSES:
        raise ValueError(f"{source}: unknown model_class {model_class!r}; expected one of {', '.join(MODEL_CLASSES)}")
    return DiffusionModel(**model_settings(hparams))


def _load_weights_dir(weights: Path, autoencoder: Optional[str] = None) -> DiffusionModel:
    cfg_path = weights.parent / CONFIG
    if not cfg_path.exists():
        raise FileNotFoundError(f"{weights}: no {CONFIG} beside it; exported weights need their config to rebuild "
                                "the model")
    try:
        cfg = json.loads(cfg_path.read_text())
        model_class, hparams = cfg["model_class"], cfg["hparams"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{cfg_path}: not a dff config (expected JSON with 'model_class' and 'hparams'): {e}") from e
    except RecursionError:
        raise ValueError(f"{cfg_path}: nested too deeply to be a dff config") from None
    hparams = {**hparams, "autoencoder": own_autoencoder(hparams.get("autoencoder"), cfg_path, autoencoder)}
    model = _build(model_class, hparams, cfg_path)
    try:
        state = load_file(weights)
    except Exception as e:  # safetensors' errors: a file cut short, a header claiming too much, not safetensors
        raise ValueError(f"{weights}: not a readable safetensors file ({str(e).splitlines()[0]}); it may have been cut "
                         "short: export or download it again") from None
    try:
        missing, unexpected = model.net.load_state_dict(state, strict=False)
    except RuntimeError as e:  # tensors of other shapes: config.json and the weights describe different networks
        first = next((line.strip() for line in str(e).splitlines() if "size mismatch" in line), str(e)[:200])
        raise ValueError(f"{weights}: the weights do not fit the network {cfg_path} describes ({first})") from None
    if missing or unexpected:
        raise ValueError(f"{weights}: weights do not match {model_class} with {cfg_path}: "
                         f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.ema.model.load_state_dict(state)
    return model


def own_autoencoder(ae: Optional[str], cfg_path: Path, given: Optional[str] = None) -> Optional[str]:
    """An export's autoencoder: its own copy, inside the export folder, and nothing else unless the caller names
    one (`given`): a config.json that points outside its folder, to a hub id or to a folder that is missing is
    refused, so that loading an export never reads other files or contacts the hub on its author's say."""
    if given is not None:
        return given
    if is_pixel_space(ae):
        return ae
    folder = cfg_path.parent.resolve()
    own = (folder / str(ae)).resolve()
    if folder in own.parents and own.is_dir():
        return str(own)
    raise ValueError(f"{cfg_path}: its autoencoder {ae!r} is not a folder inside the export ({folder.name}/"
                     f"{EXPORT_SUBDIR}/ in an export written by dff): an export must carry its own; to use another "
                     "autoencoder knowingly, pass it: load_pretrained(path, autoencoder=FOLDER_OR_HUB_ID)")


def _load_checkpoint(ckpt: Path) -> DiffusionModel:
    return model_from_checkpoint(load_tensors(ckpt), ckpt)  # weights only: a crafted pickle is refused


def model_from_checkpoint(data: dict, ckpt: Path) -> DiffusionModel:
    """The model of a Lightning checkpoint already read with load_tensors (`ckpt` names it in errors)."""
    if not isinstance(data, dict) or "state_dict" not in data:
        raise ValueError(f"{ckpt}: not a Lightning checkpoint (no state_dict)")
    model = _build(data.get("dff_model_class", "PixelDiffusion"), dict(data.get("hyper_parameters", {})), ckpt)
    model.load_state_dict(model_state_dict(data["state_dict"]))
    return model


def find_weights(path: Union[str, Path]) -> Path:
    """The file to load for a run folder, an export folder, a .safetensors or a .ckpt path."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{str(p)!r} does not exist: expected a run folder, an export folder, "
                                f"a {WEIGHTS} file or a .ckpt checkpoint")
    if p.is_file():
        if p.suffix not in (".safetensors", ".ckpt"):
            raise ValueError(f"{p}: expected a .safetensors or .ckpt file")
        return p
    for cand in (p / WEIGHTS, p / EXPORT_DIR / WEIGHTS):
        if cand.exists():
            return cand
    exports = sorted(p.glob(f"**/{EXPORT_DIR}/{WEIGHTS}"), key=lambda q: q.stat().st_mtime)
    if exports:
        return exports[-1]
    ckpts = sorted(p.glob("**/*.ckpt"), key=lambda q: q.stat().st_mtime)
    if ckpts:
        return ckpts[-1]
    raise FileNotFoundError(f"{p}: no {WEIGHTS} and no .ckpt checkpoint found in this folder or below it")


def load_pretrained(path: Union[str, Path], device: Union[str, torch.device] = "cpu",
                    autoencoder: Optional[str] = None) -> DiffusionModel:
    """Rebuild a DiffusionModel from exported weights, a run folder or a checkpoint; in eval mode on `device`.
    An export's latent model uses the autoencoder inside the export only; `autoencoder` (a folder or a hub id)
    replaces it when given. A checkpoint names the autoencoder its run trained with (a folder or a hub id).
    A hub repository id (owner/name) that is no local path is a dff export on the hub (models/hub.py)."""
    from .hub import download, is_repo_id

    if isinstance(path, str) and is_repo_id(path):
        path = download(path)
    f = find_weights(path)
    model = _load_weights_dir(f, autoencoder) if f.suffix == ".safetensors" else _load_checkpoint(f)
    return model.eval().to(device)
