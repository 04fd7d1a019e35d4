"""Speed options of a training run, each a config key whose default is chosen for the device.

    trainer.precision   null -> bf16-mixed on a CUDA GPU with bf16 (16-mixed without) and on a CPU with bf16
                                instructions (AVX512-bf16, AMX), 32-true on other CPUs
    speed.compile       null -> off: torch.compile of the network (in place: weights keep their names) when true
    speed.channels_last null -> on CUDA and on a CPU with AMX-bf16: NHWC tensors, which their convolutions want
    speed.tf32          null -> on CUDA: float32 matrix products on the tensor cores (10-bit mantissa)
    speed.cudnn_benchmark null -> on CUDA: cuDNN times its convolution algorithms once per shape
    speed.checkpointing null -> off: activation checkpointing of the U-Net's blocks (less memory, ~1 more forward)

None of them changes what is learned beyond rounding (benchmarks/speed/train_speed.py measures speed and a
quality gate). An option the hardware cannot honour falls back with one line, never a crash mid-run.
"""
from __future__ import annotations

from typing import Optional

import lightning as L
import torch

from ..models.diffusion_model import DiffusionModel

HALF = ("16", "16-mixed", "16-true", 16)
BF16 = ("bf16", "bf16-mixed", "bf16-true")


def on_cuda(accelerator: Optional[str]) -> bool:
    """Will a trainer with this accelerator setting run on a CUDA GPU?"""
    return str(accelerator or "auto") in ("auto", "gpu", "cuda") and torch.cuda.is_available()


def cpu_has_amx_bf16() -> bool:
    """Does this CPU multiply bf16 matrices in hardware (Intel AMX with AVX512-bf16)? There bf16 autocast and
    NHWC make the digits demo's training step 1.5x faster (docs/benchmarks.md); elsewhere bf16 is emulated."""
    try:
        return bool(torch.cpu._is_amx_tile_supported() and torch.cpu._is_avx512_bf16_supported())
    except AttributeError:  # an older torch
        return False


def cpu_has_bf16() -> bool:
    """Does this CPU compute bf16 dot products in hardware (AVX512-bf16, which every AMX CPU has too)? There bf16
    autocast makes the training steps of the digits demo x1.36 and of the latent demo x1.45 faster even without AMX
    (an AMD EPYC; benchmarks/results/speed-avx512bf16-amd-epyc.json); elsewhere bf16 is emulated."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported())
    except AttributeError:  # an older torch
        return False


def choose_precision(precision, accelerator: Optional[str]) -> str:
    """The precision a run gets: `precision` if the device can honour it, else a fallback (with one line);
    None picks per device: bf16-mixed on a CUDA GPU with bf16, 16-mixed on an older one, bf16-mixed on a CPU
    with bf16 instructions (measured there: the digits demo's quality gate, the latent demo and its autoencoder),
    32-true on other CPUs (benchmarks/speed/train_speed.py, gates/quality_gate.py, gates/latent_demo.py)."""
    cuda = on_cuda(accelerator)
    if precision is None:
        if not cuda:
            return "bf16-mixed" if cpu_has_bf16() else "32-true"
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    if precision in HALF and not cuda:
        print(f"dff: trainer.precision={precision}: float16 needs a CUDA GPU; training in 32-true on the CPU")
        return "32-true"
    if precision in BF16 and cuda and not torch.cuda.is_bf16_supported():
        fallback = "16-mixed" if precision != "bf16-true" else "16-true"
        print(f"dff: trainer.precision={precision}: {torch.cuda.get_device_name()} has no bf16; using {fallback} "
              "(with loss scaling)")
        return fallback
    return str(precision)


class Speed(L.Callback):
    """Applies the speed options to a DiffusionModule when fit sets up, and takes them off when it ends (an
    AutoencoderModule gets the backend flags only: tf32, cudnn_benchmark)."""

    def __init__(
        self,
        compile: Optional[bool] = None,  # torch.compile the network (None: off; the _fast configs turn it on, see docs)
        compile_backend: Optional[str] = None,  # torch.compile backend (None: inductor); on the CPU only an explicit
                                                # one compiles
        compile_mode: Optional[str] = None,  # torch.compile mode: None (default) | reduce-overhead | max-autotune
        channels_last: Optional[bool] = None,  # NHWC weights and activations (None: on CUDA and AMX-bf16 CPUs)
        tf32: Optional[bool] = None,  # TF32 matrix products for float32 (None: on CUDA)
        cudnn_benchmark: Optional[bool] = None,  # cuDNN autotuning per input shape (None: on CUDA)
        checkpointing: Optional[bool] = None,  # recompute the U-Net blocks' activations in backward (None: off)
        verbose: bool = True,  # print the options chosen, one line
    ):
        self.compile, self.compile_backend, self.compile_mode = compile, compile_backend, compile_mode
        check_compile_options(compile_backend, compile_mode)
        self.channels_last, self.tf32, self.cudnn_benchmark = channels_last, tf32, cudnn_benchmark
        self.verbose = verbose
        self.checkpointing = checkpointing
        self.chosen: dict[str, object] = {}

    def resolve(self, cuda: bool) -> dict[str, object]:
        """The options for this device: None is on for CUDA (channels_last also on an AMX-bf16 CPU), except compile,
        off unless asked for; compile on the CPU needs an explicit backend (inductor's C++ code generation takes
        minutes there and rarely pays)."""
        pick = lambda v: cuda if v is None else bool(v)  # noqa: E731
        compile_ = bool(self.compile)
        if compile_ and not cuda and self.compile_backend in (None, "inductor"):
            if self.compile:  # asked for explicitly
                print("dff: speed.compile=true on the CPU: inductor compiles for minutes there and rarely pays; "
                      "training uncompiled (set speed.compile_backend, e.g. aot_eager, to compile anyway)")
            compile_ = False
        return {"compile": compile_, "compile_backend": self.compile_backend or "inductor",
                "compile_mode": self.compile_mode,
                "channels_last": ((cuda or cpu_has_amx_bf16()) if self.channels_last is None
                                  else bool(self.channels_last)),
                "tf32": pick(self.tf32) and cuda, "cudnn_benchmark": pick(self.cudnn_benchmark) and cuda,
                "checkpointing": bool(self.checkpointing)}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        cuda = trainer.strategy.root_device.type == "cuda"
        o = self.chosen = self.resolve(cuda)
        if not isinstance(getattr(pl_module, "model", None), DiffusionModel):  # an AutoencoderModule: left alone
            if (self.compile or self.channels_last or self.checkpointing) and trainer.is_global_zero:
                print(f"dff: speed.compile, speed.channels_last and speed.checkpointing apply to diffusion models; "
                      f"{type(pl_module).__name__} trains without them")
            o["compile"] = o["channels_last"] = o["checkpointing"] = False
        apply(pl_module, **o)
        if self.verbose and trainer.is_global_zero:
            on = [k for k in ("compile", "channels_last", "tf32", "cudnn_benchmark", "checkpointing") if o[k]]
            print(f"speed: precision {trainer.precision}; " + (", ".join(on) if on else "no speed options")
                  + (f" (compile backend {o['compile_backend']})" if o["compile"] else ""))

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """After fit the module is plain again (contiguous weights, uncompiled network), so that sampling from it
        in memory gives bit for bit what its export gives."""
        if stage == "fit" and isinstance(getattr(pl_module, "model", None), DiffusionModel):
            pl_module.model.plain()


def check_compile_options(backend: Optional[str], mode: Optional[str]) -> None:
    """A misspelt backend or mode is refused when the config is read, not at the first training step."""
    if backend is not None:
        import torch._dynamo

        known = torch._dynamo.list_backends(exclude_tags=())
        if backend not in known:
            raise ValueError(f"speed.compile_backend={backend!r} is not a torch.compile backend; expected one of "
                             f"{', '.join(known)}")
    if mode is not None:
        import torch._inductor

        known = list(torch._inductor.list_mode_options())
        if mode not in known:
            raise ValueError(f"speed.compile_mode={mode!r} is not a torch.compile mode; "
                             f"expected one of {', '.join(known)}")


def apply(module, *, compile: bool = False, compile_backend: str = "inductor", compile_mode: Optional[str] = None,
          channels_last: bool = False, tf32: bool = False, cudnn_benchmark: bool = False,
          checkpointing: bool = False) -> None:
    """Set the options on torch's backends and on the DiffusionModel `module` is or holds (DiffusionModel.speed_up:
    the one place where a model changes for speed)."""
    if tf32:
        torch.set_float32_matmul_precision("high")  # cuDNN's convolutions use TF32 by default already
    torch.backends.cudnn.benchmark = bool(cudnn_benchmark) or torch.backends.cudnn.benchmark
    model = getattr(module, "model", module)  # the DiffusionModel (of a training shell)
    if isinstance(model, DiffusionModel):
        model.speed_up(channels_last=channels_last, checkpointing=checkpointing, compile=compile,
                       compile_backend=compile_backend, compile_mode=compile_mode)
