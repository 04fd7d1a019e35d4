"""`dff fit`: Lightning's CLI with the data's size and channels linked into the model, periodic
checkpoints, sample grids and exported weights.

    dff fit --config configs/pixel_digits.yaml [--model.lr 2e-4 ...]   any key overridable
    fit(["--config", ...])                                             the same from Python
"""
from __future__ import annotations

import importlib.util
import logging
import os
import pickle
import warnings
from pathlib import Path
from typing import Optional, Sequence

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from .callbacks import ExportWeights, RunReport, SampleGrid, SaveOnSignal
from ..data import ImageDataModule
from ..data.condition import condition_channels, condition_kind
from .estimate import estimate
from .module import DiffusionModule
from .posthoc_ema import PostHocEMA
from .quality import QualityEval
from .trackers import added_loggers
from .runs import (AtomicCheckpointIO, RunLogger, claim_version, newest_last_checkpoint, resume_config_name,
                   run_version)
from ..data.folder import UnreadableFile
from ..safe_load import refusal
from .speed import Speed, choose_precision

CONFIG_DIR = Path(__file__).parents[1] / "configs"


class DffCLI(LightningCLI):
    """LightningCLI with the data's size and channels linked into the model, periodic checkpoints,
    sample grids and exported weights; logs (CSV, and TensorBoard when installed) go to
    trainer.default_root_dir/version_N."""

    autoencoder_mode = False  # model: class_path: ... (an AutoencoderModule) instead of DiffusionModule's keys
    new_run: Optional[Path] = None  # the version_N folder this run creates

    def add_arguments_to_parser(self, parser) -> None:
        m = "model.init_args." if self.autoencoder_mode else "model."
        parser.link_arguments("data.image_size", m + "image_size")
        parser.link_arguments("data.channels", m + "channels")
        if not self.autoencoder_mode:
            parser.link_arguments(("data.pairs", "data.channels", "data.cond_image_channels"), "model.cond_channels",
                                  compute_fn=condition_channels)
            parser.link_arguments(("data.pairs", "data.channels", "data.cond_image_channels"), "model.condition",
                                  compute_fn=condition_kind)
            # array data: the per-channel range, measured from the files once the data module exists
            parser.link_arguments("data.data_range", "model.data_range", apply_on="instantiate")
            parser.link_arguments("data.cond_data_range", "model.cond_data_range", apply_on="instantiate")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        # last.ckpt plus the newest save_top_k periodic checkpoints (-1 keeps them all: a 58 M-parameter
        # model's checkpoint with EMA and Adam state is ~0.9 GB)
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.every_n_train_steps": 1000,
                             "checkpoint.save_top_k": 3, "checkpoint.monitor": "step", "checkpoint.mode": "max",
                             "checkpoint.filename": "step_{step:06d}", "checkpoint.auto_insert_metric_name": False})
        parser.add_lightning_class_args(SampleGrid, "samples")
        if not self.autoencoder_mode:
            parser.add_lightning_class_args(QualityEval, "eval")  # FID/KID every eval.every_n_steps (quality.py)
        if not self.autoencoder_mode:
            parser.add_lightning_class_args(PostHocEMA, "posthoc_ema")  # power-function EMA snapshots (EDM2)
        # compile, channels_last, tf32, cudnn_benchmark, checkpointing (speed.py)
        parser.add_lightning_class_args(Speed, "speed")

    def before_fit(self) -> None:
        """The run's cost as counted, before it trains (`dff estimate` also measures steps and projects the time)."""
        if isinstance(self.model, DiffusionModule) and self.trainer.is_global_zero:
            batch = int(getattr(self.datamodule.hparams, "batch_size", 1))
            for line in estimate(self.model, batch, precision=str(self.trainer.precision), steps=0).lines():
                print("cost: " + line)

    clean_errors = False  # the command line: a bad setting ends with "dff: message", not a traceback

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except (ValueError, FileNotFoundError) as e:  # the model's and data's own checks of their settings
            if not self.clean_errors:
                raise
            raise SystemExit(f"dff: {e}") from None

    def instantiate_trainer(self, **kwargs):
        cfg = self._get(self.config_init, "trainer", default={})
        root = Path(cfg.get("default_root_dir") or "runs")
        version = None  # a resumed run continues in its own version_N
        ckpt = self._get(self.config_init, "ckpt_path", default=None)
        if ckpt is not None:
            if ckpt == "last":
                ckpt = str(newest_last_checkpoint(root))
                self.config_init[self.subcommand]["ckpt_path"] = ckpt
            version = run_version(ckpt, root)
        resumed = version is not None
        if cfg.get("logger") is not False and not resumed:  # a new run: claim its folder
            version = new_version(root)
        if cfg.get("logger") is not False:  # dff's loggers first (the run folder), then any the config adds
            csv_logger = RunLogger(root, name="", version=version)
            if not resumed:
                type(self).new_run = root / f"version_{csv_logger.version}"  # removed again if fit fails empty
            else:
                self.save_config_kwargs = {**self.save_config_kwargs,
                                           "config_filename": resume_config_name(root / f"version_{version}")}
            loggers = [csv_logger]
            if importlib.util.find_spec("tensorboard") is not None:
                from lightning.pytorch.loggers import TensorBoardLogger
                loggers.append(TensorBoardLogger(root, name="", version=csv_logger.version))
            kwargs["logger"] = loggers + added_loggers(cfg.get("logger"))
        # trainer.precision: null (the default) picks per device; a precision the device cannot honour falls back
        # (bf16 on a CPU with bf16 instructions, measured for pixel and latent diffusion and the autoencoder;
        # docs/benchmarks.md)
        kwargs["precision"] = choose_precision(cfg.get("precision"), cfg.get("accelerator"))
        if not cfg.get("plugins"):  # given here, not as a default, so that config.yaml stays loadable
            kwargs["plugins"] = [AtomicCheckpointIO()]
        return super().instantiate_trainer(**kwargs)


def new_version(root: Path) -> Optional[int]:
    """The version_N of a new run: claimed (created) by the first process; DDP processes that Lightning starts later
    from this one take the same N from the environment it leaves them; other ranks started on their own (torchrun,
    SLURM) leave it to Lightning (None)."""
    rank = int(os.environ.get("RANK") or os.environ.get("LOCAL_RANK") or 0) + int(os.environ.get("NODE_RANK") or 0)
    if rank == 0:
        version = claim_version(root)
        os.environ["DFF_RUN_VERSION"] = str(version)  # for the processes Lightning starts for the other ranks
        return version
    given = os.environ.get("DFF_RUN_VERSION")
    return int(given) if given is not None else None


def flag_values(argv: Sequence[str], flag: str) -> list[str]:
    """The values given as FLAG VALUE or FLAG=VALUE (e.g. --config, --ckpt_path)."""
    values = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == flag]
    return values + [a.split("=", 1)[1] for a in argv if a.startswith(flag + "=")]


def configured(argv: Sequence[str], key: str, default=None):
    """The value of a dotted key (e.g. "model.autoencoder") as `dff fit` would take it from argv: the last
    --key override, else the last --config file that sets it, else `default` (the values as given, unparsed)."""
    import yaml

    given = flag_values(argv, "--" + key)
    if given:
        return given[-1]
    found = default
    for path in flag_values(argv, "--config"):
        try:
            node = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            found = node
    return found


def config_model_class_path(argv: Sequence[str]) -> Optional[str]:
    """The `model.class_path` of the --config files in argv, if any (autoencoder configs name one)."""
    import yaml

    found = None
    for path in flag_values(argv, "--config"):
        try:
            cfg = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue  # unreadable configs are reported by check_configs / LightningCLI
        model = cfg.get("model") if isinstance(cfg, dict) else None
        if isinstance(model, dict) and "class_path" in model:
            found = model["class_path"]
    return found


class _NoAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip: For seamless" not in record.getMessage()


def quiet_lightning() -> None:
    """Silence Lightning's messages a dff user cannot act on; its other warnings stay."""
    for message in (
        "LightningCLI's args parameter is intended",  # dff passes the command line on purpose
        r"Found \d+ module\(s\) in eval mode",  # the EMA copy of the network stays in eval mode on purpose
        r"Total length of `\w+` across ranks is zero",  # no validation data: validation is for paired data only
        r"`isinstance\(treespec, LeafSpec\)` is deprecated",  # inside Lightning, with this torch
        r"Checkpoint directory .* exists and is not empty",  # a resumed run continues in its own folder
    ):
        warnings.filterwarnings("ignore", message=message)
    log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _NoAdverts) for f in log.filters):
        log.addFilter(_NoAdverts())  # advertisements for Lightning's cloud loggers


def fit(argv: Sequence[str], run: bool = True, clean_errors: bool = False) -> DffCLI:
    """Run `fit` through Lightning's CLI with the given arguments (after the word 'fit'). A config
    whose model section names a class_path (configs/autoencoder_*.yaml) trains that LightningModule;
    otherwise the keys of model: are DiffusionModule's arguments."""
    quiet_lightning()
    if clean_errors:
        check_configs(argv)
    subclass = config_model_class_path(argv) is not None
    cli_class = type("DffFitCLI", (DffCLI,), {"autoencoder_mode": subclass, "clean_errors": clean_errors})
    try:
        return cli_class(
            L.LightningModule if subclass else DiffusionModule, ImageDataModule,
            subclass_mode_model=subclass,
            args=["fit", *argv] if run else list(argv),
            run=run,
            trainer_defaults={"default_root_dir": "runs", "callbacks": [ExportWeights(), RunReport(), SaveOnSignal()],
                              "log_every_n_steps": 10},
            save_config_kwargs={"overwrite": False},
            seed_everything_default=0,
            parser_kwargs={"prog": "dff", "description": "Train a diffusion model (Lightning's CLI)."},
        )
    except pickle.UnpicklingError as e:  # Lightning's weights-only load of --ckpt_path refused the file
        remove_if_empty(cli_class.new_run)
        if not clean_errors:
            raise
        path = (flag_values(argv, "--ckpt_path") or [""])[-1]
        raise SystemExit(f"dff: --ckpt_path {refusal(path, e)}") from None
    except (ValueError, FileNotFoundError, NotADirectoryError, PermissionError, UnreadableFile) as e:
        # the data's and the model's checks of the user's settings, also those run while fit sets up its
        # data (a missing or empty folder, corrupt or too small images): one line on the command line
        remove_if_empty(cli_class.new_run)
        if not clean_errors:
            raise
        # an error re-raised from a DataLoader worker carries the worker's traceback: its last line is the message
        message = str(e).strip().splitlines()[-1] if "Original Traceback" in str(e) else str(e)
        raise SystemExit(f"dff: {message.split(': ', 1)[1] if message.startswith('dff.') else message}") from None


def remove_if_empty(folder: Optional[Path]) -> None:
    """A new run that failed before its first step leaves no version_N behind: its folder is removed when it
    holds nothing but what this run wrote at its start (config.yaml, hparams.yaml, TensorBoard's events file); any
    other file keeps it."""
    if folder is None or not folder.is_dir():
        return
    contents = list(folder.iterdir())
    if all(p.is_file() and (p.name in ("config.yaml", "hparams.yaml") or p.name.startswith("events.out.tfevents."))
           for p in contents):
        for p in contents:
            p.unlink()
        folder.rmdir()


YAML_VALUES = 100_000  # the most values a config may hold once its aliases are expanded
YAML_DEPTH = 100  # and its deepest nesting


def yaml_size(text: str) -> tuple[int, int]:
    """(values, depth) of a YAML document with its aliases expanded, counted on the node graph (yaml.compose keeps
    an alias as a reference to its anchor's node), so an alias bomb is measured without being built."""
    import yaml

    root = yaml.compose(text, Loader=yaml.SafeLoader)
    sizes: dict[int, tuple[int, int]] = {}  # id(node) -> (values, depth) below it

    def walk(node, seen: int) -> tuple[int, int]:
        if id(node) in sizes:
            return sizes[id(node)]
        if seen > YAML_DEPTH:
            return 1, seen
        children = (node.value if isinstance(node, yaml.SequenceNode) else
                    [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else [])
        total, depth = 1, 0
        for child in children:
            v, d = walk(child, seen + 1)
            total, depth = min(total + v, YAML_VALUES + 1), max(depth, d)
        sizes[id(node)] = (total, depth + 1)
        return sizes[id(node)]

    return walk(root, 0) if root is not None else (0, 0)


def check_configs(argv: Sequence[str]) -> None:
    """Each --config file exists and is a text file of a reasonable size once its YAML aliases are expanded: one
    clear line instead of a decoding traceback, or instead of gigabytes and minutes for a "billion laughs" file."""
    import yaml

    for path in flag_values(argv, "--config"):
        try:
            text = Path(path).read_text()
            values, depth = yaml_size(text)
            if values > YAML_VALUES or depth > YAML_DEPTH:
                raise SystemExit(f"dff: --config {path}: its aliases expand to more than {YAML_VALUES:,} values or "
                                 f"{YAML_DEPTH} levels; a config that large is refused (an alias bomb?)")
        except yaml.YAMLError:
            continue  # LightningCLI names the syntax error
        except RecursionError:
            raise SystemExit(f"dff: --config {path}: nested too deeply to read") from None
        except FileNotFoundError:
            raise SystemExit(f"dff: --config {path}: no such file") from None
        except IsADirectoryError:
            raise SystemExit(f"dff: --config {path} is a folder; expected a YAML file (e.g. "
                             "configs/pixel_digits.yaml)") from None
        except UnicodeDecodeError:
            raise SystemExit(f"dff: --config {path}: not a text file; expected a YAML config "
                             "(e.g. configs/pixel_digits.yaml)") from None
