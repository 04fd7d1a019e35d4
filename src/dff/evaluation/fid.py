"""FID and KID of generated images against reference images, with a pluggable feature extractor.

FID (Heusel et al. 2017): the Fréchet distance between Gaussians fitted to the two feature sets,
    ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)).
It is biased upwards for finite sets (more so the fewer the images and the larger the feature
dimension D), so compare FIDs only at equal numbers of images and with the same extractor. This
module requires at least D + 1 images per set (64-d digits features: 65; 2048-d Inception: 2049),
the fewest for which the sample covariance can be non-singular; thousands are better.

KID (Bińkowski et al. 2018): the unbiased estimate of the squared MMD with the cubic polynomial
kernel k(x, y) = (x.y / D + 1)^3, averaged over random subsets; unbiased, so it is close to 0 (and
can be negative) for two samples of one distribution, even for small sets.

Images go through `compute_features`: images whose size or channel count differs from what the
extractor declares (`input_size`, `input_channels`) are converted with a warning: resized
bilinearly (antialiased when shrinking), RGB(A) to luma for 1-channel extractors, gray repeated for
3-channel ones.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Iterable, Optional, Union

import numpy as np
import torch
import torch.nn as nn

from .features import get_extractor, match_input

Images = Union[torch.Tensor, np.ndarray, str, Path, Iterable]
DEFAULT_KID_SUBSET_SIZE = 1000  # as Bińkowski et al. and torchmetrics
DEFAULT_KID_SUBSETS = 100


# ---------------------------------------------------------------------- features
def _as_features(f, name: str) -> np.ndarray:
    a = f.detach().cpu().double().numpy() if isinstance(f, torch.Tensor) else np.asarray(f, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name}: expected features of shape (N, D), got {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name}: features contain NaN or inf")
    return a


def _batches(images, batch_size: int) -> Iterable[torch.Tensor]:
    """A tensor/array split into batches, or an iterable of batches (tensors, arrays or {"image": ...})."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if isinstance(images, torch.Tensor):
        if images.dim() != 4:
            raise ValueError(f"expected images of shape (N, C, H, W), got {tuple(images.shape)}")
        yield from images.split(batch_size)
        return
    for b in images:
        if isinstance(b, dict):
            b = b["image"]
        elif isinstance(b, (tuple, list)):  # (images, labels) batches
            b = b[0]
        yield torch.as_tensor(b)


@torch.no_grad()
def compute_features(extractor: nn.Module, images: Images, *, batch_size: int = 256,
                     device: Optional[Union[str, torch.device]] = None, what: str = "images") -> np.ndarray:
    """(N, D) float64 features of images: a (N, C, H, W) tensor or array in [0, 1] (uint8: 0..255),
    an iterable of such batches (a DataLoader of {"image": ...} dicts works), or a folder path.

    The extractor runs in eval mode (its mode is restored afterwards) on `device` (default: the
    device of its parameters). Images whose size or channel count differs from the extractor's
    `input_size` / `input_channels` are converted (bilinear resize, luma or repeated gray) with a
    warning.
    """
    if isinstance(images, (str, Path)):
        images = load_image_folder(images, channels=getattr(extractor, "input_channels", None) or 3)
    if device is None:
        p = next(iter(extractor.parameters()), None)
        device = p.device if p is not None else torch.device("cpu")
    channels, size = getattr(extractor, "input_channels", None), getattr(extractor, "input_size", None)
    was_training = extractor.training
    extractor.eval()
    out, warned = [], False
    try:
        for b in _batches(images, batch_size):
            if b.dim() != 4:
                raise ValueError(f"{what}: expected batches of shape (B, C, H, W), got {tuple(b.shape)}")
            mismatch = []
            if channels is not None and b.shape[1] != channels:
                mismatch.append(f"{b.shape[1]} channel(s) converted to {channels}")
            if size is not None and tuple(b.shape[-2:]) != tuple(size):
                mismatch.append(f"{b.shape[-2]}x{b.shape[-1]} resized to {size[0]}x{size[1]} (bilinear)")
            if mismatch and not warned:
                warnings.warn(f"{what}: {type(extractor).__name__} expects "
                              f"{channels or 'any number of'}-channel "
                              f"{'x'.join(map(str, size)) if size else 'any-size'} "
                              f"images; {' and '.join(mismatch)}", stacklevel=2)
                warned = True
            b = match_input(b.to(device), channels, size)
            f = extractor(b)
            if f.dim() != 2 or f.shape[0] != b.shape[0]:
                raise ValueError(f"feature extractor {type(extractor).__name__} returned shape {tuple(f.shape)} "
                                 f"for {b.shape[0]} images; expected (B, D)")
            out.append(f.double().cpu())
    finally:
        extractor.train(was_training)
    if not out:
        raise ValueError(f"{what}: no images")
    return torch.cat(out).numpy()


# ---------------------------------------------------------------------- FID
def min_images_for_fid(dim: int) -> int:
    """The fewest images per set for which a dim-d sample covariance can be non-singular: dim + 1."""
    return dim + 1


def _sqrtm_psd(s: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix (eigenvalues clipped at 0)."""
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def trace_sqrt_product(s1: np.ndarray, s2: np.ndarray) -> float:
    """Tr((S1 S2)^(1/2)) for symmetric PSD S1, S2, as Tr((A S2 A)^(1/2)) with A = S1^(1/2):
    A S2 A is symmetric PSD and similar to S1 S2, so its eigenvalues are real and non-negative
    (rounding can make tiny ones negative: clipped at 0). Unlike scipy.linalg.sqrtm(S1 @ S2), no
    imaginary parts arise to be discarded."""
    a = _sqrtm_psd(s1)
    m = a @ s2 @ a
    w = np.linalg.eigvalsh((m + m.T) / 2)
    return float(np.sqrt(np.clip(w, 0, None)).sum())


def frechet_distance(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """Fréchet (2-Wasserstein squared) distance of N(mu1, S1) and N(mu2, S2)."""
    d = float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt_product(s1, s2))
    return max(d, 0.0)  # rounding can leave -1e-12 for identical sets


def fid_from_features(f1, f2) -> float:
    """FID between two feature sets (N1, D) and (N2, D) (arrays or tensors; computed in float64).

    Means and unbiased (N - 1) covariances of each set; raises if either set has fewer than D + 1
    rows (its covariance would be singular)."""
    f1, f2 = _as_features(f1, "first feature set"), _as_features(f2, "second feature set")
    if f1.shape[1] != f2.shape[1]:
        raise ValueError(f"feature dimensions differ: {f1.shape[1]} and {f2.shape[1]}")
    d = f1.shape[1]
    need = min_images_for_fid(d)
    for name, f in (("first", f1), ("second", f2)):
        if len(f) < need:
            raise ValueError(f"FID with {d}-d features needs at least {need} images per set, got {len(f)} "
                             f"in the {name} set (fewer make the covariance singular; thousands are better)")
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    return frechet_distance(mu1, np.atleast_2d(s1), mu2, np.atleast_2d(s2))


# ---------------------------------------------------------------------- KID
def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """k(x, y) = (x.y / D + 1)^3 for all pairs of rows."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased estimate of MMD^2 with the cubic polynomial kernel (Bińkowski et al. 2018, eq. 2):
    mean k(x, x') over pairs of distinct rows of x, the same for y, minus twice the mean k(x, y)."""
    m, n = len(x), len(y)
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    sxx = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    syy = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(sxx + syy - 2 * kxy.mean())


def kid_from_features(f1, f2, *, subsets: int = DEFAULT_KID_SUBSETS, subset_size: int = DEFAULT_KID_SUBSET_SIZE,
                      seed: int = 0) -> tuple[float, float]:
    """(mean, std) of the unbiased MMD^2 over `subsets` random subsets of `subset_size` rows drawn
    without replacement from each set (independently per subset; seeded, so repeatable).
    The std is the spread of the subset estimates (as torchmetrics and Bińkowski et al. report it),
    not the standard error of the mean. Raises if subset_size exceeds either set."""
    f1, f2 = _as_features(f1, "first feature set"), _as_features(f2, "second feature set")
    if f1.shape[1] != f2.shape[1]:
        raise ValueError(f"feature dimensions differ: {f1.shape[1]} and {f2.shape[1]}")
    if subset_size < 2:
        raise ValueError(f"KID subset_size must be at least 2, got {subset_size}")
    if subsets < 1:
        raise ValueError(f"KID subsets must be at least 1, got {subsets}")
    for name, f in (("first", f1), ("second", f2)):
        if subset_size > len(f):
            raise ValueError(f"KID subset_size {subset_size} is larger than the {name} set ({len(f)} images); "
                             f"use a subset_size of at most {min(len(f1), len(f2))}")
    rng = np.random.default_rng(seed)
    scores = []
    for _ in range(subsets):
        i = rng.choice(len(f1), subset_size, replace=False)
        j = rng.choice(len(f2), subset_size, replace=False)
        scores.append(mmd2_unbiased(f1[i], f2[j]))
    s = np.asarray(scores)
    return float(s.mean()), float(s.std())


# ---------------------------------------------------------------------- images and the one-call API
def load_image_folder(path: Union[str, Path], channels: int = 3, size: Optional[int] = None) -> torch.Tensor:
    """All images below path (recursively, sorted) as a (N, channels, H, W) float tensor in [0, 1].

    size: resize each image to size x size (shorter side to size, then a centre crop: as training's
    crop="resize"); None keeps the native size, which must then be the same for all images."""
    from ..data.folder import find_images, load_image, to_tensor, transform_same

    files = find_images(path)
    images = []
    for p in files:
        try:
            im = load_image(p, channels)
        except Exception as e:  # noqa: BLE001 - PIL raises many types; name the file
            raise ValueError(f"could not decode image {str(p)!r}: {type(e).__name__}: {e}") from e
        if size is not None and im.size != (size, size):
            im = transform_same([im], size, "resize", hflip=False, vflip=False, rng=None)[0]
        images.append(im)
    sizes = sorted({im.size for im in images})
    if len(sizes) > 1:
        raise ValueError(f"images below {str(path)!r} have {len(sizes)} different sizes "
                         f"({', '.join(f'{w}x{h}' for w, h in sizes[:5])}{'...' if len(sizes) > 5 else ''}); "
                         "pass size= to resize them to one")
    return torch.stack([to_tensor(im) for im in images])


def evaluate_generation(samples: Images, reference: Images, extractor: Union[str, nn.Module] = "digits", *,
                        weights: Optional[str] = None, batch_size: int = 256,
                        kid_subsets: int = DEFAULT_KID_SUBSETS, kid_subset_size: Optional[int] = None,
                        seed: int = 0, device: Optional[Union[str, torch.device]] = None) -> dict:
    """FID and KID of generated `samples` against `reference` images.

    samples, reference: (N, C, H, W) tensors/arrays in [0, 1], iterables of batches, or folders of
    images. extractor: a module or a name for `get_extractor` ("digits", "inception",
    "module.path:factory"). kid_subset_size None: min(1000, both set sizes).
    Returns {"fid", "kid_mean", "kid_std", "n_samples", "n_reference", "feature_dim"}.
    """
    if isinstance(extractor, str):
        extractor = get_extractor(extractor, weights)
    if device is not None:
        extractor = extractor.to(device)
    f_s = compute_features(extractor, samples, batch_size=batch_size, device=device, what="samples")
    f_r = compute_features(extractor, reference, batch_size=batch_size, device=device, what="reference")
    if kid_subset_size is None:
        kid_subset_size = min(DEFAULT_KID_SUBSET_SIZE, len(f_s), len(f_r))
    fid = fid_from_features(f_s, f_r)
    kid_mean, kid_std = kid_from_features(f_s, f_r, subsets=kid_subsets, subset_size=kid_subset_size, seed=seed)
    return {"fid": fid, "kid_mean": kid_mean, "kid_std": kid_std, "n_samples": len(f_s),
            "n_reference": len(f_r), "feature_dim": f_s.shape[1]}
