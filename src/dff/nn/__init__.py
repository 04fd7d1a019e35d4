"""Networks: net(x_t, t, cond) -> prediction. They know nothing of diffusion."""
from .adm import ADMUNet
from .unet import UNet

BACKBONES = {"convnext": UNet, "adm": ADMUNet}

__all__ = ["UNet", "ADMUNet", "BACKBONES"]
