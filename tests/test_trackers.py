"""Trackers beside the run folder: a logger given on the command line is added to dff's CSV logger, the run folder
(metrics.csv, checkpoints, report.html) stays where it is and resumes, and the sample grids and the loss curve
reach the tracker as images. Weights & Biases in offline mode, MLflow with a local file store: no network."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dff.cli import main
from dff.training.trackers import added_loggers

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--config", str(ROOT / "configs" / "pixel_digits.yaml"), "--model.dim", "8", "--trainer.log_every_n_steps", "1",
        "--samples.every_n_steps", "2", "--samples.num", "4", "--samples.steps", "2",
        "--trainer.enable_progress_bar", "false"]


def assert_run_folder(run: Path, steps: int) -> None:
    assert "train/loss" in (run / "metrics.csv").read_text() and (run / "report.html").exists()
    assert (run / "checkpoints" / "last.ckpt").exists()
    assert (run / "samples" / f"step_{steps:06d}.png").exists()


def test_mlflow_beside_the_run_folder_gets_the_grids_and_the_run_resumes(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 asks for this to keep a local file store
    args = [*TINY, "--trainer.default_root_dir", "runs", "--trainer.logger", "MLFlowLogger",
            "--trainer.logger.tracking_uri", "file:mlruns"]
    main(["fit", *args, "--trainer.max_steps", "4"])
    assert_run_folder(tmp_path / "runs" / "version_0", 4)
    artifacts = sorted(p.relative_to(p.parents[2]).as_posix() for p in (tmp_path / "mlruns").rglob("*.png"))
    assert artifacts == ["artifacts/loss_curve/step_000004.png", "artifacts/samples/step_000002.png",
                         "artifacts/samples/step_000004.png"]
    assert list((tmp_path / "mlruns").rglob("metrics/train/loss"))  # the metrics reach MLflow too
    main(["fit", *args, "--trainer.max_steps", "6", "--ckpt_path", "last"])  # finds the run in its own folder
    assert_run_folder(tmp_path / "runs" / "version_0", 6)
    assert not (tmp_path / "runs" / "version_1").exists()


def test_wandb_offline_beside_the_run_folder_gets_the_grids(tmp_path):
    pytest.importorskip("wandb")
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DIR": str(tmp_path)}
    cmd = [sys.executable, "-m", "dff.cli", "fit", *TINY, "--trainer.max_steps", "4",
           "--trainer.default_root_dir", str(tmp_path / "runs"), "--trainer.logger", "WandbLogger",
           "--trainer.logger.offline", "true", "--trainer.logger.save_dir", str(tmp_path / "wb")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert_run_folder(tmp_path / "runs" / "version_0", 4)
    images = sorted(p.name.split("_")[0] for p in (tmp_path / "wb").rglob("media/images/*.png"))
    assert images == ["loss", "samples", "samples"]  # loss_curve_..., samples_... at steps 2 and 4


def test_the_loggers_a_config_adds():
    assert added_loggers(None) == [] and added_loggers(True) == []
    a, b = object(), object()
    assert added_loggers(a) == [a] and added_loggers([a, b]) == [a, b]
