"""The space a diffusion model works in: z_0 = s * E(2x - 1), and back, x = (D(z_0 / s) + 1) / 2.

    x      images (B, C, H, W) in [0, 1], as they cross every public boundary
    E, D   the autoencoder's encoder and decoder (the identity in pixel space), on images in [-1, 1]
    s      the latent scale: 1 in pixel space; for latent models 1 / std of the training latents,
           estimated at the start of fit unless given (Rombach et al. 2022, Sec. 4.3.2 and App. G)
    f      the autoencoder's spatial down-sampling factor (1 in pixel space)

Conditions of image-to-image models enter the network as a "condition code": in pixel space the
condition image in [-1, 1]; in latent space either its latent s * E(2c - 1) ('encode', as the
original project) or the image area-resized to the latent size ('resize', for conditions the
autoencoder was not trained on, such as masks or other channel counts).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .autoencoders import IdentityAutoencoder, load_autoencoder, to_image_space, to_model_space

LATENT_CONDITIONS: tuple[str, ...] = ("encode", "resize")


def _drop_autoencoder_keys(module, state_dict, prefix, local_metadata) -> None:
    """State-dict hook: the frozen autoencoder is not part of the model's weights."""
    for k in [k for k in state_dict if k.startswith(prefix + "autoencoder.")]:
        del state_dict[k]


def _fill_autoencoder_keys(module, state_dict, prefix, *args) -> None:
    """Load pre-hook: the autoencoder's weights come from its own folder, so a state dict without them
    (every checkpoint) keeps the loaded ones."""
    for k, v in module.autoencoder.state_dict().items():
        state_dict.setdefault(prefix + "autoencoder." + k, v)


class LatentSpace(nn.Module):
    """The autoencoder (E, D) and the latent scale s (a buffer, so checkpoints keep the estimate)."""

    def __init__(
        self,
        autoencoder: Optional[str],  # AutoencoderKL folder, dff autoencoder run or hub id (None: pixel space)
        channels: int,  # image channels
        scale: Optional[float] = None,  # s; None: estimated from the training data (latent models)
        condition: str = "encode",  # conditions: encode (by the autoencoder) | resize (to the latent size)
    ):
        super().__init__()
        if condition not in LATENT_CONDITIONS:
            raise ValueError(f"unknown latent_condition {condition!r}: expected 'encode' or 'resize'")
        self.source = autoencoder
        self.autoencoder = load_autoencoder(autoencoder, channels)
        self.condition = condition
        self.is_latent = not isinstance(self.autoencoder, IdentityAutoencoder)
        s = 1.0 if not self.is_latent else float("nan") if scale is None else float(scale)  # NaN: not estimated yet
        self.register_buffer("scale", torch.tensor(s, dtype=torch.float32))
        # the frozen autoencoder is rebuilt from its folder or hub id, never stored in checkpoints
        self._register_state_dict_hook(_drop_autoencoder_keys)
        self._register_load_state_dict_pre_hook(_fill_autoencoder_keys, with_module=True)

    @property
    def factor(self) -> int:
        return self.autoencoder.factor

    @property
    def channels(self) -> int:
        """c, the channels of z (the image channels in pixel space)."""
        return self.autoencoder.latent_channels

    def code_channels(self, cond_channels: int) -> int:
        """Channels of the condition code for condition images of cond_channels channels (0: none)."""
        encoded = self.is_latent and cond_channels and self.condition == "encode"
        return self.channels if encoded else cond_channels

    def cache_meta(self) -> dict:
        """What latents made by this space depend on: a latent cache (data/latent_cache.py) made by another
        autoencoder, other weights or another condition code is refused, not reused."""
        return {"autoencoder": str(self.source), "autoencoder_weights": self.autoencoder.fingerprint(),
                "latent_condition": self.condition}

    def s(self, check: bool = True) -> torch.Tensor:
        """The latent scale; an error while it has not been estimated. check=False skips the test, which
        reads the value back from the device: the training step, checked once at the start of fit, uses it."""
        if check and torch.isnan(self.scale):
            raise RuntimeError("the latent scale is not set: it is estimated at the start of `fit` "
                               "(or give model.latent_scale)")
        return self.scale

    def encode_unscaled(self, x: torch.Tensor) -> torch.Tensor:
        """E(2x - 1): images (B, C, H, W) in [0, 1] -> latents (B, c, H/f, W/f), before the scale;
        x is moved to the autoencoder's device."""
        return self.autoencoder.encode(to_model_space(x.to(self.scale.device)))

    def encode(self, x: torch.Tensor, *, check: bool = True) -> torch.Tensor:
        """z_0 = s * E(2x - 1), the data the diffusion model sees (check: see s)."""
        return self.encode_unscaled(x) * self.s(check)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] from z_0: (D(z_0 / s) + 1) / 2."""
        return to_image_space(self.autoencoder.decode(z / self.s()))

    def condition_code(self, cond: torch.Tensor) -> torch.Tensor:
        """The condition as the network takes it, before any latent scale: pixel space and 'resize':
        the image in [-1, 1] (area-resized to the latent size); 'encode': its latent E(2c - 1)."""
        c = to_model_space(cond.to(self.scale.device))
        if not self.is_latent:
            return c
        if self.condition == "encode":
            return self.autoencoder.encode(c)
        f = self.factor
        return F.interpolate(c, size=(c.shape[-2] // f, c.shape[-1] // f), mode="area")

    def scale_condition(self, code: torch.Tensor, *, check: bool = True) -> torch.Tensor:
        """Encoded conditions get the latents' scale; images stay as they are (check: see s)."""
        return code * self.s(check) if self.is_latent and self.condition == "encode" else code

    @property
    def has_scale(self) -> bool:
        """Whether s is known (given, estimated, or loaded from a checkpoint); reads the value from the device."""
        return not torch.isnan(self.scale).item()

    @torch.no_grad()
    def estimate_scale(self, latents: torch.Tensor) -> float:
        """s = 1 / std of the given unscaled latents (Rombach et al. 2022, Sec. 4.3.2 / App. G), returned, not stored
        (the training shell estimates it once, at the start of fit, and sets rank 0's estimate on every rank)."""
        return 1.0 / latents.float().std().item()

    @torch.no_grad()
    def set_scale(self, s: float) -> None:
        """Set s (the one place it is written; checkpoints and exports keep it, as a buffer)."""
        if not (s > 0 and s < float("inf")):
            raise ValueError(f"latent scale {s}: expected a positive finite number")
        self.scale.fill_(s)
