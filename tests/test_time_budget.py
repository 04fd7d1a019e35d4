"""A time budget keeps the recipe: with trainer.max_time (and no trainer.max_steps) model.lr_decay decays by the share
of the budget spent, reaching 0 at its end; a resumed run goes on from the time already spent (Lightning's Timer,
kept in checkpoints); with both budgets the decay reaches 0 at whichever runs out first."""
import csv
from pathlib import Path

import pytest

from dff.cli import main
from dff.training.optim import lr_factor

ROOT = Path(__file__).resolve().parents[1]
PEAK = 1e-3  # the digits recipe's model.lr
RUN = ["fit", "--config", str(ROOT / "configs" / "pixel_digits.yaml"), "--model.dim", "8", "--model.warmup_steps", "0",
       "--trainer.max_steps", "-1", "--trainer.log_every_n_steps", "1", "--samples.every_n_steps", "0",
       "--eval.every_n_steps", "0", "--trainer.enable_progress_bar", "false"]


def rates(run: Path) -> list[tuple[int, float]]:
    with open(run / "metrics.csv", newline="") as f:
        return [(int(r["step"]), float(r["train/lr"])) for r in csv.DictReader(f) if r.get("train/lr")]


def test_the_decay_follows_the_share_of_the_run_done_by_steps_or_by_time():
    assert lr_factor(0, 0, 0, "linear", spent=0.25) == pytest.approx(0.75)
    assert lr_factor(10, 0, 0, "linear", spent=1.0) == 0.0
    assert lr_factor(50, 0, 100, "linear", spent=0.2) == pytest.approx(0.5)  # steps further along: they count
    assert lr_factor(20, 0, 100, "linear", spent=0.6) == pytest.approx(0.4)  # time further along: it counts
    assert lr_factor(5, 0, 0, "cosine", spent=0.5) == pytest.approx(0.5)
    assert lr_factor(5, 10, 0, "linear", spent=0.5) == pytest.approx(0.3)  # warm-up 6/10 times 1 - 0.5


def test_a_time_budget_decays_to_zero_at_its_end_and_a_resume_goes_on_from_the_time_spent(tmp_path):
    main([*RUN, "--trainer.max_time", "00:00:00:08", "--trainer.default_root_dir", str(tmp_path / "runs")])
    run = tmp_path / "runs" / "version_0"
    first = rates(run)
    lrs = [lr for _, lr in first]
    assert len(lrs) >= 2 and all(a >= b for a, b in zip(lrs, lrs[1:]))  # linear decay, by the clock
    assert lrs[0] > 0.5 * PEAK and lrs[-1] < 0.3 * PEAK  # from near the peak to near 0 at the budget's end
    # resumed with twice the budget: about half of it is spent, so the rate goes on from about half the peak
    main([*RUN, "--trainer.max_time", "00:00:00:16", "--trainer.default_root_dir", str(tmp_path / "runs"),
          "--ckpt_path", "last"])
    resumed = [lr for step, lr in rates(run) if step > first[-1][0]]
    assert resumed and 0.2 * PEAK < resumed[0] < 0.7 * PEAK and resumed[-1] < 0.3 * PEAK
