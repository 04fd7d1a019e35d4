"""Run folders: `<root>/version_N/` holds one run's metrics, config, checkpoints, sample grids and export,
its resumptions included.

`dff fit ... --ckpt_path <root>/version_N/checkpoints/last.ckpt` (or `--ckpt_path last`: the newest
run's last.ckpt below the root) continues in version_N: the metrics are appended to its metrics.csv,
the resumed run's settings go to config_resume_K.yaml beside the original config.yaml, and the
checkpoints, grids and export land in the same folder. A checkpoint from anywhere else starts a new
version_N, as a first run does.
"""
from __future__ import annotations

import csv
import os
import re
from pathlib import Path
from typing import Optional, Union

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment


def claim_version(root: Union[str, Path]) -> int:
    """The next <root>/version_N, created here with one mkdir (atomic: of two runs started together into one root,
    each gets a folder of its own). A root that cannot be written is one clear error."""
    root = Path(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        taken = [int(m.group(1)) for p in root.iterdir() if (m := re.fullmatch(r"version_(\d+)", p.name))]
        n = max(taken, default=-1) + 1
        while True:
            try:
                (root / f"version_{n}").mkdir()
                return n
            except FileExistsError:  # claimed by another run a moment ago
                n += 1
    except PermissionError:
        raise ValueError(f"trainer.default_root_dir {root}: a run folder cannot be created there (permission "
                         "denied); choose a folder you can write") from None


def run_dir(trainer) -> Path:
    """The folder of this run: the logger's version folder, else the trainer's root. Under DDP this is a
    collective (Trainer.log_dir broadcasts rank 0's folder): call it on every rank, never on one alone."""
    return Path(trainer.log_dir or trainer.default_root_dir)


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer deletes an existing metrics.csv; this one keeps it and appends, header included."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                self.metrics_keys = list(csv.DictReader(f).fieldnames or [])


class RunLogger(CSVLogger):
    """CSVLogger into <root>/version_N that appends to the metrics of an existing run (a resumed one)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


def newest_last_checkpoint(root: Union[str, Path]) -> Path:
    """`--ckpt_path last`: the newest <root>/version_*/checkpoints/last.ckpt."""
    found = sorted(Path(root).glob("version_*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"--ckpt_path last: no version_*/checkpoints/last.ckpt below {root} "
                                "(trainer.default_root_dir); give the checkpoint's path")
    return found[-1]


def run_version(ckpt: Union[str, Path], root: Union[str, Path]) -> Optional[int]:
    """N if the checkpoint lies in <root>/version_N/checkpoints/, else None."""
    p = Path(ckpt).resolve()
    m = re.fullmatch(r"version_(\d+)", p.parent.parent.name)
    if p.parent.name == "checkpoints" and m and p.parent.parent.parent == Path(root).resolve():
        return int(m.group(1))
    return None


def resume_config_name(run: Union[str, Path]) -> str:
    """config.yaml for a new run; config_resume_K.yaml (the first free K) for a resumed one."""
    run = Path(run)
    if not (run / "config.yaml").exists():
        return "config.yaml"
    k = 1
    while (run / f"config_resume_{k}.yaml").exists():
        k += 1
    return f"config_resume_{k}.yaml"


# ---------------------------------------------------------------------- writing without half-written files
class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints are written to NAME.partial and renamed into place: a process killed while saving
    leaves the previous last.ckpt whole (a rename within one folder is atomic)."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        partial = Path(str(path) + ".partial")
        folder = partial.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OSError(f"cannot create the checkpoint folder {folder}: {e.strerror or e}") from None
        if not os.access(folder, os.W_OK):  # said as it is, not as a missing NAME.partial
            raise PermissionError(f"checkpoints cannot be written into {folder}: permission denied")
        super().save_checkpoint(checkpoint, partial, storage_options)
        os.replace(partial, path)
