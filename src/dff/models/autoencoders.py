"""Autoencoders, one interface: `encode` images in [-1, 1] to latents, `decode` latents back.

    x (B, C, H, W) in [-1, 1]  --encode-->  z (B, c, H/f, W/f)  --decode-->  x_hat (B, C, H, W)

Pixel diffusion is latent diffusion with the identity autoencoder (f = 1, z = x). Latent
diffusion (Rombach et al. 2022) uses a KL-regularised autoencoder: diffusers' `AutoencoderKL`,
loaded from a local folder in diffusers' format, a hub id such as `stabilityai/sd-vae-ft-ema`
(the original project's default), a dff run that trained one (`AutoencoderModule`), or one shipped in the
package under a `dff:` name (`dff:textures`: the latent demo's, in weights/; BUILTIN_AUTOENCODERS).

The latent of an image is the mean of the encoder's Gaussian q(z|x), not a draw from it: the
diffusion model then learns a deterministic function of the data, cached latents equal fresh
ones, and the KL-regularised posterior's spread is small next to the latents' scale anyway.
The latent scale (1 / std of the latents) belongs to the diffusion model, not to the autoencoder.

A patched autoencoder (patch size p > 1) folds each p x p block of pixels into channels before the encoder
and unfolds them after the decoder (pixel unshuffle / shuffle, as the patch embedding of a ViT or DiT), so
no layer runs at full resolution: f = p 2^(levels - 1). diffusers' config.json records p under
`_dff_patch_size` (diffusers keeps such private keys without a warning); the AutoencoderKL itself sees
(B, C p^2, H/p, W/p).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

CONFIG, EXPORT_SUBDIR = "config.json", "autoencoder"
PATCH_KEY = "_dff_patch_size"  # in an AutoencoderKL's config: p of a patched autoencoder (absent: 1)
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
# model.autoencoder names of the autoencoders shipped in the package: folders of WEIGHTS_DIR in diffusers' format,
# each with a <folder>.json saying how it was trained and what it scores
BUILTIN_AUTOENCODERS = {
    "dff:textures": "textures_autoencoder",  # configs/autoencoder_demo.yaml on the textures (1 channel, f = 4, c = 4)
}


def to_model_space(x: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] -> [-1, 1], the range every autoencoder and diffusion model works in."""
    return x * 2 - 1


def to_image_space(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> images in [0, 1], clamped."""
    return ((x + 1) / 2).clamp(0, 1)


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """Fold each p x p block of pixels into channels: (B, C, H, W) -> (B, C p^2, H/p, W/p)."""
    return F.pixel_unshuffle(x, p) if p > 1 else x


def unpatchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """The inverse of `patchify`: (B, C p^2, H/p, W/p) -> (B, C, H, W)."""
    return F.pixel_shuffle(x, p) if p > 1 else x


def config_patch_size(config) -> int:
    """p of an AutoencoderKL's config (its `.config` or a config.json read as a dict), checked: a whole number
    >= 1 whose square divides in_channels."""
    p = config.get(PATCH_KEY, 1)
    if not isinstance(p, int) or p < 1 or config["in_channels"] % p ** 2:
        raise ValueError(f"autoencoder config: {PATCH_KEY}={p!r} with in_channels={config['in_channels']}: expected "
                         "a whole number p >= 1 with in_channels a multiple of p^2")
    return p


def image_channels(config) -> int:
    """Channels of the images an AutoencoderKL's config takes: in_channels / p^2."""
    return config["in_channels"] // config_patch_size(config) ** 2


def config_factor(config) -> int:
    """The down-sampling factor of an AutoencoderKL's config: f = p 2^(levels - 1)."""
    return config_patch_size(config) * 2 ** (len(config["block_out_channels"]) - 1)


class Autoencoder(nn.Module):
    """The interface: channels in, latent channels, spatial down-sampling factor f."""

    in_channels: int
    latent_channels: int
    factor: int

    def encode(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, c, H/f, W/f)
        raise NotImplementedError

    def decode(self, z: torch.Tensor) -> torch.Tensor:  # (B, c, h, w) -> (B, C, h*f, w*f)
        raise NotImplementedError

    def fingerprint(self) -> str:
        """What identifies this autoencoder's function (latent caches record it): its weights' hash."""
        h = hashlib.sha256()
        for k, v in sorted(self.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
        return h.hexdigest()[:16]

    def check_input(self, x: torch.Tensor, what: str = "images") -> None:
        """Clear errors for images the autoencoder cannot take (channels, size)."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"{what} of shape {tuple(x.shape)}: the autoencoder takes {self.in_channels}-channel "
                             f"images (B, {self.in_channels}, H, W); data and autoencoder channels must agree")
        if x.shape[-1] % self.factor or x.shape[-2] % self.factor:
            raise ValueError(f"{what} of size {tuple(x.shape[-2:])}: height and width must be multiples of the "
                             f"autoencoder's down-sampling factor {self.factor}")


class IdentityAutoencoder(Autoencoder):
    """Pixel space: z = x."""

    def __init__(self, channels: int):
        super().__init__()
        self.in_channels = self.latent_channels = channels
        self.factor = 1

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z

    def fingerprint(self) -> str:
        return "identity"


class KLAutoencoder(Autoencoder):
    """diffusers' AutoencoderKL behind the interface (patched when its config says so); frozen (no gradients,
    eval mode)."""

    def __init__(self, vae: nn.Module, source: str = "<in memory>"):
        super().__init__()
        self.vae, self.source = vae.eval().requires_grad_(False), source
        cfg = vae.config
        self.patch, self.factor = config_patch_size(cfg), config_factor(cfg)
        self.in_channels, self.latent_channels = cfg.in_channels // self.patch ** 2, cfg.latent_channels

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The mean of q(z|x) (see the module docstring)."""
        self.check_input(x)
        return self.vae.encode(patchify(x, self.patch)).latent_dist.mean

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return unpatchify(self.vae.decode(z).sample, self.patch)

    def train(self, mode: bool = True) -> "KLAutoencoder":
        """Frozen: always in eval mode."""
        return super().train(False)

    def fingerprint(self) -> str:
        """The hash of the weights and of the architecture's config (a patched and a plain autoencoder may share
        weight shapes); not of where it was loaded from or by which diffusers version."""
        cfg = {k: v for k, v in self.vae.config.items() if not k.startswith("_") or k == PATCH_KEY}
        return hashlib.sha256((super().fingerprint() + json.dumps(cfg, sort_keys=True, default=str)).encode()
                              ).hexdigest()[:16]

    def save_pretrained(self, out_dir: Union[str, Path]) -> Path:
        """diffusers' format (config.json + diffusion_pytorch_model.safetensors)."""
        self.vae.save_pretrained(str(out_dir), safe_serialization=True)
        return Path(out_dir)


def build_autoencoder_kl(
    channels: int = 3,
    *,
    latent_channels: int = 4,
    block_out_channels: Sequence[int] = (64, 128, 256),
    layers_per_block: int = 1,
    norm_num_groups: int = 32,
    image_size: int = 256,
    mid_attention: bool = True,
    patch_size: int = 1,
) -> nn.Module:
    """A diffusers AutoencoderKL with random weights; f = patch_size 2^(len(block_out_channels) - 1). With
    patch_size p > 1 it takes `patchify`d images (channels p^2, side / p) and its config records p."""
    from diffusers import AutoencoderKL

    bad = [c for c in block_out_channels if c % norm_num_groups]
    if bad:
        raise ValueError(f"block_out_channels {tuple(block_out_channels)}: each must be a multiple of "
                         f"norm_num_groups={norm_num_groups} (GroupNorm)")
    if not isinstance(patch_size, int) or patch_size < 1:
        raise ValueError(f"patch_size={patch_size!r}: expected a whole number >= 1 (1: no patches)")
    n, c = len(block_out_channels), channels * patch_size ** 2
    vae = AutoencoderKL(
        in_channels=c, out_channels=c, latent_channels=latent_channels,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
        norm_num_groups=norm_num_groups, sample_size=image_size // patch_size, mid_block_add_attention=mid_attention,
    )
    if patch_size > 1:
        vae.register_to_config(**{PATCH_KEY: patch_size})
    return vae


def find_autoencoder_dir(path: Path) -> Optional[Path]:
    """A diffusers-format folder at `path`, in its export, or the newest one in a run below it."""
    for cand in (path, path / EXPORT_SUBDIR, path / "export" / EXPORT_SUBDIR):
        if (cand / CONFIG).is_file():
            return cand
    found = sorted(path.glob(f"**/export/{EXPORT_SUBDIR}/{CONFIG}"), key=lambda p: p.stat().st_mtime)
    return found[-1].parent if found else None


def builtin_autoencoder_dir(spec: str) -> Path:
    """The folder of a shipped autoencoder named `dff:NAME` (BUILTIN_AUTOENCODERS); ValueError naming the known
    names for any other `dff:` name."""
    if spec not in BUILTIN_AUTOENCODERS:
        raise ValueError(f"autoencoder {spec!r}: dff ships {', '.join(sorted(BUILTIN_AUTOENCODERS))} "
                         "(a `dff:` name is one of these; give a folder or a hub id for any other)")
    return WEIGHTS_DIR / BUILTIN_AUTOENCODERS[spec]


def is_pixel_space(spec: Optional[str]) -> bool:
    """model.autoencoder values that mean the identity autoencoder."""
    return spec in (None, "", "identity")


def hub_reachable(url: Optional[str] = None, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the hub at `url` (default: the hub's address, HF_ENDPOINT) opens within `timeout`
    seconds (HF_HUB_OFFLINE=1 says no without trying): checked before a download, so that an offline machine gets
    its error at once instead of after the hub client's retries (about 25 s)."""
    import os
    import socket
    from urllib.parse import urlsplit

    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    if url is None:
        from .hub import endpoint

        url = endpoint()
    parts = urlsplit(url if "://" in url else f"https://{url}")
    port = parts.port or (80 if parts.scheme == "http" else 443)
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def load_autoencoder(spec: Optional[str], channels: int, local_files_only: bool = False) -> Autoencoder:
    """The autoencoder named by `spec`: None or "identity" for pixel space; `dff:NAME` for one shipped in the
    package; a local folder (diffusers' format, or a dff autoencoder run); else a Hugging Face hub id (needs
    network or the hub cache)."""
    if is_pixel_space(spec):
        return IdentityAutoencoder(channels)
    from diffusers import AutoencoderKL

    path = builtin_autoencoder_dir(spec) if str(spec).startswith("dff:") else Path(spec).expanduser()
    if path.exists():
        folder = find_autoencoder_dir(path) if path.is_dir() else None
        if folder is None:
            raise FileNotFoundError(f"autoencoder {spec!r}: no {CONFIG} of a diffusers AutoencoderKL in this folder, "
                                    f"its export/{EXPORT_SUBDIR}/ or a run below it")
        try:  # diffusers reads safetensors, or .bin files with torch.load(weights_only=True)
            vae = AutoencoderKL.from_pretrained(str(folder), low_cpu_mem_usage=False)
        except OSError as e:
            raise ValueError(f"autoencoder {folder}: its weights could not be loaded "
                             f"({str(e).splitlines()[0].strip()}); "
                             "dff reads diffusion_pytorch_model.safetensors, or a .bin file holding tensors only "
                             "(a .bin that names other Python objects is refused: it could run code)") from None
        ae = KLAutoencoder(vae, spec if str(spec).startswith("dff:") else str(folder))  # dff:NAME stays portable
    else:
        try:
            try:  # the hub's cache first: no request at all when the files are there
                vae = AutoencoderKL.from_pretrained(spec, local_files_only=True, low_cpu_mem_usage=False)
            except (OSError, ValueError, EnvironmentError):
                if local_files_only or not hub_reachable():  # offline: fail now, not after the hub's retries
                    raise OSError("not in the hub cache, and the hub cannot be reached") from None
                vae = AutoencoderKL.from_pretrained(spec, low_cpu_mem_usage=False)
        except (OSError, ValueError, EnvironmentError) as e:  # the hub's errors derive from OSError/ValueError
            raise ValueError(
                f"autoencoder {spec!r} is not a local folder and could not be loaded from the Hugging Face hub "
                f"(no network, or not in the hub cache): download it once where there is internet "
                f"(`huggingface-cli download {spec} --local-dir DIR`) and give model.autoencoder=DIR, "
                f"or give the local path of an AutoencoderKL folder. ({type(e).__name__})"
            ) from None
        ae = KLAutoencoder(vae, spec)
    if ae.in_channels != channels:
        raise ValueError(f"autoencoder {spec!r} takes {ae.in_channels}-channel images but the data has "
                         f"{channels} channels: train an autoencoder on this data (configs/autoencoder_demo.yaml "
                         "shows how) or convert the images")
    return ae
