"""dff, DiffusionFastForward: train diffusion models on new kinds of image data and sample from them.

    from dff import DiffusionModel, load_pretrained, save_pretrained   # the model, no Lightning
    from dff import DiffusionModule, fit                                  # training it (Lightning)
    from dff import PixelDiffusion, PixelDiffusionConditional, LatentDiffusion, LatentDiffusionConditional
    from dff import GaussianDiffusion

The names are imported on first use, so `import dff` (and `dff --version`) stays fast. The package's floors:
diffusion/, nn/, data/ (math, networks, data) < models/ (plain torch) < evaluation/, viz/ < training/
(Lightning) < tools/ < cli.py; docs/architecture.md draws them. Modules of dff <= 0.2 that moved into these
folders keep their old names (MOVED below): `from dff.module import DiffusionModule` still works.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from typing import TYPE_CHECKING

__version__ = "0.3.0"

# public name -> the module that defines it
_PUBLIC = {
    "DiffusionModel": "dff.models",
    "load_pretrained": "dff.models",
    "save_pretrained": "dff.models",
    "DiffusionModule": "dff.training.module",
    "PixelDiffusion": "dff.training.module",
    "PixelDiffusionConditional": "dff.training.module",
    "LatentDiffusion": "dff.training.module",
    "LatentDiffusionConditional": "dff.training.module",
    "GaussianDiffusion": "dff.diffusion",
    "fit": "dff.training.fit",
}
__all__ = ["__version__", "DiffusionModel", "DiffusionModule", "PixelDiffusion", "PixelDiffusionConditional",
           "LatentDiffusion", "LatentDiffusionConditional", "GaussianDiffusion", "load_pretrained", "save_pretrained",
           "fit"]

# module names of dff <= 0.2 -> where the module lives now
MOVED = {
    "dff.module": "dff.training.module",
    "dff.autoencoder_module": "dff.training.autoencoder_module",
    "dff.callbacks": "dff.training.callbacks",
    "dff.posthoc_ema": "dff.training.posthoc_ema",
    "dff.speed": "dff.training.speed",
    "dff.optim": "dff.training.optim",
    "dff.runs": "dff.training.runs",
    "dff.train": "dff.training.fit",
    "dff.report": "dff.training.report",
    "dff.latent": "dff.models.latent_space",
    "dff.autoencoders": "dff.models.autoencoders",
    "dff.ema": "dff.models.ema",
    "dff.pretrained": "dff.models.pretrained",
    "dff.metrics": "dff.evaluation.psnr_ssim",
    "dff.translate": "dff.tools.translate",
    "dff.doctor": "dff.tools.doctor",
    "dff.explore": "dff.tools.explore",
    "dff.demo": "dff.tools.demo",
    "dff.estimate": "dff.training.estimate",
    "dff.learn": "dff.tools.learn",
    "dff.viz.process": "dff.viz.sandbox",
    "dff.data.latents": "dff.data.latent_cache",
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports an old module name as the module itself at its new place (one module object, two names)."""

    def find_spec(self, name, path=None, target=None):
        return importlib.util.spec_from_loader(name, self) if name in MOVED else None

    def create_module(self, spec):
        return importlib.import_module(MOVED[spec.name])

    def exec_module(self, module) -> None:
        pass


if not any(isinstance(f, _MovedModules) for f in sys.meta_path):
    sys.meta_path.append(_MovedModules())

if TYPE_CHECKING:  # for editors and type checkers: the same names, imported eagerly
    from .diffusion import GaussianDiffusion
    from .training.module import (DiffusionModule, LatentDiffusion, LatentDiffusionConditional, PixelDiffusion,
                         PixelDiffusionConditional)
    from .models.pretrained import load_pretrained, save_pretrained
    from .training.fit import fit


def __getattr__(name: str):
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dff' has no attribute {name!r}")
