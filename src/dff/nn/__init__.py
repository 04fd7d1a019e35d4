"""Networks: net(x_t, t, cond) -> prediction. They know nothing of diffusion."""
from .unet import UNet

__all__ = ["UNet"]
