"""The tracker you already use, beside the run folder: loggers given on the command line or in YAML
(`--trainer.logger WandbLogger`, MLFlowLogger, TensorBoardLogger, ...) are added after dff's CSV logger, which
stays first, so the run folder (<default_root_dir>/version_N: metrics.csv, checkpoints, report.html) is where it
always is. Sample grids and the loss curve go to every logger that takes images, each in its own way."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Union

import numpy as np
from PIL import Image


def added_loggers(given: Any) -> list:
    """The loggers a config asked for, as a list (trainer.logger: None or True for dff's own alone)."""
    if given is None or given is True:
        return []
    return list(given) if isinstance(given, (list, tuple)) else [given]


def as_array(image: Union[str, Path, bytes, np.ndarray]) -> np.ndarray:
    """A PNG file, PNG bytes or an array as (H, W, 3) uint8."""
    if isinstance(image, np.ndarray):
        return image
    source = io.BytesIO(image) if isinstance(image, bytes) else image
    with Image.open(source) as im:
        return np.asarray(im.convert("RGB"))


def log_image(trainer, key: str, image: Union[str, Path, bytes, np.ndarray], step: int) -> list[str]:
    """Send one image to every logger of the trainer that takes images (rank 0 only); returns their names.
    Weights & Biases: log_image; MLflow: an artifact key/step_N.png of the run; TensorBoard: add_image. The CSV
    logger keeps none (the PNG files are in the run folder)."""
    if not trainer.is_global_zero:
        return []
    from lightning.pytorch.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger, WandbLogger

    a, sent = as_array(image), []
    for logger in trainer.loggers:
        if isinstance(logger, CSVLogger):
            continue
        if isinstance(logger, WandbLogger):
            logger.log_image(key=key, images=[a], step=step)
        elif isinstance(logger, MLFlowLogger):
            logger.experiment.log_image(logger.run_id, a, f"{key}/step_{step:06d}.png")
        elif isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(key, a, step, dataformats="HWC")
        elif callable(getattr(logger, "log_image", None)):  # Neptune, Comet, ... (Lightning's log_image signature)
            logger.log_image(key=key, images=[a], step=step)
        else:
            continue
        sent.append(type(logger).__name__)
    return sent
