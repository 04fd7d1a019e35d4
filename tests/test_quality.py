"""Quality while training (eval.every_n_steps): FID/KID of fixed EMA samples logged to metrics.csv, drawn in the
report, and usable by checkpoint.monitor; the values are the ones an independent computation gives."""
import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from dff.cli import main
from dff.data.builtin import DigitsDataset
from dff.evaluation.features import get_extractor
from dff.evaluation.fid import compute_features, fid_from_features
from dff.pretrained import load_pretrained

ROOT = Path(__file__).resolve().parents[1]
RUN = ["fit", "--config", str(ROOT / "configs" / "pixel_digits.yaml"), "--model.dim", "8",
       "--trainer.log_every_n_steps", "1", "--samples.every_n_steps", "0", "--trainer.enable_progress_bar", "false",
       "--eval.every_n_steps", "2", "--eval.num", "80", "--eval.reference_num", "300", "--eval.steps", "5",
       "--eval.batch_size", "50"]


def eval_rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv", newline="") as f:
        return [r for r in csv.DictReader(f) if r.get("eval/fid")]


def test_fid_while_training_is_logged_drawn_and_equals_an_independent_computation(tmp_path):
    main([*RUN, "--trainer.max_steps", "4", "--trainer.default_root_dir", str(tmp_path / "runs")])
    run = tmp_path / "runs" / "version_0"
    rows = eval_rows(run)
    assert [int(r["step"]) for r in rows] == [2, 4] and all(float(r["eval/seconds"]) > 0 for r in rows)
    assert "Quality while training" in (run / "report.html").read_text()
    # step 4's FID from scratch: the export holds the EMA weights of step 4; batches of 50 from seeds 0 and 1;
    # 300 reference digits evenly spread; the shipped digits features
    model = load_pretrained(run)
    x = torch.cat([model.sample(50, "dpmpp_2m", steps=5, seed=0, progress=False),
                   model.sample(30, "dpmpp_2m", steps=5, seed=1, progress=False)])
    digits = DigitsDataset(16, 1)
    ref = torch.stack([digits[int(i)]["image"] for i in np.linspace(0, len(digits) - 1, 300).round()])
    extractor = get_extractor("digits")
    fid = fid_from_features(compute_features(extractor, x), compute_features(extractor, ref))
    assert float(rows[-1]["eval/fid"]) == pytest.approx(fid, rel=1e-6)


def test_checkpoint_monitor_keeps_the_best_by_fid(tmp_path):
    main([*RUN, "--trainer.max_steps", "6", "--trainer.default_root_dir", str(tmp_path / "runs"),
          "--checkpoint.monitor", "eval/fid", "--checkpoint.mode", "min", "--checkpoint.every_n_train_steps", "2",
          "--checkpoint.save_top_k", "1"])
    run = tmp_path / "runs" / "version_0"
    best = min(eval_rows(run), key=lambda r: float(r["eval/fid"]))
    kept = sorted(p.name for p in (run / "checkpoints").glob("step_*.ckpt"))
    assert kept == [f"step_{int(best['step']):06d}.ckpt"]


def test_what_eval_cannot_score_is_said_before_training(tmp_path, capsys):
    from conftest import write_images

    write_images(tmp_path / "images", 4, 16, "png")
    folder = ["--data.dataset", "folder", "--data.root", str(tmp_path / "images"), "--data.channels", "3",
              "--trainer.max_steps", "2", "--trainer.default_root_dir", str(tmp_path / "runs")]
    main([*RUN, *folder])  # the recipe's eval on other data: off, with one line, and the run trains
    assert "eval: off: eval.extractor auto knows the built-in digits and textures" in capsys.readouterr().out
    assert not [r for r in eval_rows(tmp_path / "runs" / "version_0")]
    with pytest.raises(SystemExit, match="an image-to-image model is scored by validation"):
        main([*RUN, *folder, "--data.pairs", "sr2", "--eval.extractor", "digits"])
    with pytest.raises(SystemExit, match="needs at least 65 images per set; eval.num=20"):
        main([*RUN, "--eval.num", "20", "--trainer.max_steps", "2", "--trainer.default_root_dir",
              str(tmp_path / "runs2")])
    with pytest.raises(SystemExit, match="eval.extractor: custom feature extractor 'no_such_module:make': cannot "
                                         "import"):
        main([*RUN, *folder, "--eval.extractor", "no_such_module:make", "--trainer.default_root_dir",
              str(tmp_path / "runs3")])
