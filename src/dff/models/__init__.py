"""The plain models, no Lightning: DiffusionModel (latent space + network + EMA + diffusion process), the
autoencoders it may work in, the latent space, EMA weights, and exports (save_pretrained / load_pretrained)."""
from .diffusion_model import DiffusionModel
from .latent_space import LatentSpace
from .pretrained import load_pretrained, save_pretrained

__all__ = ["DiffusionModel", "LatentSpace", "load_pretrained", "save_pretrained"]
