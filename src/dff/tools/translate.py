"""Image-to-image at inference: translate files with a trained model, and score a model on pairs.

Input sizes. An input is processed whole at its own size: the U-Net is convolutional, so it is
padded by reflection to a multiple of the network's size factor, translated, and cropped back;
nothing is resized unless asked (`resize=True` resizes each input to the training size first,
the choice for models whose content depends on scale, such as maps at a fixed zoom). Memory and
time grow with the area of the input. For super-resolution models the input is the
low-resolution image; the output is `factor` times larger.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Optional, Union

import torch
import torch.nn.functional as F
from PIL import Image

from ..data.arrays import ArrayFolder, write_array
from ..data.shards import folder_class
from ..data.folder import IMAGE_EXTENSIONS, MODES, find_images, load_image, to_tensor
from ..data.tasks import condition_from_input, sr_factor
from ..diffusion import default_steps
from ..evaluation.psnr_ssim import translation_scores
from ..models.diffusion_model import DiffusionModel
from ..viz.images import preview


def output_stem(f: Path, root: Path, stems: Counter) -> Path:
    """The output name of input f (relative to root, without its extension), or, when another input shares that
    stem (a.png and a.jpg), with its extension kept (a.png -> a.png.png, a.jpg -> a.jpg.png): no output overwrites
    another."""
    rel = f.relative_to(root)
    return rel.with_suffix("") if stems[rel.with_suffix("")] == 1 else rel


def input_files(path: Union[str, Path], arrays: bool = False) -> tuple[Path, list[Path]]:
    """(root, image files): a single file, or every supported image (arrays=True: array file) below a folder."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"input {str(p)!r} does not exist: expected an image file or a folder of images")
    if p.is_file():
        return p.parent, [p]
    return p, find_images(p, ArrayFolder.extensions if arrays else IMAGE_EXTENSIONS)


def condition_of(model: DiffusionModel, path: Path, *, mask: Optional[torch.Tensor] = None,
                 resize: bool = False) -> torch.Tensor:
    """The (1, C_cond, H, W) condition the model takes for one input file."""
    h, task = model.hparams, model.condition.kind
    if not model.condition:
        raise ValueError("this model is unconditional (condition='none'): use `dff sample`")
    mode_channels = model.condition.channels if task == "image" else h.channels
    side = h.image_size // sr_factor(task) if task in ("sr2", "sr4") else h.image_size
    if model.units is not None:  # array data: the training bands, in [0, 1] by the training data's range
        units = model.cond_units if task == "image" else model.units  # pairs of arrays: the condition's own
        try:
            x = units.read(path)[None]  # (1, C, H, W)
        except Exception as e:
            raise ValueError(f"{path}: cannot be read as an array: {type(e).__name__}: {e}") from e
        if resize:
            x = F.interpolate(x, size=(side, side), mode="bicubic", antialias=True).clamp(0, 1)
    else:
        try:
            im = load_image(path, 1 if task == "colorize" else mode_channels)
        except Exception as e:
            raise ValueError(f"{path}: cannot be read as an image: {type(e).__name__}: {e}") from e
        if resize:
            im = im.resize((side, side), Image.Resampling.BICUBIC)
        x = to_tensor(im)[None]  # (1, C, H, W)
    if task == "inpaint":
        if mask is None:
            raise ValueError("an inpainting model needs a mask (white = region to fill): pass --mask FILE")
        m = F.interpolate(mask[None], size=x.shape[-2:], mode="nearest")[0]
        return condition_from_input(task, x, m[None])
    return x if task == "image" else condition_from_input(task, x)


def pad_to(x: torch.Tensor, factor: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Reflect-pad (B, C, H, W) on the bottom/right to multiples of factor; returns the original (H, W)."""
    H, W = x.shape[-2:]
    ph, pw = -H % factor, -W % factor
    if ph or pw:
        mode = "reflect" if ph < H and pw < W else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x, (H, W)


def translate(model: DiffusionModel, cond: torch.Tensor, *, num_samples: int = 1, sampler: str = "ddim",
              steps: Optional[int] = None, eta: float = 0.0, generator: Optional[torch.Generator] = None,
              progress: bool = True) -> torch.Tensor:
    """Outputs (B * num_samples, C, H, W) in [0, 1] for conditions (B, C_cond, H, W) of any size."""
    padded, (H, W) = pad_to(cond, model.size_factor)
    out = model.sample(sampler=sampler, steps=steps, eta=eta, generator=generator, cond=padded,
                       num_samples=num_samples, progress=progress)
    return out[..., :H, :W]


def average_samples(y: torch.Tensor, k: int) -> torch.Tensor:
    """(B * k, C, H, W) samples grouped by condition -> (B, C, H, W), the mean of each group: a Monte
    Carlo estimate of the posterior mean E[x | cond], the output that minimises the expected squared
    error (higher PSNR/SSIM, less detail than any one sample: the perception-distortion trade-off)."""
    return y.reshape(-1, k, *y.shape[1:]).mean(1)


def translate_files(model: DiffusionModel, inputs: Union[str, Path], out: Union[str, Path], *, num_samples: int = 1,
                    sampler: str = "ddim", steps: Optional[int] = None, eta: float = 0.0, seed: int = 0,
                    mask: Optional[Union[str, Path]] = None, resize: bool = False, progress: bool = True,
                    average: bool = False) -> list[Path]:
    """Translate every input file; outputs keep the inputs' relative paths as PNGs
    (NAME.png, or NAME_k.png for k = 0..num_samples-1 when num_samples > 1). average=True writes
    one NAME.png per input: the mean of its num_samples samples (see `average_samples`). A model of array
    data reads array files and writes each output in the data's units and format (NAME.tif or NAME.npy) beside
    a percentile-stretched PNG preview."""
    root, files = input_files(inputs, arrays=model.units is not None)
    out = Path(out)
    m = to_tensor(load_image(Path(mask), 1)) if mask is not None else None  # (1, H, W)
    stems = Counter(f.relative_to(root).with_suffix("") for f in files)
    g = torch.Generator().manual_seed(seed)
    written = []
    for f in files:
        cond = condition_of(model, f, mask=m, resize=resize)
        y = translate(model, cond, num_samples=num_samples, sampler=sampler, steps=steps, eta=eta, generator=g,
                      progress=progress).cpu()  # (K, C, H, W)
        if average:
            y = average_samples(y, num_samples)  # (1, C, H, W)
        rel = output_stem(f, root, stems)
        for k, img in enumerate(y):
            name = rel.name if len(y) == 1 else f"{rel.name}_{k}"
            path = out / rel.parent / f"{name}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            if model.units is not None:
                written.append(write_array(img, path.with_suffix(""), model.units))
                img = preview(img[None])[0]
            a = (img.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
            Image.fromarray(a[:, :, 0] if a.shape[2] == 1 else a, MODES[a.shape[2]]).save(path)
            written.append(path)
    return written


def evaluation_set(model: DiffusionModel, data: str, *, layout: str = "side_by_side", direction: str = "AtoB"):
    """The paired data a model is scored on: 'photos' (the held-out photo patches), a folder of
    single images for task models, or a side_by_side / folders pair folder for image models."""
    from ..data.builtin import PhotoPatches
    from ..data.folder import ImageFolder
    from ..data.paired import ArrayPairs, PairFolder, TaskDataset

    h, c = model.hparams, model.condition
    if not c:
        raise ValueError("this model is unconditional: paired evaluation needs an image-to-image model")
    if c.kind == "image":
        if data in ("photos", "textures"):
            raise ValueError(f"the built-in {data} make task pairs (sr2, sr4, colorize, inpaint), not given conditions")
        if model.cond_units is not None:  # pairs of array files, each side in its training range
            if layout != "folders":
                raise ValueError(f"pairs of array files are read from the folders layout (A/ and B/), not {layout!r}")
            return ArrayPairs(data, image_size=h.image_size, channels=h.channels, cond_channels=c.channels,
                              data_range=model.units, cond_range=model.cond_units, direction=direction,
                              crop="center", hflip=False, vflip=False)
        return PairFolder(data, layout, image_size=h.image_size, channels=h.channels, cond_channels=c.channels,
                          direction=direction, crop="center", hflip=False, vflip=False)
    if model.units is not None:  # array data: the training bands and range
        base = folder_class(data, arrays=True)(data, h.image_size, h.channels, data_range=model.units,
                                               bands=model.units.bands, crop="center", hflip=False, vflip=False)
    else:
        base = (PhotoPatches("val", h.image_size, h.channels, source=data) if data in ("photos", "textures")
                else ImageFolder(data, h.image_size, h.channels, crop="center", hflip=False, vflip=False))
    return TaskDataset(base, c.kind, seed=0)


@torch.no_grad()
def evaluate(model: DiffusionModel, data: str, *, layout: str = "side_by_side", direction: str = "AtoB",
             num: Optional[int] = None, steps: Optional[int] = None, batch_size: int = 32, seed: int = 0,
             progress: bool = False, average: int = 1) -> dict:
    """Mean PSNR/SSIM (and, for super-resolution, bicubic and consistency) over a paired set;
    average=K > 1 scores the mean of K samples per condition instead of one sample."""
    ds = evaluation_set(model, data, layout=layout, direction=direction)
    n = len(ds) if num is None else min(num, len(ds))
    g = torch.Generator().manual_seed(seed)
    totals: dict[str, float] = {}
    for start in range(0, n, batch_size):
        items = [ds[i] for i in range(start, min(n, start + batch_size))]
        cond, target = torch.stack([it["cond"] for it in items]), torch.stack([it["image"] for it in items])
        out = translate(model, cond.to(model.device), num_samples=average, steps=steps, generator=g,
                        progress=progress).cpu()
        out = average_samples(out, average) if average > 1 else out
        for k, v in translation_scores(out, target, cond, condition=model.condition.kind,
                                       per_band=model.units is not None).items():
            totals[k] = totals.get(k, 0.0) + float(v) * len(items)
    res = {k: v / n for k, v in totals.items()}
    res.update(n=n, steps=default_steps("ddim") if steps is None else steps, data=str(data),
               condition=model.condition.kind, average=average)
    return res


def write_json(obj: dict, path: Union[str, Path]) -> None:
    Path(path).write_text(json.dumps(obj, indent=2) + "\n")
