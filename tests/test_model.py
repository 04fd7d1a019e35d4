"""DiffusionModel, the plain torch model under the Lightning shell: what an earlier release wrote still loads and
samples the same images bit for bit, sampling an export imports no Lightning, the model trains in a loop of one's
own, and the module names of dff <= 0.2 still import."""
import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import dff
from dff import DiffusionModel, DiffusionModule, load_pretrained
from dff.diffusion.samplers import step_options
from dff.models.pretrained import model_settings

FIXTURES = Path(__file__).parent / "fixtures" / "be42f3f"  # made by tests/fixtures/make_release_fixtures.py
PIXEL, LATENT = FIXTURES / "pixel_class_conditional", FIXTURES / "latent_super_resolution"
CLASSES = [3, 1, 4, 1, 5, 9]


@pytest.fixture
def one_thread():
    """The fixtures' samples were drawn in one thread; the order of a sum, and so the last bit, depends on it."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---------------------------------------------------------------------- what be42f3f wrote
@pytest.mark.parametrize("source, samples", [(PIXEL / "export", PIXEL / "samples_export.safetensors"),
                                             (PIXEL / "last.ckpt", PIXEL / "samples_checkpoint.safetensors")],
                         ids=["export", "checkpoint"])
def test_a_class_conditional_export_and_checkpoint_of_be42f3f_sample_the_same_images(source, samples, one_thread):
    model = load_pretrained(source)
    assert isinstance(model, DiffusionModel) and model.hparams.num_classes == 10 and model.hparams.attention
    ref = load_file(samples)
    for sampler in ("ddim", "dpmpp_2m"):
        x = model.sample(6, sampler, steps=5, seed=7, labels=CLASSES, progress=False)
        assert torch.equal(x, ref[sampler]), sampler


def test_a_latent_image_to_image_export_of_be42f3f_samples_the_same_images(one_thread):
    model = load_pretrained(LATENT / "export")
    assert model.is_latent and model.hparams.condition == "sr2"
    ref = load_file(LATENT / "samples_export.safetensors")
    for sampler in ("ddim", "dpmpp_2m"):
        x = model.sample(sampler=sampler, steps=5, seed=7, cond=ref["cond"], num_samples=2, progress=False)
        assert torch.equal(x, ref[sampler]), sampler


def test_a_checkpoint_of_be42f3f_loads_into_the_training_shell_and_resumes(tmp_path):
    """Its state dict (keys without the shell's `model.` prefix) loads into DiffusionModule, and `dff fit` resumes
    from it: optimiser, EMA and step count restored, one more step taken, the export written."""
    ckpt = torch.load(PIXEL / "last.ckpt", weights_only=True)
    shell = DiffusionModule(**model_settings(ckpt["hyper_parameters"]))
    shell.load_state_dict(ckpt["state_dict"])
    plain = load_pretrained(PIXEL / "last.ckpt")
    torch.testing.assert_close(shell.model.ema.model.state_dict(), plain.ema.model.state_dict(), rtol=0, atol=0)
    cli = dff.fit(["--config", "configs/pixel_digits.yaml", "--model.dim", "8", "--model.dim_mults", "[1, 2]",
                   "--model.timesteps", "50", "--model.attention", "true", "--model.num_classes", "10",
                   "--model.adm_layout", "v1",  # what be42f3f's U-Net was (its files lack the key: load_pretrained)
                   "--data.labels", "true", "--data.batch_size", "8", "--trainer.max_steps", "4",
                   "--trainer.enable_progress_bar", "false", "--trainer.limit_val_batches", "0",
                   "--samples.every_n_steps", "0", "--trainer.default_root_dir", str(tmp_path),
                   "--ckpt_path", str(PIXEL / "last.ckpt")])
    assert cli.trainer.global_step == 4
    assert int(cli.model.model.ema.num_updates) == int(ckpt["state_dict"]["ema.num_updates"]) + 1
    assert (Path(cli.trainer.log_dir) / "export" / "model.safetensors").exists()


# ---------------------------------------------------------------------- no Lightning in sampling
def test_sampling_an_export_imports_no_lightning():
    code = (f"import sys, dff; m = dff.load_pretrained({str(PIXEL / 'export')!r}); "
            "x = m.sample(2, 'ddim', steps=2, seed=0, labels=1, progress=False); "
            "print(type(m).__name__, tuple(x.shape), sorted(k for k in sys.modules if k.split('.')[0] in "
            "('lightning', 'pytorch_lightning', 'lightning_fabric')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "DiffusionModel (2, 1, 16, 16) []"


# ---------------------------------------------------------------------- a loop of one's own
def test_the_plain_model_trains_in_a_loop_of_ones_own_as_the_shell_does():
    """DiffusionModel.loss is the shell's training step: the same value from the same seed; 60 AdamW steps on
    a fixed batch of digits lower it (the same draws of t and noise each time, so the decrease is the fit)."""
    from dff.data import load_digits_tensor

    x, y = load_digits_tensor(16, 1)
    batch = {"image": x[:32], "label": y[:32]}
    settings = dict(image_size=16, channels=1, dim=8, dim_mults=(1, 2), attention=False, timesteps=100,
                    schedule="cosine", prediction="v", num_classes=10, ema_decay=0.9)
    torch.manual_seed(0)
    model = DiffusionModel(**settings)
    torch.manual_seed(0)
    shell = DiffusionModule(**settings)
    torch.manual_seed(1)
    a = model.loss(batch)
    torch.manual_seed(1)
    assert torch.equal(shell.training_step(batch, 0), a)
    opt = torch.optim.AdamW(model.net.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        torch.manual_seed(2)
        loss = model.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.ema.update(model.net)
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0], losses[::10]
    assert int(model.ema.num_updates) == 60


def test_sample_takes_the_initial_noise_and_reports_every_step():
    torch.manual_seed(0)
    model = DiffusionModel(image_size=8, channels=1, dim=8, dim_mults=(1, 2), attention=False, timesteps=100)
    g = torch.Generator().manual_seed(5)
    x_T = torch.randn(3, 1, 8, 8, generator=g)
    seen = []
    a = model.sample(3, "ddim", steps=4, x_T=x_T, progress=False, callback=lambda s: seen.append(s["t"]))
    b = model.sample(3, "ddim", steps=4, seed=5, progress=False)
    assert torch.equal(a, b) and seen == [75, 50, 25, 0]
    with pytest.raises(ValueError, match=r"x_T of shape \(3, 1, 4, 4\): expected \(3, 1, 8, 8\)"):
        model.sample(3, "ddim", steps=4, x_T=torch.zeros(3, 1, 4, 4), progress=False)


# ---------------------------------------------------------------------- the samplers' own rules
def test_step_rules_live_in_the_samplers():
    assert step_options("ddpm", 50, None) == {} and step_options("ddpm", 50, 50) == {}
    with pytest.raises(ValueError, match="the ddpm sampler always takes all T=50 steps"):
        step_options("ddpm", 50, 10)
    assert step_options("ddim", 50, 10) == {"steps": 10} and step_options("dpmpp_2m", 50, None) == {}
    with pytest.raises(ValueError, match="between 1 and the training timesteps T=10"):
        step_options("dpmpp_2m", 10, None)  # its default, 20 steps, is more than T


# ---------------------------------------------------------------------- old module names
def test_the_module_names_of_dff_0_2_import_the_modules_at_their_new_places():
    for old, new in dff.MOVED.items():
        assert importlib.import_module(old) is importlib.import_module(new), old
    from dff.module import DiffusionModule as Old
    from dff.pretrained import load_pretrained as old_load

    assert Old is DiffusionModule and old_load is load_pretrained


# ---------------------------------------------------------------------- one description of the condition
def test_the_condition_is_described_once_by_the_data_and_the_model_gives_it_back(tmp_path):
    from dff.data.condition import Condition
    from dff.training.fit import fit

    assert Condition.of_data("none", 3) == Condition() and not Condition()
    assert Condition.of_data("folders", 3) == Condition("image", 3)
    assert Condition.of_data("side_by_side", 3, cond_image_channels=1) == Condition("image", 1)
    assert Condition.of_data("sr4", 4) == Condition("sr4", 4) and Condition("sr4", 4).is_task
    assert Condition.of_data("colorize", 3) == Condition("colorize", 1)
    assert Condition.of_data("inpaint", 3) == Condition("inpaint", 4)  # the image and its mask
    with pytest.raises(ValueError, match="unknown condition 'sr3'"):
        Condition("sr3", 3)
    with pytest.raises(ValueError, match="cond_channels=0 and condition='sr2' disagree"):
        DiffusionModel(image_size=8, channels=3, dim=8, dim_mults=(1, 2), condition="sr2")
    # dff fit hands the data's description to the model: the model gives back what the data module describes
    cli = fit(["--config", "configs/translate_demo.yaml", "--data.pairs", "inpaint", "--data.channels", "1",
               "--model.dim", "8", "--model.residual", "false", "--trainer.default_root_dir", str(tmp_path)],
              run=False)
    assert cli.datamodule.condition == cli.model.model.condition == Condition("inpaint", 2)
    assert cli.model.model.net.cond_channels == 2


def test_sampling_in_bf16_runs_the_network_in_bf16_and_stays_close_to_float32():
    """precision="bf16": the network's calls under bf16 autocast, the sampler in float32; the samples differ from
    float32's by bf16 rounding only (the FID comparison is benchmarks/studies/sample_precision.py)."""
    from dff.models.diffusion_model import DiffusionModel

    torch.manual_seed(0)
    m = DiffusionModel(image_size=8, channels=1, dim=8, dim_mults=(1, 2), num_res_blocks=1, timesteps=50,
                       num_classes=3)
    with torch.no_grad():  # random weights everywhere (the zero-initialised output would make every sample alike)
        for p in m.ema.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    seen = []
    m.ema.model.init_conv.register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
    a = m.sample(4, "dpmpp_2m", steps=5, seed=0, labels=[0, 1, 2, 0], progress=False)
    b = m.sample(4, "dpmpp_2m", steps=5, seed=0, labels=[0, 1, 2, 0], progress=False, precision="bf16")
    assert seen[0] == torch.float32 and seen[-1] == torch.bfloat16 and b.dtype == torch.float32
    assert not torch.equal(a, b) and (a - b).abs().max() < 0.05
    with pytest.raises(ValueError, match="sampling precision 'fp8'"):
        m.sample(1, "ddim", steps=2, precision="fp8")
