"""Feature extractors for FID/KID: the shipped digits CNN, InceptionV3 pool3, or your own.

An extractor is any `nn.Module` mapping images (B, C, H, W), float in [0, 1], to features (B, D).
It may declare what it expects with two attributes, used by `dff.evaluation.fid.compute_features`
to convert other inputs (with a warning) before calling it:

    input_channels: int | None    1 (grayscale), 3 (RGB), ...; None: any
    input_size: (H, W) | None     None: any size (the extractor resizes internally)

Which extractor to use:

* "digits" (`DigitsFeatures`): a small CNN trained on scikit-learn's 8x8 digits upsampled to 16x16,
  64-d features. The right yardstick for the digits demo; meaningless for other data.
* "textures" (`TextureFeatures`): the same kind of CNN trained on 128x128 patches of scikit-image's
  brick, grass and gravel textures: the yardstick of the latent demo.
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
import json
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
TEXTURE_WEIGHTS = HERE / "texture_features.safetensors"
TEXTURE_INFO = HERE / "texture_features.json"
TEXTURE_TRAIN_SCRIPT = "scripts/train_texture_features.py"

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


def texture_heldout_patches(size: int = 128, stride: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Every `stride`-th size x size crop of the textures' held-out bottom quarters (the split of
    dff.data.builtin.load_photos): ((N, 1, size, size) images in [0, 1], (N,) labels brick 0, grass 1,
    gravel 2). The held-out set the shipped texture weights are scored on."""
    from ..data.builtin import load_photos
    from ..data.folder import to_tensor

    x, y = [], []
    for label, im in enumerate(load_photos("val", 1, "textures")):
        t = to_tensor(im)
        for top in range(0, t.shape[1] - size + 1, stride):
            for left in range(0, t.shape[2] - size + 1, stride):
                x.append(t[:, top:top + size, left:left + size])
                y.append(label)
    return torch.stack(x), torch.tensor(y)


class ShippedClassifier(nn.Module):
    """A small CNN judge shipped with weights: `forward` gives its features (the penultimate layer's
    pre-activations, not ReLU-ed, so no dead units make the covariance singular), `classify` its class
    logits, `pretrained()` loads the shipped weights. Subclasses define `body`, `embed`, `head`,
    `input_channels`, `input_size` and `weights_file()`/`train_script`."""

    input_channels: Optional[int] = 1
    input_size: Optional[tuple[int, int]] = None
    feature_dim = num_features = 64  # num_features is read by torchmetrics' FID/KID with a custom `feature`
    train_script = ""

    @staticmethod
    def block(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True)]

    @classmethod
    def weights_file(cls) -> Path:
        raise NotImplementedError

    @classmethod
    def build(cls, weights: Path) -> "ShippedClassifier":
        """The untrained network that `weights` fit."""
        return cls()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images in [0, 1] -> (B, feature_dim) features."""
        x = match_input(x, self.input_channels, self.input_size)
        return self.embed(self.body(x))

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images in [0, 1] -> (B, classes) logits."""
        return self.head(F.relu(self.forward(x)))

    @classmethod
    def pretrained(cls, weights: Optional[Union[str, Path]] = None) -> "ShippedClassifier":
        """The shipped weights (beside this file) or another file."""
        from safetensors.torch import load_file

        path = Path(weights) if weights is not None else cls.weights_file()
        if not path.is_file():
            how = (f"regenerate the shipped file with `python {cls.train_script}` (a minute or two on a CPU)"
                   if weights is None else f"train one with `python {cls.train_script} --out {path}`")
            raise FileNotFoundError(f"{cls.__name__} weights {str(path)!r} not found; {how}")
        model = cls.build(path)
        model.load_state_dict(load_file(str(path)))
        return model.eval().requires_grad_(False)


class DigitsFeatures(ShippedClassifier):
    """A small CNN for the digits (1 x 16 x 16 in [0, 1], white on black) and its 64-d features.

    conv 16 -> conv 32 -> pool -> conv 64 -> pool -> conv 64 -> avgpool 2x2 -> linear 256->64 (features)
    -> ReLU -> linear 64->10 (classes).

    Inputs of another size are resized bilinearly to 16x16 and 3/4-channel inputs are converted to
    luma (silently here; `compute_features` warns); uint8 inputs are scaled from 0..255.
    The module stays in eval mode and needs no gradients after `pretrained()`.
    """

    input_size = (16, 16)
    train_script = TRAIN_SCRIPT

    def __init__(self):
        super().__init__()
        block = self.block
        self.body = nn.Sequential(
            *block(1, 16), *block(16, 32), nn.MaxPool2d(2),  # 8x8
            *block(32, 64), nn.MaxPool2d(2),  # 4x4
            *block(64, 64), nn.AvgPool2d(2),  # 2x2
            nn.Flatten(),
        )
        self.embed = nn.Linear(64 * 2 * 2, self.feature_dim)
        self.head = nn.Linear(self.feature_dim, 10)

    @classmethod
    def weights_file(cls) -> Path:
        return DIGITS_WEIGHTS


class TextureFeatures(ShippedClassifier):
    """A small CNN for scikit-image's three textures (brick, grass, gravel; 1 x size x size patches in
    [0, 1], size that of the demo) and its 64-d features: the judge of the latent demo
    (scripts/train_texture_features.py trains it on the training three quarters of each texture and
    reports its accuracy on the held-out bottom quarter).

    Its fourth class, "none", is trained on what is not one of the textures: noise, flat grey, real
    crops blurred beyond recognition or with their pixels shuffled. Without it a three-way classifier
    labels pure noise "grass" with confidence 1 (measured), and could not judge a generator.

    conv 16 /2 -> conv 32 -> pool -> conv 64 -> pool -> conv 64 -> pool -> conv 64 -> global average
    (texture statistics are the same everywhere) -> linear 64->64 (features) -> ReLU -> linear 64->4.
    """

    train_script = TEXTURE_TRAIN_SCRIPT
    classes = ("brick", "grass", "gravel", "none")  # dff.data.builtin.TEXTURES, then "not a texture"

    def __init__(self, size: int = 128):
        super().__init__()
        self.input_size = (size, size)  # the crop size it was trained on (fully convolutional otherwise)
        block = self.block
        self.body = nn.Sequential(
            *block(1, 16, stride=2), *block(16, 32), nn.MaxPool2d(2),  # 32x32
            *block(32, 64), nn.MaxPool2d(2),  # 16x16
            *block(64, 64), nn.MaxPool2d(2),  # 8x8
            *block(64, 64), nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.embed = nn.Linear(64, self.feature_dim)
        self.head = nn.Linear(self.feature_dim, len(self.classes))

    @classmethod
    def weights_file(cls) -> Path:
        return TEXTURE_WEIGHTS

    @torch.no_grad()
    def recognise(self, x: torch.Tensor, threshold: float = 0.9) -> torch.Tensor:
        """(B, C, H, W) images in [0, 1] -> (B,) texture index (0 brick, 1 grass, 2 gravel) where one texture
        has probability >= threshold, else -1 (unsure, or "none")."""
        p = torch.cat([self.classify(b).softmax(1) for b in x.split(64)])
        conf, label = p.max(1)
        sure = (conf >= threshold) & (label < len(self.classes) - 1)
        return torch.where(sure, label, torch.full_like(label, -1))

    @classmethod
    def build(cls, weights: Path) -> "TextureFeatures":
        """An untrained judge of the crop size stated in the JSON beside `weights` (128 without one)."""
        info = weights.with_suffix(".json")
        return cls(json.loads(info.read_text()).get("size", 128) if info.is_file() else 128)


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
EXTRACTORS = ("digits", "textures", "inception")


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
    "textures"             TextureFeatures.pretrained(weights): the latent demo's brick/grass/gravel judge
    "inception"            InceptionFeatures(weights): InceptionV3 pool3; needs torch-fidelity
    "module.path:factory"  your own: factory() or factory(weights) returning an nn.Module that maps
    "file.py:factory"      (B, C, H, W) images in [0, 1] to (B, D) features; for grayscale,
                           multispectral or medical data, train a classifier on your own reference
                           data and return its penultimate layer (see DigitsFeatures)
    """
    if name == "digits":
        model = DigitsFeatures.pretrained(weights)
    elif name == "textures":
        model = TextureFeatures.pretrained(weights)
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
