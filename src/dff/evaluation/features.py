"""Feature extractors for FID/KID: the shipped digits CNN, InceptionV3 pool3, or your own.

An extractor is any `nn.Module` mapping images (B, C, H, W), float in [0, 1], to features (B, D).
It may declare what it expects with two attributes, used by `dff.evaluation.fid.compute_features`
to convert other inputs (with a warning) before calling it:

    input_channels: int | None    1 (grayscale), 3 (RGB), ...; None: any
    input_size: (H, W) | None     None: any size (the extractor resizes internally)

Which extractor to use:

* "digits" (`DigitsFeatures`): a small CNN trained on scikit-learn's 8x8 digits upsampled to 16x16,
  64-d features. The right yardstick for the digits demo; meaningless for other data.
* "inception" (`InceptionFeatures`): the standard InceptionV3 pool3 features (2048-d) of the
  original FID (Heusel et al. 2017), through torchmetrics and torch-fidelity. Comparable with
  published FIDs of RGB natural images; a poor yardstick for grayscale, multispectral, medical or
  other data unlike ImageNet photos.
* "module.path:factory" (or "path/to/file.py:factory"): your own. For grayscale, multispectral,
  medical or other non-photo data, train a classifier on your own reference data (labels of any
  kind: classes, sites, scanners...) and return its penultimate layer as the features, as
  `DigitsFeatures` does for the digits (see scripts/train_digits_features.py). `factory()` is called
  without arguments, or as `factory(weights)` when weights are given, and must return an nn.Module.

FIDs are comparable only when computed with the same extractor, weights and number of images.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.tasks import grayscale

HERE = Path(__file__).resolve().parent
DIGITS_WEIGHTS = HERE / "digits_features.safetensors"
DIGITS_INFO = HERE / "digits_features.json"
TRAIN_SCRIPT = "scripts/train_digits_features.py"

# torch-fidelity's InceptionV3 FID weights (the TensorFlow 2015-12-05 graph converted to PyTorch)
INCEPTION_WEIGHTS_NAME = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_WEIGHTS_NAME}"


# ---------------------------------------------------------------------- input conversion
def to_float_images(x: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float in [0, 1]; float images are passed through as float32."""
    if x.dim() != 4:
        raise ValueError(f"expected images of shape (B, C, H, W), got {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        return x.float() / 255.0
    return x.float()


def match_channels(x: torch.Tensor, channels: Optional[int]) -> torch.Tensor:
    """Convert (B, C, H, W) to `channels`: RGB(A) -> luma for 1; gray -> repeated, RGBA -> RGB for 3."""
    c = x.shape[1]
    if channels is None or c == channels:
        return x
    if channels == 1 and c in (3, 4):
        return grayscale(x)  # ITU-R BT.601 luma, as PIL's convert("L")
    if channels == 3 and c == 1:
        return x.repeat(1, 3, 1, 1)
    if channels == 3 and c == 4:
        return x[:, :3]
    raise ValueError(
        f"cannot convert {c}-channel images to the {channels} channel(s) the feature extractor expects; "
        "for data with other channel counts (multispectral, medical...) use your own extractor, "
        "given as 'module.path:factory' (see dff.evaluation.features)"
    )


def match_size(x: torch.Tensor, size: Optional[tuple[int, int]]) -> torch.Tensor:
    """Bilinear resize to size (H, W) (antialiased when shrinking); None or equal size: unchanged."""
    if size is None or tuple(x.shape[-2:]) == tuple(size):
        return x
    shrink = x.shape[-2] > size[0] or x.shape[-1] > size[1]
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False, antialias=shrink)


def match_input(x: torch.Tensor, channels: Optional[int], size: Optional[tuple[int, int]]) -> torch.Tensor:
    """uint8 -> float, then channel conversion and bilinear resize to what an extractor expects."""
    return match_size(match_channels(to_float_images(x), channels), size)


# ---------------------------------------------------------------------- digits
def digits_split(labels: Union[torch.Tensor, np.ndarray], seed: int = 0,
                 test_fraction: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, held-out indices): the stratified split the shipped digits weights used."""
    from sklearn.model_selection import train_test_split

    y = np.asarray(labels)
    idx = np.arange(len(y))
    train, test = train_test_split(idx, test_size=test_fraction, stratify=y, random_state=seed)
    return np.sort(train), np.sort(test)


class DigitsFeatures(nn.Module):
    """A small CNN for the digits (1 x 16 x 16 in [0, 1], white on black) and its 64-d features.

    conv 16 -> conv 32 -> pool -> conv 64 -> pool -> conv 64 -> avgpool 2x2 -> linear 256->64 (features)
    -> ReLU -> linear 64->10 (classes). The features are the 64 pre-activation outputs of the
    penultimate layer (not ReLU-ed, so no dead units make the covariance singular).

    Inputs of another size are resized bilinearly to 16x16 and 3/4-channel inputs are converted to
    luma (silently here; `compute_features` warns); uint8 inputs are scaled from 0..255.
    The module stays in eval mode and needs no gradients after `pretrained()`.
    """

    input_channels = 1
    input_size = (16, 16)
    feature_dim = 64
    num_features = 64  # read by torchmetrics' FID/KID with a custom `feature` module

    def __init__(self):
        super().__init__()

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        self.body = nn.Sequential(
            *block(1, 16), *block(16, 32), nn.MaxPool2d(2),  # 8x8
            *block(32, 64), nn.MaxPool2d(2),  # 4x4
            *block(64, 64), nn.AvgPool2d(2),  # 2x2
            nn.Flatten(),
        )
        self.embed = nn.Linear(64 * 2 * 2, self.feature_dim)
        self.head = nn.Linear(self.feature_dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images in [0, 1] -> (B, 64) features."""
        x = match_input(x, self.input_channels, self.input_size)
        return self.embed(self.body(x))

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images in [0, 1] -> (B, 10) logits of the digit classes."""
        return self.head(F.relu(self.forward(x)))

    @classmethod
    def pretrained(cls, weights: Optional[Union[str, Path]] = None) -> "DigitsFeatures":
        """The shipped weights (src/dff/evaluation/digits_features.safetensors) or another file."""
        from safetensors.torch import load_file

        path = Path(weights) if weights is not None else DIGITS_WEIGHTS
        if not path.is_file():
            how = (f"regenerate the shipped file with `python {TRAIN_SCRIPT}` (about a minute on a CPU)"
                   if weights is None else f"train one with `python {TRAIN_SCRIPT} --out {path}`")
            raise FileNotFoundError(f"digits feature-extractor weights {str(path)!r} not found; {how}")
        model = cls()
        model.load_state_dict(load_file(str(path)))
        return model.eval().requires_grad_(False)


# ---------------------------------------------------------------------- inception
class InceptionFeatures(nn.Module):
    """InceptionV3 pool3 features (2048-d), the standard FID/KID extractor, via torchmetrics'
    `NoTrainInceptionV3` (which needs the torch-fidelity package).

    Inputs (B, C, H, W) in [0, 1] (or uint8): grayscale is repeated to RGB, RGBA loses its alpha,
    then the images are quantised to uint8 and resized to 299x299 inside the network. By default the
    resize is torch-fidelity's TensorFlow-1.x-compatible bilinear one (antialias=False), which
    reproduces the original FID implementation and published numbers; torchmetrics' own default
    is antialias=True, which gives different (not comparable) values.

    weights: a local copy of torch-fidelity's InceptionV3 FID weights
    (weights-inception-2015-12-05-6726825d.pth); None downloads them once into torch's hub cache.
    """

    input_channels = 3
    input_size = None  # any size: resized to 299x299 inside, as the FID protocol does
    feature_dim = 2048
    num_features = 2048

    def __init__(self, weights: Optional[Union[str, Path]] = None, antialias: bool = False):
        super().__init__()
        if importlib.util.find_spec("torch_fidelity") is None:
            raise ModuleNotFoundError(
                "the 'inception' feature extractor needs the torch-fidelity package, which is not installed: "
                "`pip install torch-fidelity` (and the InceptionV3 weights: pass a local copy of "
                f"{INCEPTION_WEIGHTS_NAME} as weights, or let it download them once from {INCEPTION_WEIGHTS_URL}); "
                "or use the 'digits' extractor or your own ('module.path:factory')"
            )
        if weights is not None and not Path(weights).is_file():
            raise FileNotFoundError(
                f"InceptionV3 weights {str(weights)!r} not found; expected torch-fidelity's {INCEPTION_WEIGHTS_NAME} "
                f"(download: {INCEPTION_WEIGHTS_URL})"
            )
        from torchmetrics.image.fid import NoTrainInceptionV3

        try:
            self.net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                          feature_extractor_weights_path=None if weights is None else str(weights),
                                          antialias=antialias)
        except (OSError, RuntimeError) as e:  # URLError is an OSError; offline hub downloads end here
            if weights is not None:
                raise RuntimeError(f"could not load InceptionV3 weights from {str(weights)!r}: {e}") from e
            raise RuntimeError(
                f"could not download the InceptionV3 FID weights ({e}); download {INCEPTION_WEIGHTS_URL} "
                "on a machine with network access and pass the file as weights"
            ) from e
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images in [0, 1] -> (B, 2048) pool3 features."""
        x = match_channels(to_float_images(x), 3)
        x = (x.clamp(0, 1) * 255).round().to(torch.uint8)
        return self.net(x)


# ---------------------------------------------------------------------- lookup
EXTRACTORS = ("digits", "inception")


def load_factory(spec: str) -> Callable:
    """'package.module:factory' or 'path/to/file.py:factory' (factory may be dotted: 'Class.create')."""
    mod_name, _, attr = spec.rpartition(":")  # rpartition: Windows paths hold a colon
    if not mod_name or not attr:
        raise ValueError(f"custom feature extractor {spec!r}: expected 'module.path:factory' or 'file.py:factory'")
    if mod_name.endswith(".py"):
        path = Path(mod_name)
        if not path.is_file():
            raise FileNotFoundError(f"custom feature extractor {spec!r}: file {mod_name!r} not found")
        name = f"dff_user_extractor_{path.stem}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        module_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(mod_name)
        except ModuleNotFoundError as e:
            raise ModuleNotFoundError(f"custom feature extractor {spec!r}: cannot import {mod_name!r} ({e})") from e
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise AttributeError(f"custom feature extractor {spec!r}: {mod_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"custom feature extractor {spec!r}: {attr!r} is not callable")
    return obj


def get_extractor(name: str = "digits", weights: Optional[Union[str, Path]] = None) -> nn.Module:
    """A feature extractor, in eval mode without gradients, by name:

    "digits"               DigitsFeatures.pretrained(weights): shipped weights when weights is None
    "inception"            InceptionFeatures(weights): InceptionV3 pool3; needs torch-fidelity
    "module.path:factory"  your own: factory() or factory(weights) returning an nn.Module that maps
    "file.py:factory"      (B, C, H, W) images in [0, 1] to (B, D) features; for grayscale,
                           multispectral or medical data, train a classifier on your own reference
                           data and return its penultimate layer (see DigitsFeatures)
    """
    if name == "digits":
        model = DigitsFeatures.pretrained(weights)
    elif name == "inception":
        model = InceptionFeatures(weights)
    elif ":" in name:
        factory = load_factory(name)
        model = factory() if weights is None else factory(weights)
        if not isinstance(model, nn.Module):
            raise TypeError(f"custom feature extractor {name!r} returned {type(model).__name__}, expected an nn.Module")
    else:
        raise ValueError(f"unknown feature extractor {name!r}: expected one of {', '.join(EXTRACTORS)} "
                         "or your own as 'module.path:factory'")
    return model.eval().requires_grad_(False)
