"""Safe loading stays safe: a file crafted to run code when unpickled (here: to create a marker file) is
refused by every path that reads a file a user may have downloaded, with one line naming it, and the
code never runs."""
import pathlib
from pathlib import Path

import pytest
import torch

from dff.autoencoders import build_autoencoder_kl, load_autoencoder
from dff.cli import main
from dff.data.latents import load_or_make_cache


class Payload:
    """Unpickling this calls Path.touch(marker): the stand-in for arbitrary code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "CODE_RAN"


@pytest.fixture
def evil_ckpt(tmp_path, marker) -> Path:
    path = tmp_path / "downloaded.ckpt"
    torch.save({"state_dict": {"net.w": Payload(marker)}, "hyper_parameters": {}, "dff_model_class": "PixelDiffusion"},
               path)
    assert not marker.exists()
    return path


def assert_refused_in_one_line(excinfo, path: Path, marker: Path) -> None:
    msg = str(excinfo.value)
    assert not marker.exists(), "the crafted file's code ran"
    assert str(path) in msg and "refused" in msg and "\n" not in msg, msg


@pytest.mark.parametrize("command", [
    ["sample", "{ckpt}", "--out", "{tmp}/o"],
    ["translate", "{ckpt}", "--input", "{tmp}", "--out", "{tmp}/o"],
    ["eval", "{ckpt}", "--data", "digits"],
    ["fit", "--data.dataset", "digits", "--data.image_size", "8", "--model.dim", "8", "--model.dim_mults", "[1, 2]",
     "--trainer.max_steps", "1", "--trainer.default_root_dir", "{tmp}/run", "--ckpt_path", "{ckpt}"],
])
def test_commands_refuse_a_crafted_checkpoint(tmp_path, evil_ckpt, marker, command):
    args = [a.format(ckpt=evil_ckpt, tmp=tmp_path) for a in command]
    with pytest.raises(SystemExit) as e:
        main(args)
    assert_refused_in_one_line(e, evil_ckpt, marker)


def test_latent_cache_refuses_a_crafted_file(tmp_path, marker):
    path = tmp_path / "latents.pt"
    torch.save({"meta": {"format": 1}, "latent": Payload(marker)}, path)
    with pytest.raises(ValueError) as e:
        load_or_make_cache(str(path), [], encode=None, condition_code=None, meta={}, hflip=False, vflip=False)
    assert_refused_in_one_line(e, path, marker)
    assert path.exists()  # and the user's file is left as it was


def test_autoencoder_folder_refuses_a_crafted_bin(tmp_path, marker):
    vae = build_autoencoder_kl(3, latent_channels=4, block_out_channels=(8, 16), norm_num_groups=4, image_size=16)
    folder = tmp_path / "vae"
    vae.save_pretrained(str(folder), safe_serialization=False)
    state = vae.state_dict()
    state["extra"] = Payload(marker)
    torch.save(state, folder / "diffusion_pytorch_model.bin")
    with pytest.raises(ValueError) as e:
        load_autoencoder(str(folder), 3)
    assert not marker.exists() and str(folder) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(SystemExit) as e:  # and through the command line
        main(["eval", str(folder), "--data", "textures", "--image-size", "16"])
    assert not marker.exists() and str(e.value).startswith("dff: autoencoder")


def test_truncated_checkpoint_is_one_line(tmp_path):
    from dff.module import PixelDiffusion

    m = PixelDiffusion(image_size=8, channels=1, dim=8, dim_mults=(1, 2), timesteps=50)
    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": m.state_dict(), "hyper_parameters": dict(m.hparams)}, good)
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(SystemExit) as e:
        main(["sample", str(cut), "--out", str(tmp_path / "o")])
    assert str(cut) in str(e.value) and "truncated" in str(e.value) and "\n" not in str(e.value)


# ---------------------------------------------------------------------- exports hold only themselves (issue 35: 3)
def test_an_export_uses_its_own_autoencoder_and_nothing_outside_it(tmp_path, monkeypatch):
    import json
    import shutil

    from dff.pretrained import load_pretrained

    src = Path(__file__).parent / "fixtures" / "be42f3f" / "latent_super_resolution" / "export"
    export = tmp_path / "export"
    shutil.copytree(src, export)
    assert load_pretrained(export).is_latent  # its own autoencoder/ folder
    cfg = json.loads((export / "config.json").read_text())
    shutil.copytree(export / "autoencoder", tmp_path / "tinyae")
    for elsewhere in ("../tinyae", str(tmp_path / "tinyae"), "stabilityai/sd-vae-ft-mse"):  # outside, or the hub
        cfg["hparams"]["autoencoder"] = elsewhere
        (export / "config.json").write_text(json.dumps(cfg))
        with pytest.raises(ValueError, match="is not a folder inside the export"):
            load_pretrained(export)
    cfg["hparams"]["autoencoder"] = "autoencoder"
    (export / "config.json").write_text(json.dumps(cfg))
    shutil.rmtree(export / "autoencoder")
    monkeypatch.chdir(tmp_path)  # a folder named autoencoder in the current directory is not used either
    shutil.copytree(tmp_path / "tinyae", tmp_path / "autoencoder")
    with pytest.raises(ValueError, match="is not a folder inside the export"):
        load_pretrained(export)
    assert load_pretrained(export, autoencoder=str(tmp_path / "tinyae")).is_latent  # named by the caller: used
