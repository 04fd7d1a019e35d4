"""dff, DiffusionFastForward: train diffusion models on new kinds of image data and sample from them.

    from dff import PixelDiffusion, PixelDiffusionConditional, LatentDiffusion, LatentDiffusionConditional
    from dff import DiffusionModule, GaussianDiffusion, load_pretrained, fit

The names are imported on first use, so `import dff` (and `dff --version`) stays fast.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.2.0"

# public name -> the module that defines it
_PUBLIC = {
    "DiffusionModule": "dff.module",
    "PixelDiffusion": "dff.module",
    "PixelDiffusionConditional": "dff.module",
    "LatentDiffusion": "dff.module",
    "LatentDiffusionConditional": "dff.module",
    "GaussianDiffusion": "dff.diffusion",
    "load_pretrained": "dff.pretrained",
    "save_pretrained": "dff.pretrained",
    "fit": "dff.train",
}
__all__ = ["__version__", "DiffusionModule", "PixelDiffusion", "PixelDiffusionConditional", "LatentDiffusion",
           "LatentDiffusionConditional", "GaussianDiffusion", "load_pretrained", "save_pretrained", "fit"]

if TYPE_CHECKING:  # for editors and type checkers: the same names, imported eagerly
    from .diffusion import GaussianDiffusion
    from .module import (DiffusionModule, LatentDiffusion, LatentDiffusionConditional, PixelDiffusion,
                         PixelDiffusionConditional)
    from .pretrained import load_pretrained, save_pretrained
    from .train import fit


def __getattr__(name: str):
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dff' has no attribute {name!r}")
