"""The training step never waits for the GPU: inside `training_step` and the EMA update no tensor is read
back to the host (`item`, `bool`, `int`, `float`, `tolist`), for pixel, class-conditional and min-SNR
models. On a CPU these calls cost nothing, but on a GPU each one stalls the host until every queued
kernel has run; the loss is read once per log interval instead (outside the step, from a host copy)."""
import contextlib

import lightning as L
import pytest
import torch

from dff.data.datamodule import ImageDataModule
from dff.module import PixelDiffusion

READS = ("item", "__bool__", "__int__", "__float__", "tolist")


@contextlib.contextmanager
def no_host_reads():
    saved = {name: getattr(torch.Tensor, name) for name in READS}

    def refuse(name):
        def method(self, *args, **kwargs):
            raise AssertionError(f"Tensor.{name} inside the training step: it would wait for the GPU")
        return method

    try:
        for name in READS:
            setattr(torch.Tensor, name, refuse(name))
        yield
    finally:
        for name, method in saved.items():
            setattr(torch.Tensor, name, method)


def guarded(fn):
    def call(*args, **kwargs):
        with no_host_reads():
            return fn(*args, **kwargs)
    return call


def test_guard_catches_a_host_read():
    with pytest.raises(AssertionError, match="Tensor.item"), no_host_reads():
        torch.ones(1).item()
    with pytest.raises(AssertionError, match="__bool__"), no_host_reads():
        if torch.ones(1) > 0:
            pass
    assert torch.ones(1).item() == 1.0  # restored


@pytest.mark.parametrize("options", [{}, {"num_classes": 10}, {"prediction": "v", "loss_weighting": "min_snr"},
                                     {"prediction": "eps", "offset_noise": 0.1}])
def test_training_step_and_ema_never_read_the_device(tmp_path, options):
    model = PixelDiffusion(image_size=16, channels=1, dim=8, dim_mults=[1, 2], timesteps=100, **options)
    model.training_step = guarded(model.training_step)
    model.ema.update = guarded(model.ema.update)
    dm = ImageDataModule(dataset="digits", image_size=16, channels=1, batch_size=8, num_workers=0)
    trainer = L.Trainer(max_steps=12, log_every_n_steps=5, accelerator="cpu",
                        logger=L.pytorch.loggers.CSVLogger(tmp_path), enable_checkpointing=False,
                        enable_model_summary=False, enable_progress_bar=True)
    trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 12 and model.ema.n == 12 == int(model.ema.num_updates)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])  # the interval mean was logged


def test_ema_count_follows_a_loaded_state():
    from dff.ema import EMA

    net = torch.nn.Linear(2, 2)
    a, b = EMA(net, 0.9), EMA(net, 0.9)
    for _ in range(7):
        a.update(net)
    b.load_state_dict(a.state_dict())
    assert a.n == b.n == 7 and b.decay_at(b.n) == a.decay_at(7)


def test_schedule_tables_are_copied_to_a_device_once():
    from dff.diffusion import GaussianDiffusion

    d = GaussianDiffusion(50, "linear")
    meta = torch.device("meta")
    first = d.on_device(d.alpha_bar, meta)
    assert first.device == meta and d.on_device(d.alpha_bar, meta) is first  # kept, not copied again
    assert d.on_device(d.alpha_bar, d.alpha_bar.device) is d.alpha_bar
    other = torch.ones(3, dtype=torch.float64)
    assert d.on_device(other, meta) is not d.on_device(other, meta)  # not one of the tables: not kept
