"""The run report: <run>/report.html is written at each checkpoint and at the end of `dff fit`, holds
the run's grids, loss curve and config as embedded images and text, and renders in a real browser
(Debian's Chromium, driven by playwright: .ci/run installs it; elsewhere the browser test is skipped
unless DFF_REQUIRE_BROWSER=1)."""
import base64
import io
import os
import re
import shutil

import lightning as L
import numpy as np
import pytest
from PIL import Image

from dff.report import REPORT, pick_grids, write_report
from dff.train import fit

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
TINY = ["--model.dim", "8", "--model.dim_mults", "[1, 2]", "--data.batch_size", "8", "--samples.num", "4",
        "--samples.every_n_steps", "10", "--checkpoint.every_n_train_steps", "10", "--trainer.max_steps", "20"]


class ReadReport(L.Callback):
    """Copies the report's status line at step 15: after the checkpoint at step 10, before the end."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == 15:
            self.seen = (trainer.log_dir and open(os.path.join(trainer.log_dir, REPORT)).read())


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    cli = fit(["--config", "configs/pixel_digits.yaml", *TINY, "--trainer.default_root_dir", str(root)], run=False)
    spy = ReadReport()
    cli.trainer.callbacks.append(spy)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return cli.trainer.log_dir, spy.seen


def test_report_is_written_at_checkpoints_and_at_the_end(run):
    log_dir, seen_at_15 = run
    assert "running: checkpoint at step 10" in seen_at_15 and "step 20" not in seen_at_15
    page = open(os.path.join(log_dir, REPORT)).read()
    assert "finished at step 20" in page and "20 of 20" in page
    assert re.findall(r"<figcaption>step (\d+)</figcaption>", page) == ["10", "20"]
    assert "training loss against the step" in page
    assert "dataset: digits" in page  # the config, escaped into the page
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 3  # the loss curve and two grids, each a decodable PNG
    for b in images:
        with Image.open(io.BytesIO(base64.b64decode(b))) as im:
            assert im.format == "PNG" and im.width > 20


def test_report_of_an_empty_run(tmp_path):
    page = write_report(tmp_path, status="starting", info={"steps": "0"}).read_text()
    assert "starting" in page and "no loss logged yet" in page and "<img" not in page


def test_pick_grids_keeps_first_and_last():
    grids = [f"g{i}" for i in range(40)]
    picked = pick_grids(grids, 12)
    assert len(picked) == 12 and picked[0] == "g0" and picked[-1] == "g39" and picked == sorted(picked, key=grids.index)


@pytest.mark.skipif(not CHROMIUM and os.environ.get("DFF_REQUIRE_BROWSER") != "1",
                    reason="no Chromium here (.ci/run installs it; DFF_REQUIRE_BROWSER=1 makes this a failure)")
def test_report_renders_in_a_browser(run, tmp_path):
    from playwright.sync_api import sync_playwright

    assert CHROMIUM, "DFF_REQUIRE_BROWSER=1 but no chromium on PATH (apt-get install chromium)"
    args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run", "--disable-quic"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=args)
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.goto("file://" + os.path.abspath(os.path.join(run[0], REPORT)))
        decoded = page.evaluate("Array.from(document.images).map(i => i.complete && i.naturalWidth > 0)")
        title = page.title()
        png = page.screenshot(full_page=False)
        browser.close()
    assert decoded == [True, True, True] and title.startswith("dff run")
    shot = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float32)
    assert shot.std() > 20  # not a blank page: text, a table and a figure on the first screen
