"""Speed options (speed.py): each trains on the CPU to a finite loss, none changes the function computed beyond
rounding, compile keeps the weights' names and does not recompile, and an option the device cannot honour
falls back with one line."""
import lightning as L
import pytest
import torch
from safetensors.torch import load_file

from dff.data.datamodule import ImageDataModule
from dff.module import PixelDiffusion
from dff.pretrained import save_pretrained
from dff.speed import Speed, apply, choose_precision

SMALL = dict(image_size=16, channels=1, dim=8, dim_mults=[1, 2], timesteps=100)


def fixed_loss(model: PixelDiffusion, x0: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """L_simple on a fixed batch with fixed t and noise (the module's own loss, its randomness seeded)."""
    torch.manual_seed(seed)
    return model.diffusion.loss(model.net, x0)


def backward_saving(model: PixelDiffusion, x0: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], int]:
    """fixed_loss and its backward: the loss, the network's gradients (then cleared) and the bytes that autograd
    saved for backward."""
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel() * t.element_size()) or t,
                                                  lambda t: t):
        loss = fixed_loss(model, x0)
    loss.backward()
    grads = [p.grad.clone() for p in model.net.parameters()]
    model.zero_grad(set_to_none=True)
    return loss, grads, sum(saved)


def random_model(**options) -> PixelDiffusion:
    """A small model whose weights are all random (ADM zero-initialises its output layer, so the prediction of a
    fresh one is 0 whatever the precision)."""
    torch.manual_seed(0)
    model = PixelDiffusion(**{**SMALL, **options})
    with torch.no_grad():
        for p in model.net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def fit(model, tmp_path, max_steps=2, precision="32-true", speed=None, batch_size=8):
    dm = ImageDataModule(dataset="digits", image_size=16, channels=1, batch_size=batch_size, num_workers=0)
    losses = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(outputs["loss"].detach().float())

    trainer = L.Trainer(max_steps=max_steps, accelerator="cpu", precision=precision, logger=False,
                        enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=False,
                        callbacks=[Record(), speed or Speed(channels_last=False)])
    trainer.fit(model, datamodule=dm)
    return torch.stack(losses)


# ---------------------------------------------------------------- defaults and fallbacks per device
def test_precision_per_device(monkeypatch, capsys):
    import dff.speed

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(dff.speed, "cpu_has_bf16", lambda: False)
    assert choose_precision(None, "auto") == "32-true"  # a CPU without bf16 instructions: bf16 would be emulated
    monkeypatch.setattr(dff.speed, "cpu_has_bf16", lambda: True)
    assert choose_precision(None, "auto") == "bf16-mixed"  # AVX512-bf16: x1.36 on the digits step, AMX or not
    assert choose_precision("32-true", "auto") == "32-true"  # an explicit choice is kept
    assert choose_precision("bf16-mixed", "cpu") == "bf16-mixed"
    assert choose_precision("16-mixed", "auto") == "32-true"
    assert "float16 needs a CUDA GPU" in capsys.readouterr().out
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert choose_precision(None, "auto") == "bf16-mixed"
    monkeypatch.setattr(dff.speed, "cpu_has_bf16", lambda: False)
    assert choose_precision(None, "cpu") == "32-true"  # a GPU present, the CPU asked for
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla V100")
    assert choose_precision(None, "gpu") == "16-mixed"
    assert choose_precision("bf16-mixed", "gpu") == "16-mixed"
    assert "Tesla V100 has no bf16; using 16-mixed" in capsys.readouterr().out


def test_the_bf16_probes_read_the_cpu():
    from dff.speed import cpu_has_amx_bf16, cpu_has_bf16

    flags = open("/proc/cpuinfo").read().split() if __import__("os").path.exists("/proc/cpuinfo") else None
    if flags is None:
        pytest.skip("no /proc/cpuinfo to compare with")
    assert cpu_has_amx_bf16() == ("amx_tile" in flags and "avx512_bf16" in flags)
    assert cpu_has_bf16() == ("avx512_bf16" in flags)


def test_options_default_per_device(monkeypatch, capsys):
    import dff.speed

    monkeypatch.setattr(dff.speed, "cpu_has_amx_bf16", lambda: False)
    assert Speed().resolve(cuda=False) == {"compile": False, "compile_backend": "inductor", "compile_mode": None,
                                           "channels_last": False, "tf32": False, "cudnn_benchmark": False,
                                           "checkpointing": False}
    monkeypatch.setattr(dff.speed, "cpu_has_amx_bf16", lambda: True)
    assert Speed().resolve(cuda=False)["channels_last"]
    assert not Speed(channels_last=False).resolve(cuda=False)["channels_last"]
    on = Speed().resolve(cuda=True)
    assert on["channels_last"] and on["tf32"] and on["cudnn_benchmark"]
    # compile is off unless asked for (the _fast configs): ~2 min of compiling on an H200 (docs/benchmarks.md)
    assert not on["compile"]
    assert not on["checkpointing"] and Speed(checkpointing=True).resolve(cuda=False)["checkpointing"]  # memory for time
    assert Speed(compile=True).resolve(cuda=True)["compile"]
    assert Speed(compile=True).resolve(cuda=False)["compile"] is False  # inductor on the CPU: falls back, says so
    assert "training uncompiled" in capsys.readouterr().out
    assert Speed(compile=True, compile_backend="aot_eager").resolve(cuda=False)["compile"] is True


def test_a_misspelt_compile_backend_or_mode_is_refused_with_the_choices():
    with pytest.raises(ValueError, match=r"speed.compile_mode='reduce_overhead' is not a torch.compile mode; "
                                         r"expected one of .*reduce-overhead"):
        Speed(compile=True, compile_mode="reduce_overhead")
    with pytest.raises(ValueError, match=r"speed.compile_backend='aot-eager' .* expected one of .*aot_eager"):
        Speed(compile=True, compile_backend="aot-eager")
    Speed(compile=True, compile_backend="aot_eager", compile_mode="max-autotune")  # known ones pass


# ---------------------------------------------------------------- each option: same function, finite training
@pytest.mark.parametrize("backbone", ["adm", "convnext"])
def test_channels_last_computes_the_same_loss_and_exports_plain_weights(tmp_path, backbone):
    model = random_model(backbone=backbone, attention=True)
    x0 = torch.rand(4, 1, 16, 16) * 2 - 1
    ref = fixed_loss(model, x0)
    apply(model, channels_last=True)
    conv = next(p for p in model.net.parameters() if p.dim() == 4 and p.shape[1] > 1 and p.shape[-1] > 1)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert torch.allclose(fixed_loss(model, x0.contiguous(memory_format=torch.channels_last)), ref, rtol=1e-5)
    weights = load_file(save_pretrained(model, tmp_path / "export") / "model.safetensors")
    assert set(weights) == set(model.ema.model.state_dict())


@pytest.mark.parametrize("backbone", ["adm", "convnext"])
def test_bf16_autocast_loss_agrees_with_float32(backbone):
    model = random_model(backbone=backbone, attention=True)
    x0 = torch.rand(8, 1, 16, 16) * 2 - 1
    ref = fixed_loss(model, x0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = fixed_loss(model, x0)
    assert low.dtype == torch.float32 and torch.isfinite(low)
    assert abs(low - ref) / ref < 2e-2  # bf16 keeps 8 bits of mantissa: ~0.4% per operation
    assert abs(low - ref) > 0  # autocast did change the arithmetic


@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("backbone", ["adm", "convnext"])
def test_compile_aot_eager_matches_eager_forward_and_backward(backbone, checkpointing):
    """aot_eager traces forward and backward through dynamo and AOTAutograd (what inductor compiles on a GPU); with
    activation checkpointing too, the compiled graph saves far fewer bytes for backward (AOTAutograd recomputes)."""
    import torch._dynamo

    torch._dynamo.reset()
    model = random_model(backbone=backbone, attention=True)
    names = list(model.state_dict())
    x0 = torch.rand(4, 1, 16, 16) * 2 - 1

    ref, ref_grads, ref_saved = backward_saving(model, x0)
    apply(model, compile=True, compile_backend="aot_eager", checkpointing=checkpointing)
    out, grads, saved = backward_saving(model, x0)
    assert torch.allclose(out, ref, rtol=1e-5)
    for g, r in zip(grads, ref_grads):
        assert torch.allclose(g, r, rtol=1e-4, atol=1e-6)
    assert (saved < 0.5 * ref_saved) == checkpointing, (saved, ref_saved)
    assert list(model.state_dict()) == names  # in place: no `_orig_mod.` in checkpoints
    assert model.net._compiled_call_impl is not None and model.ema.model._compiled_call_impl is None


@pytest.mark.parametrize("backbone", ["adm", "convnext"])
def test_checkpointing_gives_the_same_gradients_and_keeps_fewer_activations(backbone):
    """Activation checkpointing recomputes each block in backward: the same loss and gradients (the recomputation
    repeats the same float32 operations), far fewer bytes saved for backward (each block keeps only its input),
    and each block's forward runs twice."""
    from dff.estimate import estimate

    model = random_model(backbone=backbone, attention=True, image_size=32, dim_mults=[1, 2, 2])
    x0 = torch.rand(4, 1, 32, 32) * 2 - 1

    calls = []
    first_block = next(m for m in model.net.modules() if type(m).__name__ in ("ResBlock", "ConvNextBlock"))
    first_block.register_forward_pre_hook(lambda *a: calls.append(1))
    ref, ref_grads, ref_saved = backward_saving(model, x0)
    assert len(calls) == 1
    apply(model, checkpointing=True)
    out, grads, saved = backward_saving(model, x0)
    assert len(calls) == 3  # once more in forward, once recomputed in backward
    assert torch.equal(out, ref)
    for g, r in zip(grads, ref_grads):
        assert torch.allclose(g, r, rtol=1e-5, atol=1e-7)
    assert saved < 0.5 * ref_saved, (saved, ref_saved)
    with torch.no_grad():  # sampling: no gradients, nothing to recompute
        model.net(x0, torch.zeros(4, dtype=torch.long))
    assert len(calls) == 4
    # dff estimate counts the same saved tensors, so it reports the smaller activations of a checkpointed run
    model.model.plain()
    assert not model.net.checkpointing
    plain = estimate(model, 4, steps=1, speed=Speed(channels_last=False, verbose=False))
    ckpt = estimate(model, 4, steps=1, speed=Speed(channels_last=False, checkpointing=True, verbose=False))
    assert ckpt.activations_gb < 0.5 * plain.activations_gb


def test_every_option_trains_two_steps_to_a_finite_loss_and_compile_does_not_recompile(tmp_path):
    import torch._dynamo

    torch._dynamo.reset()
    torch.manual_seed(0)
    plain = fit(PixelDiffusion(**SMALL), tmp_path, max_steps=2)
    for precision, speed in [("bf16-mixed", Speed(channels_last=False)), ("32-true", Speed(channels_last=True)),
                             ("32-true", Speed(channels_last=False, checkpointing=True)),
                             ("bf16-mixed", Speed(compile=True, compile_backend="aot_eager", channels_last=True,
                                                  checkpointing=True))]:
        torch.manual_seed(0)
        model = PixelDiffusion(**SMALL)
        # 6 steps: t, the noise and the data change every step; 1797 digits / 8 leaves a short last batch, dropped
        steps = 6 if speed.compile else 2
        with torch._dynamo.config.patch(error_on_recompile=True):
            losses = fit(model, tmp_path, max_steps=steps, precision=precision, speed=speed)
        assert len(losses) == steps and torch.isfinite(losses).all()
        # same data, same seed
        assert torch.allclose(losses[:2], plain, rtol=3e-2), (precision, speed.chosen, losses, plain)


def test_fit_command_applies_the_options(tmp_path, capsys):
    from dff.train import fit as dff_fit

    cli = dff_fit(["--config", "configs/pixel_digits.yaml", "--trainer.max_steps", "2", "--samples.every_n_steps", "0",
                   "--trainer.default_root_dir", str(tmp_path), "--model.dim", "8", "--speed.channels_last", "true",
                   "--trainer.precision", "16-mixed", "--trainer.accelerator", "cpu"])
    out = capsys.readouterr().out
    assert "float16 needs a CUDA GPU; training in 32-true" in out and "speed: precision 32-true; channels_last" in out
    assert str(cli.trainer.precision) == "32-true"
    # plain again after fit: contiguous weights, so sampling in memory matches the export bit for bit
    assert cli.model.model.memory_format == torch.contiguous_format
    assert all(p.is_contiguous() for p in cli.model.parameters())
    weights = load_file(tmp_path / "version_0" / "export" / "model.safetensors")
    assert set(weights) == set(cli.model.ema.model.state_dict())


# ---------------------------------------------------------------- batch size as a recipe
def test_batch_scaling_rule_numbers():
    from dff.optim import batch_scaled

    lr, warmup, decay = batch_scaled(1e-4, 100, 0.9999, batch=256, reference=16)
    assert lr == pytest.approx(4e-4) and warmup == 6 and decay == pytest.approx(0.9999 ** 16)
    # the EMA's weight on an image seen n images ago is the same at both batches: d_ref^(n / 16) = d_B^(n / 256)
    assert decay ** (4096 / 256) == pytest.approx(0.9999 ** (4096 / 16))
    assert batch_scaled(1e-4, 100, 0.9999, batch=16, reference=16) == (1e-4, 100, 0.9999)  # at its own batch: as given
    lr, warmup, decay = batch_scaled(5.7e-4, 10, 0.99, batch=4, reference=8)
    assert lr == pytest.approx(5.7e-4 / 2 ** 0.5) and warmup == 20 and decay == pytest.approx(0.99 ** 0.5)


def test_fit_applies_the_batch_scaling(tmp_path, capsys):
    from dff.train import fit as dff_fit

    cli = dff_fit(["--config", "configs/pixel_digits.yaml", "--trainer.max_steps", "2", "--samples.every_n_steps", "0",
                   "--trainer.default_root_dir", str(tmp_path), "--model.dim", "8", "--data.batch_size", "64",
                   "--model.batch_reference", "16", "--trainer.accelerator", "cpu"])
    opt = cli.trainer.optimizers[0]
    assert opt.param_groups[0]["initial_lr"] == pytest.approx(1e-3 * 2)  # lr 1e-3 tuned at 16, trained at 64
    assert cli.model.ema.decay == pytest.approx(0.995 ** 4)
    assert cli.trainer.lr_scheduler_configs[0].scheduler.lr_lambdas[0](0) == pytest.approx(1 / 25)  # warm-up 100 -> 25
    assert "batch 64 (recipe tuned at 16): lr 0.002, warm-up 25 steps" in capsys.readouterr().out


def test_lr_factor_closed_form():
    from dff.optim import lr_factor

    assert [lr_factor(s, 4, 0) for s in (0, 1, 3, 50)] == [0.25, 0.5, 1.0, 1.0]  # warm-up, then constant
    assert lr_factor(0, 0, 100, "linear") == 1.0 and lr_factor(100, 0, 100, "linear") == 0.0
    assert lr_factor(30, 10, 100, "linear") == pytest.approx(0.7)  # warm-up over, 1 - 30/100
    assert lr_factor(4, 10, 100, "linear") == pytest.approx(0.5 * 0.96)  # both at once
    assert lr_factor(50, 0, 100, "cosine") == pytest.approx(0.5)
    assert lr_factor(25, 0, 100, "cosine") == pytest.approx((1 + 2 ** -0.5) / 2)
    assert lr_factor(150, 0, 100, "cosine") == pytest.approx(0.0)  # stays at 0 past the end


def test_fit_decays_the_lr_to_zero_at_max_steps(tmp_path):
    from dff.train import fit as dff_fit

    cli = dff_fit(["--config", "configs/pixel_digits.yaml", "--trainer.max_steps", "5", "--samples.every_n_steps", "0",
                   "--trainer.default_root_dir", str(tmp_path), "--model.dim", "8", "--model.warmup_steps", "2",
                   "--model.lr_decay", "linear", "--trainer.accelerator", "cpu"])
    opt = cli.trainer.optimizers[0]
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0)  # after 5 of 5 steps
    lam = cli.trainer.lr_scheduler_configs[0].scheduler.lr_lambdas[0]
    assert [lam(s) for s in range(5)] == pytest.approx([0.5, 0.8, 0.6, 0.4, 0.2])


def test_a_resume_with_another_length_says_the_decay_is_restretched(tmp_path, capsys):
    from dff.cli import main

    base = ["fit", "--config", "configs/pixel_digits.yaml", "--trainer.default_root_dir", str(tmp_path),
            "--model.dim", "8", "--samples.every_n_steps", "0", "--trainer.accelerator", "cpu",
            "--model.lr_decay", "linear", "--trainer.enable_progress_bar", "false"]
    main(base + ["--trainer.max_steps", "3"])
    assert "decayed to 0 at step" not in capsys.readouterr().out  # a fresh run: nothing to say
    main(base + ["--trainer.max_steps", "3", "--ckpt_path", "last"])  # the same length: nothing to say
    assert "decayed to 0 at step" not in capsys.readouterr().out
    main(base + ["--trainer.max_steps", "5", "--ckpt_path", "last"])
    out = capsys.readouterr().out
    assert "model.lr_decay=linear: the checkpoint's run decayed to 0 at step 3, this one at trainer.max_steps=5" in out
    ckpt = torch.load(next((tmp_path / "version_0" / "checkpoints").glob("last*.ckpt")), weights_only=True)
    assert ckpt["dff_lr_decay_total"] == 5 and ckpt["global_step"] == 5


def test_lr_decay_needs_max_steps_and_a_known_name(tmp_path):
    from dff.cli import main

    base = ["fit", "--config", "configs/pixel_digits.yaml", "--trainer.default_root_dir", str(tmp_path),
            "--model.dim", "8", "--samples.every_n_steps", "0", "--trainer.accelerator", "cpu"]
    # bounded by epochs alone, a decay has no end to reach 0 at (a time budget is one: tests/test_time_budget.py)
    with pytest.raises(SystemExit, match="model.lr_decay=linear decays to 0 at trainer.max_steps, which is -1: set "
                                         "trainer.max_steps or trainer.max_time"):
        main(base + ["--model.lr_decay", "linear", "--trainer.max_steps", "-1", "--trainer.max_epochs", "1"])
    with pytest.raises(SystemExit, match="model.lr_decay='exp': expected one of none, linear, cosine"):
        main(base + ["--model.lr_decay", "exp", "--trainer.max_steps", "2"])


@pytest.mark.parametrize("name,reference,images", [("pixel_64", 16, 3_200_000), ("latent_maps_256", 8, 1_600_000)])
def test_fast_configs_see_the_original_images_with_the_original_recipe(name, reference, images):
    import yaml

    plain = yaml.safe_load(open(f"configs/{name}.yaml"))
    fast = yaml.safe_load(open(f"configs/{name}_fast.yaml"))
    assert fast["model"]["batch_reference"] == plain["data"]["batch_size"] == reference
    assert fast["trainer"]["max_steps"] * fast["data"]["batch_size"] == images
    for key in ("backbone", "dim", "dim_mults", "attention", "lr", "ema_decay", "schedule", "prediction"):
        assert fast["model"][key] == plain["model"][key], key
