"""The public face: names importable from `dff`, the version, the distribution's name, step defaults stated once."""
import importlib.metadata

import pytest
import torch

import dff
from dff.cli import main
from dff.diffusion import default_steps


def test_public_names_resolve_to_their_definitions():
    from dff import (DiffusionModule, GaussianDiffusion, LatentDiffusion, LatentDiffusionConditional,  # noqa: F401
                     PixelDiffusion, PixelDiffusionConditional, fit, load_pretrained)
    import dff.diffusion
    import dff.module
    import dff.pretrained

    assert PixelDiffusion is dff.module.PixelDiffusion and GaussianDiffusion is dff.diffusion.GaussianDiffusion
    assert load_pretrained is dff.pretrained.load_pretrained
    for name in dff.__all__:
        assert getattr(dff, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'PixelDifusion'"):
        dff.PixelDifusion  # noqa: B018


def test_version_of_the_command_and_the_distribution(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"dff {dff.__version__}"
    # installed under a name of its own on the package index; imported and run as dff
    assert importlib.metadata.version("diffusion-fast-forward") == dff.__version__


def test_step_defaults_are_the_samplers_own():
    assert default_steps("ddpm") is None and default_steps("ddim") == 50 and default_steps("dpmpp_2m") == 20
    m = dff.PixelDiffusion(image_size=8, channels=1, dim=8, dim_mults=[1, 2], timesteps=60)
    for name in ("ddim", "heun"):
        torch.testing.assert_close(m.sample(2, name, seed=0, progress=False),
                                   m.sample(2, name, steps=default_steps(name), seed=0, progress=False))


def test_ddim_starts_at_t_T_for_a_zero_terminal_snr_model():
    """DDIM's default spacing: 'leading' would start at t = T - T/S and never meet the pure-noise level a
    zero-terminal-SNR model was trained for; its first step must be at t = T (Lin et al. 2024), so the
    default is then 'trailing'; an explicit spacing is kept."""
    def first_t(model, **kw):
        seen = []
        model.sample(1, "ddim", steps=5, seed=0, progress=False, callback=lambda s: seen.append(s["t"]), **kw)
        return seen[0]

    zero = dff.PixelDiffusion(image_size=8, channels=1, dim=8, dim_mults=[1, 2], timesteps=100, prediction="v",
                              zero_terminal_snr=True)
    plain = dff.PixelDiffusion(image_size=8, channels=1, dim=8, dim_mults=[1, 2], timesteps=100)
    assert first_t(zero) == 99 and first_t(zero, spacing="leading") == 80
    assert first_t(plain) == 80
