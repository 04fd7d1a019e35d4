"""End to end: fit on a temporary folder, resume, sample, export, reload; the command line and its errors."""
import json
from pathlib import Path

import pytest
import torch

from dff.cli import fit, main
from dff.module import PixelDiffusion
from dff.pretrained import load_pretrained, save_pretrained

TINY = ["--model.dim", "8", "--model.dim_mults", "[1, 2]", "--model.timesteps", "50", "--model.ema_decay", "0.9",
        "--data.image_size", "8", "--data.channels", "3", "--data.batch_size", "4", "--data.num_workers", "0",
        "--trainer.enable_progress_bar", "false", "--trainer.logger", "true", "--trainer.log_every_n_steps", "1",
        "--checkpoint.every_n_train_steps", "2", "--samples.every_n_steps", "2", "--samples.num", "4",
        "--samples.steps", "5"]


def tiny_fit(root: Path, images: Path, steps: int, *extra: str):
    return fit(["--data.dataset", "folder", "--data.root", str(images), "--trainer.default_root_dir", str(root),
                "--trainer.max_steps", str(steps), *TINY, *extra])


def test_fit_resume_sample_export_reload(tmp_path, image_folder):
    cli = tiny_fit(tmp_path / "run", image_folder, 4)
    out = Path(cli.trainer.log_dir)
    assert cli.trainer.global_step == 4
    for f in ["metrics.csv", "config.yaml", "checkpoints/last.ckpt", "checkpoints/step_000002.ckpt",
              "samples/step_000002.png", "samples/step_000004.png", "export/model.safetensors", "export/config.json"]:
        assert (out / f).exists(), f
    assert int(cli.model.ema.num_updates) == 4  # one EMA update per optimiser step
    assert not torch.equal(cli.model.ema.model.init_conv.weight, cli.model.net.init_conv.weight)

    # resume: the step count continues from the checkpoint, in the same run folder
    cli2 = tiny_fit(tmp_path / "run", image_folder, 6, "--ckpt_path", str(out / "checkpoints" / "last.ckpt"))
    assert cli2.trainer.global_step == 6 and int(cli2.model.ema.num_updates) == 6
    assert Path(cli2.trainer.log_dir) == out

    # exported EMA weights reload without pickle and give identical samples for one seed
    model = cli2.model.eval()
    a = model.sample(3, "ddim", steps=5, seed=123, progress=False)
    reloaded = load_pretrained(Path(cli2.trainer.log_dir) / "export")
    b = reloaded.sample(3, "ddim", steps=5, seed=123, progress=False)
    assert a.shape == (3, 3, 8, 8) and torch.equal(a, b)
    # the checkpoint loads with weights_only=True and gives the same samples too
    c = load_pretrained(Path(cli2.trainer.log_dir) / "checkpoints" / "last.ckpt").sample(
        3, "ddim", steps=5, seed=123, progress=False)
    assert torch.equal(a, c)


def test_sampling_uses_the_ema_weights():
    m = PixelDiffusion(image_size=8, channels=1, dim=8, dim_mults=(1, 2), timesteps=50).eval()
    with torch.no_grad():
        for p in m.ema.model.parameters():  # EMA weights differ from the raw ones (none left at zero)
            p.add_(0.05 * torch.randn_like(p))
    ema_out = m.sample(2, "ddim", steps=5, seed=0, progress=False)
    raw_out = m.sample(2, "ddim", steps=5, seed=0, progress=False, use_ema=False)
    assert not torch.equal(ema_out, raw_out)


def test_export_format(tmp_path):
    m = PixelDiffusion(image_size=8, channels=1, dim=8, dim_mults=(1, 2), timesteps=50)
    save_pretrained(m, tmp_path / "w")
    cfg = json.loads((tmp_path / "w" / "config.json").read_text())
    assert cfg["model_class"] == "DiffusionModel" and cfg["hparams"]["dim_mults"] == [1, 2]
    assert "lr" not in cfg["hparams"]  # the model's settings only: the optimiser's belong to training
    from safetensors.torch import load_file
    state = load_file(tmp_path / "w" / "model.safetensors")
    assert set(state) == set(m.ema.model.state_dict())


def test_cli_fit_and_sample(tmp_path, image_folder, capsys):
    main(["fit", "--data.dataset", "folder", "--data.root", str(image_folder), "--trainer.default_root_dir",
          str(tmp_path / "r"), "--trainer.max_steps", "2", *TINY])
    run = tmp_path / "r"
    main(["sample", str(run), "--num", "5", "--steps", "4", "--batch-size", "2", "--out", str(tmp_path / "s"),
          "--no-progress"])
    files = sorted(p.name for p in (tmp_path / "s").iterdir())
    assert files == ["grid.png"] + [f"sample_{i:04d}.png" for i in range(5)] + ["samples.json"]
    # nothing is overwritten silently: other settings into a folder that holds samples
    with pytest.raises(SystemExit, match="already holds files"):
        main(["sample", str(run), "--num", "1", "--out", str(tmp_path / "s")])
    (tmp_path / "s" / "mine.txt").write_text("the user's")
    main(["sample", str(run), "--num", "1", "--steps", "2", "--out", str(tmp_path / "s"), "--overwrite",
          "--no-progress"])  # the earlier samples go, with their grid; the user's other files stay
    files = sorted(p.name for p in (tmp_path / "s").iterdir())
    assert files == ["grid.png", "mine.txt", "sample_0000.png", "samples.json"]


def test_a_large_sample_run_writes_as_it_goes_and_an_interrupted_one_continues(tmp_path, image_folder, monkeypatch):
    """Batches are written one by one, each from its own seed; a run stopped part way, started again with the same
    settings, draws only what is missing, and ends with the images an uninterrupted run writes; grid.png holds at
    most 64 images whatever --num."""
    import numpy as np
    from PIL import Image

    from dff.models.diffusion_model import DiffusionModel

    main(["fit", "--data.dataset", "folder", "--data.root", str(image_folder), "--trainer.default_root_dir",
          str(tmp_path / "r"), "--trainer.max_steps", "2", *TINY])
    run, args = tmp_path / "r", ["--num", "70", "--steps", "2", "--batch-size", "16", "--no-progress"]
    main(["sample", str(run), *args, "--out", str(tmp_path / "whole")])
    sample = DiffusionModel.sample
    calls, stopped = [], []

    def stop_after_two(self, n, *a, **k):  # Ctrl-C during the third batch of the first try
        calls.append(n)
        if len(calls) == 3 and not stopped:
            stopped.append(True)
            raise KeyboardInterrupt
        return sample(self, n, *a, **k)

    monkeypatch.setattr(DiffusionModel, "sample", stop_after_two)
    with pytest.raises(KeyboardInterrupt):
        main(["sample", str(run), *args, "--out", str(tmp_path / "part")])
    assert len(list((tmp_path / "part").glob("sample_*.png"))) == 32  # two batches, on disk before the stop
    calls.clear()
    main(["sample", str(run), *args, "--out", str(tmp_path / "part")])  # the same settings: it continues
    assert calls == [16, 16, 16, 16, 6]  # batches 2-4 anew; 0-1 again only for the grid's first 64 images
    for i in range(70):
        a, b = (np.asarray(Image.open(tmp_path / d / f"sample_{i:04d}.png")) for d in ("whole", "part"))
        assert np.array_equal(a, b), i
    from dff.viz import save_grid

    first = torch.stack([torch.from_numpy(np.asarray(Image.open(tmp_path / "whole" / f"sample_{i:04d}.png"))
                                          .copy()) for i in range(64)])  # (64, H, W[, C]) uint8
    first = (first[:, None] if first.dim() == 3 else first.permute(0, 3, 1, 2)) / 255.0
    save_grid(first, tmp_path / "grid64.png")
    assert Image.open(tmp_path / "whole" / "grid.png").size == Image.open(tmp_path / "grid64.png").size


def test_cli_sample_errors(tmp_path, image_folder):
    with pytest.raises(SystemExit, match="does not exist"):
        main(["sample", str(tmp_path / "missing"), "--out", str(tmp_path / "o1")])
    (tmp_path / "emptyrun").mkdir()
    with pytest.raises(SystemExit, match="no model.safetensors and no .ckpt"):
        main(["sample", str(tmp_path / "emptyrun"), "--out", str(tmp_path / "o2")])
    m = PixelDiffusion(image_size=8, channels=1, dim=8, dim_mults=(1, 2), timesteps=50)
    save_pretrained(m, tmp_path / "w")
    with pytest.raises(SystemExit, match="unknown sampler 'euler_a'"):
        main(["sample", str(tmp_path / "w"), "--sampler", "euler_a", "--out", str(tmp_path / "o3")])
    with pytest.raises(SystemExit, match="between 1 and the training timesteps T=50, got 60"):
        main(["sample", str(tmp_path / "w"), "--steps", "60", "--out", str(tmp_path / "o4"), "--no-progress"])
    (tmp_path / "w" / "model.safetensors").unlink()
    with pytest.raises(SystemExit, match="does not exist|no model.safetensors"):
        main(["sample", str(tmp_path / "w" / "model.safetensors"), "--out", str(tmp_path / "o5")])


def test_cli_unknown_config_key(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("model:\n  dimm: 8\ndata:\n  dataset: digits\n")
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(cfg)])
    assert "dimm" in capsys.readouterr().err


def test_cli_bad_data_folder_is_one_line(tmp_path):
    """Raised while fit sets up its data, yet one line on the command line (a traceback from Python)."""
    with pytest.raises(SystemExit, match=r"^dff: data folder .*nothing.* does not exist$"):
        main(["fit", "--data.root", str(tmp_path / "nothing"), "--trainer.max_steps", "1",
              "--trainer.default_root_dir", str(tmp_path / "r"), *TINY])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match=r"^dff: data folder .*empty.* is empty"):
        main(["fit", "--data.root", str(tmp_path / "empty"), "--trainer.max_steps", "1",
              "--trainer.default_root_dir", str(tmp_path / "r"), *TINY])
    assert not list((tmp_path / "r").glob("version_*"))  # no empty run folder is left behind
    with pytest.raises(FileNotFoundError, match="does not exist"):  # from Python: the exception itself
        fit(["--data.root", str(tmp_path / "nothing"), "--trainer.max_steps", "1",
             "--trainer.default_root_dir", str(tmp_path / "r"), *TINY])


def test_cli_binary_or_missing_config_is_one_line(tmp_path):
    (tmp_path / "weights.bin").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(SystemExit, match=r"^dff: --config .*weights.bin: not a text file"):
        main(["fit", "--config", str(tmp_path / "weights.bin")])
    with pytest.raises(SystemExit, match=r"^dff: --config .*nope.yaml: no such file"):
        main(["fit", "--config", str(tmp_path / "nope.yaml")])


@pytest.mark.parametrize("args", [["--num", "-3"], ["--num", "0"], ["--batch-size", "0"], ["--steps", "0"]])
def test_cli_sample_counts_must_be_positive(tmp_path, args):
    save_pretrained(PixelDiffusion(image_size=8, channels=1, dim=8, dim_mults=(1, 2), timesteps=50), tmp_path / "w")
    with pytest.raises(SystemExit, match=r"^dff: --(num|batch-size|steps) must be at least 1"):
        main(["sample", str(tmp_path / "w"), "--out", str(tmp_path / "o"), *args])
    assert not (tmp_path / "o").exists()


def test_checkpoints_keep_last_and_the_newest_three(tmp_path, image_folder):
    cli = tiny_fit(tmp_path / "run", image_folder, 10)  # every 2 steps: 2, 4, 6, 8, 10
    names = sorted(p.name for p in (Path(cli.trainer.log_dir) / "checkpoints").iterdir())
    assert names == ["last.ckpt", "step_000006.ckpt", "step_000008.ckpt", "step_000010.ckpt"]
    cli = tiny_fit(tmp_path / "all", image_folder, 6, "--checkpoint.save_top_k", "-1")
    assert len(list((Path(cli.trainer.log_dir) / "checkpoints").glob("step_*.ckpt"))) == 3


def test_image_size_the_unet_cannot_divide():
    with pytest.raises(ValueError, match="image_size 20 .* multiple of 8"):
        PixelDiffusion(image_size=20, dim=8, dim_mults=(1, 2, 4, 8))


def test_ddpm_refuses_fewer_steps():
    m = PixelDiffusion(image_size=8, channels=1, dim=8, dim_mults=(1, 2), timesteps=50)
    with pytest.raises(ValueError, match="ddpm sampler always takes all T=50"):
        m.sample(1, "ddpm", steps=10, progress=False)


@pytest.mark.parametrize("sampler", ["dpmpp_2m", "euler", "heun"])
def test_module_samples_with_fast_samplers(sampler):
    from dff.module import PixelDiffusion

    m = PixelDiffusion(image_size=8, channels=1, dim=8, dim_mults=[1, 2], timesteps=50, schedule="cosine")
    x = m.sample(3, sampler, steps=4, seed=0, progress=False)
    assert x.shape == (3, 1, 8, 8) and torch.equal(x, m.sample(3, sampler, steps=4, seed=0, progress=False))


def test_console_command_errors_are_one_line_with_exit_code_2(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", "from dff.cli import run; run()", "sample", str(tmp_path / "none"),
                           "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("dff: ")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_fit_prints_nothing_a_user_cannot_act_on(tmp_path, capfd):
    main(["fit", "--data.dataset", "digits", "--data.image_size", "8", "--data.channels", "1", "--model.dim", "8",
          "--model.dim_mults", "[1, 2]", "--model.timesteps", "50", "--trainer.max_steps", "12",
          "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path)])
    out = "".join(capfd.readouterr())
    for noise in ("Tip:", "Total length of", "LeafSpec", "eval mode", "args parameter is intended"):
        assert noise not in out, noise
    assert (tmp_path / "version_0" / "metrics.csv").exists()  # a short run logs too (every 10 steps by default, not 50)


def test_resume_continues_in_the_same_run_folder(tmp_path, image_folder):
    import csv

    root = tmp_path / "runs"
    run = Path(tiny_fit(root, image_folder, 4).trainer.log_dir)
    config = (run / "config.yaml").read_text()
    cli = tiny_fit(root, image_folder, 6, "--ckpt_path", str(run / "checkpoints" / "last.ckpt"))
    assert Path(cli.trainer.log_dir) == run and not (root / "version_1").exists()
    steps = [int(r["step"]) for r in csv.DictReader(open(run / "metrics.csv")) if r.get("train/loss")]
    assert steps == list(range(6))  # one curve: the first run's steps 0-3, then the resumed 4-5
    assert (run / "config.yaml").read_text() == config and (run / "config_resume_1.yaml").exists()
    assert (run / "samples" / "step_000006.png").exists() and (run / "checkpoints" / "step_000006.ckpt").exists()
    # --ckpt_path last: the newest run's last.ckpt below the root
    cli = tiny_fit(root, image_folder, 8, "--ckpt_path", "last")
    assert cli.trainer.global_step == 8 and Path(cli.trainer.log_dir) == run
    assert (run / "config_resume_2.yaml").exists()
    # a checkpoint from elsewhere starts a new run
    other = tmp_path / "elsewhere.ckpt"
    other.write_bytes((run / "checkpoints" / "last.ckpt").read_bytes())
    cli = tiny_fit(root, image_folder, 10, "--ckpt_path", str(other))
    assert Path(cli.trainer.log_dir) == root / "version_1" and cli.trainer.global_step == 10


def test_ckpt_path_last_without_a_run_is_one_line(tmp_path, image_folder):
    with pytest.raises(SystemExit, match=r"^dff: --ckpt_path last: no version_\*/checkpoints/last.ckpt below"):
        main(["fit", "--data.root", str(image_folder), "--trainer.default_root_dir", str(tmp_path / "none"),
              "--trainer.max_steps", "1", *TINY, "--ckpt_path", "last"])


def test_sampling_settings_the_model_cannot_use_stop_before_training(tmp_path, image_folder):
    """DDIM steps > T for the grids (default 50 for a T = 30 model), an unknown sampler, val_steps > T: one line
    before the first step, not a crash at the first grid after hours of training."""
    base = ["fit", "--data.root", str(image_folder), "--trainer.default_root_dir", str(tmp_path), *TINY,
            "--trainer.max_steps", "4", "--model.timesteps", "30"]
    with pytest.raises(SystemExit,
                       match=r"^dff: samples.steps \(ddim, default 50\) steps must be between 1 and .*T=30, got 50"):
        main([*base, "--samples.steps", "50"])
    with pytest.raises(SystemExit, match=r"^dff: unknown sampler 'dpm'"):
        main([*base, "--samples.sampler", "dpm"])
    with pytest.raises(SystemExit, match=r"^dff: model.val_steps \(DDIM\) steps must be between 1 and .*T=30, got 40"):
        main([*base, "--model.val_steps", "40"])
    assert not list(tmp_path.glob("version_*"))  # nothing was trained, and no run folder is left


@pytest.mark.parametrize("flag", ["--max-steps", "--autoencoder-steps"])
@pytest.mark.parametrize("value, why", [("-1", "-1: expected a number of steps >= 1"),
                                        ("0", "0: expected a number of steps >= 1"),
                                        ("2.5", "'2.5' is not a whole number")])
def test_demo_step_counts_must_be_positive_whole_numbers(flag, value, why, tmp_path, capsys):
    """Lightning would read max_steps -1 as 'train forever' and 0 as 'train nothing, sample noise': the demo refuses
    both in one line before anything runs, and writes nothing."""
    with pytest.raises(SystemExit) as e:
        main(["demo", "latent", flag, value, "--out", str(tmp_path / "demo")])
    assert e.value.code == 2
    assert f"argument {flag}: {why}" in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()
