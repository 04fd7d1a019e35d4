"""Latents of a training set, encoded once: the latent-caching option of latent diffusion.

A latent model spends most of a training step in the frozen encoder when the autoencoder is big
(the SD VAE at 256x256). Caching encodes each training item once per flip variant and trains from
the stored latents: a flipped image's latent is not the flipped latent, so the flips are encoded,
not applied to latents. Random crops are drawn once, when the cache is made.

    file: torch.save({"meta": {...}, "latent": (N, V, c, h, w), "cond_code": (N, V, ...)?, "label": (N,)?})
    V = flip variants: identity, then horizontal, vertical, both (as enabled)

The latents are stored before the latent scale, so the scale can be estimated from them or
changed later. The file is read with torch.load(weights_only=True).
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Callable, Optional

import torch
from tqdm.auto import tqdm

from ..safe_load import load_tensors
from .stream import item_rng

FORMAT = 1


def flip_variants(hflip: bool, vflip: bool) -> list[tuple[bool, bool]]:
    """(horizontal, vertical) flips to encode: the identity first."""
    out = [(False, False)]
    if hflip:
        out.append((True, False))
    if vflip:
        out.append((False, True))
    if hflip and vflip:
        out.append((True, True))
    return out


def flip(x: torch.Tensor, h: bool, v: bool) -> torch.Tensor:
    dims = [d for d, on in ((-1, h), (-2, v)) if on]
    return x.flip(dims) if dims else x


@torch.no_grad()
def encode_dataset(dataset, *, encode: Callable, condition_code: Callable, hflip: bool, vflip: bool,
                   batch_size: int = 16, progress: bool = True) -> dict[str, torch.Tensor]:
    """{"latent": (N, V, c, h, w)[, "cond_code": (N, V, ...)][, "label": (N,)]} for every item of
    `dataset` ({"image"[, "cond"][, "label"]} items, drawn once), on the CPU. encode: images in [0, 1]
    -> unscaled latents; condition_code: condition images -> what the network takes."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    variants = flip_variants(hflip, vflip)
    out: dict[str, list] = {"latent": [], "cond_code": [], "label": []}
    for batch in tqdm(loader, desc="caching latents", disable=not progress):
        x = batch["image"]
        out["latent"].append(torch.stack([encode(flip(x, h, v)) for h, v in variants], 1).cpu())
        if "cond" in batch:
            c = batch["cond"]
            out["cond_code"].append(torch.stack([condition_code(flip(c, h, v)) for h, v in variants], 1).cpu())
        if "label" in batch:
            out["label"].append(batch["label"])
    return {k: torch.cat(v) for k, v in out.items() if v}


def load_or_make_cache(path: str, dataset, *, encode: Callable, condition_code: Callable, meta: dict, hflip: bool,
                       vflip: bool, batch_size: int = 16, is_writer: bool = True) -> dict[str, torch.Tensor]:
    """Read the cache at `path` if it was made for the same model (`meta`) and data settings; else
    (writer only) encode `dataset` and write it atomically. A cache made for other settings is an
    error, never overwritten: the message names the file and the setting that differs."""
    p = Path(path)
    meta = {"format": FORMAT, **meta, "items": len(dataset), "hflip": bool(hflip), "vflip": bool(vflip)}
    if not p.exists():
        if not is_writer:
            raise FileNotFoundError(f"latent cache {p} was not written by the first process")
        data = encode_dataset(dataset, encode=encode, condition_code=condition_code, hflip=hflip, vflip=vflip,
                              batch_size=batch_size)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(p.name + ".partial")
        torch.save({"meta": meta, **data}, tmp)
        tmp.replace(p)
        print(f"cached {len(dataset)} x {data['latent'].shape[1]} latents {tuple(data['latent'].shape[2:])} in {p}")
        return data
    try:
        saved = load_tensors(p)  # weights only: a crafted pickle is refused, no code runs
        old = saved["meta"]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"latent cache {p}: not a dff latent cache ({e}); delete it or choose another "
                         "data.latent_cache") from None
    diff = [k for k in meta if old.get(k) != meta[k]]
    if diff:
        k = diff[0]
        raise ValueError(f"latent cache {p} was made with {k}={old.get(k)!r}, this run has {k}={meta[k]!r}: "
                         "delete the file or give another data.latent_cache (it is never overwritten)")
    return {k: v for k, v in saved.items() if k != "meta"}


class LatentDataset(torch.utils.data.Dataset):
    """Items {"latent": (c, h, w)[, "cond_code"][, "label"]}: one flip variant drawn at random."""

    def __init__(self, data: dict[str, torch.Tensor], seed: Optional[int] = None):
        self.data = data
        self.rng = random.Random(seed) if seed is not None else random

    def __len__(self) -> int:
        return len(self.data["latent"])

    def __getitem__(self, i: int) -> dict:
        i, rng = item_rng(i, self.rng)  # a Key from the training Stream brings its own draws
        return self.gather(i, rng.randrange(self.data["latent"].shape[1]))

    def gather(self, i, v) -> dict:
        """The cached entries of item(s) i in flip variant(s) v: ints, or index tensors (B,) on the cache's device."""
        out = {"latent": self.data["latent"][i, v]}
        if "cond_code" in self.data:
            out["cond_code"] = self.data["cond_code"][i, v]
        if "label" in self.data:
            out["label"] = self.data["label"][i]
        return out

    def indices(self):
        """What training loads (data/device.py's protocol): indices; `batch` gathers their latents on the device."""
        from .device import Indices

        return Indices(len(self), 1)

    def batch(self, index: torch.Tensor, generator: Optional[torch.Generator] = None) -> dict:
        """The cached latents of a batch of indices, one flip variant drawn per item (from `generator`), on index's
        device (the cache moves there with the first batch and stays)."""
        if self.data["latent"].device != index.device:
            self.data = {k: v.to(index.device) for k, v in self.data.items()}
        v = torch.randint(0, self.data["latent"].shape[1], index.shape, device=index.device, generator=generator)
        return self.gather(index, v)


@torch.no_grad()
def sample_latents(encode: Callable, dataset, num: int = 512, batch_size: int = 16, seed: int = 0) -> torch.Tensor:
    """Unscaled latents (`encode`: images in [0, 1] -> latents) of up to `num` training items (a fixed
    random subset), for the latent scale. A LatentDataset gives its cached latents (all flip variants)."""
    if dataset is None:
        raise ValueError("estimating the latent scale needs training data: give model.latent_scale or fit with data")
    if isinstance(dataset, LatentDataset):
        z = dataset.data["latent"]
        idx = torch.randperm(len(z), generator=torch.Generator().manual_seed(seed))[:num]
        return z[idx].flatten(0, 1)
    idx = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:num].tolist()
    out = []
    for start in range(0, len(idx), batch_size):
        x = torch.stack([dataset[i]["image"] for i in idx[start:start + batch_size]])
        out.append(encode(x).cpu())
    return torch.cat(out)
