"""The run report: one self-contained static page, <run>/report.html, that shows a run at a glance:
its status, time and hardware, the loss curve, the other logged metrics, evaluation numbers, the
sample grids over the training steps and the config. Images are embedded (base64), so the file can be
mailed or archived alone. `RunReport` (callbacks.py) rewrites it at each checkpoint and at the end.
"""
from __future__ import annotations

import base64
import csv
import html
import io
import json
import os
import platform
from datetime import datetime
from pathlib import Path
from typing import Optional

import torch

from ..viz import plot_loss, plot_quality

REPORT = "report.html"
MAX_GRIDS = 12  # sample grids shown, evenly spaced over the run, the last one always among them
RUN_IMAGES = ("samples.png", "trajectory.png", "reconstructions.png", "real.png")  # written by the demos and exports


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux; elsewhere what platform knows): speed numbers depend on it."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def hardware() -> dict[str, str]:
    """The machine as a report states it: the accelerator (CUDA device name or CPU model), cores, torch, Python."""
    if torch.cuda.is_available():
        device = f"{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    else:
        device = f"CPU ({cpu_model()})"
    return {"device": device, "cpu cores": str(os.cpu_count()), "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform(terse=True)}


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def metrics_table(csv_path: Path) -> dict[str, tuple[int, float]]:
    """The last logged (step, value) of every metric in a CSVLogger metrics.csv."""
    last: dict[str, tuple[int, float]] = {}
    if not csv_path.is_file():
        return last
    with open(csv_path, newline="") as f:
        for row in csv.DictReader(f):
            for key, value in row.items():
                if key not in ("step", "epoch") and value not in (None, ""):
                    try:
                        last[key] = (int(row.get("step") or 0), float(value))
                    except ValueError:
                        pass
    return last


def loss_png(csv_path: Path, plot=plot_loss) -> Optional[bytes]:
    """The loss curve (or another plot of metrics.csv) as PNG bytes, or None before its first logged value."""
    try:
        fig = plot(csv_path)
    except (FileNotFoundError, ValueError):
        return None
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return buf.getvalue()


def pick_grids(grids: list[Path], n: int = MAX_GRIDS) -> list[Path]:
    """At most n of the sorted grids, evenly spaced, the first and the last kept."""
    if len(grids) <= n:
        return grids
    idx = sorted({round(i * (len(grids) - 1) / (n - 1)) for i in range(n)})
    return [grids[i] for i in idx]


def section(title: str, body: str) -> str:
    return f"<section><h2>{html.escape(title)}</h2>\n{body}\n</section>"


def table(rows: dict[str, str]) -> str:
    cells = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows.items())
    return f"<table>{cells}</table>"


def figure(png: bytes, caption: str) -> str:
    return (f'<figure><img src="{data_uri(png)}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


STYLE = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.15em;border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse}th,td{text-align:left;padding:.2em .9em .2em 0;vertical-align:top}
th{font-weight:600;color:#555}figure{display:inline-block;margin:.4em .8em .8em 0;vertical-align:top}
figure img{image-rendering:pixelated;max-width:100%;border:1px solid #ddd}figcaption{font-size:.85em;color:#555}
pre{background:#f6f6f6;padding:.8em;overflow-x:auto;font-size:.85em}.status{font-weight:600}"""


def write_report(run: str | Path, *, status: str, info: Optional[dict[str, str]] = None) -> Path:
    """Write <run>/report.html from what the run folder holds (metrics.csv, samples/step_*.png, the demos'
    figures, eval*.json, config.yaml, skipped_files.txt) and `info` (steps, time, hardware, model: any
    key -> text). Written aside and renamed, so a reader never sees half a page."""
    run = Path(run)
    info = dict(info or {})
    parts = [f"<h1>dff run {html.escape(run.name)}</h1>",
             f'<p class="status">{html.escape(status)} &middot; updated {datetime.now():%Y-%m-%d %H:%M:%S} '
             f"&middot; {html.escape(str(run.resolve()))}</p>"]
    parts.append(section("Run", table(info)))
    png = loss_png(run / "metrics.csv")
    others = {k: f"{v:.5g} (step {s})" for k, (s, v) in metrics_table(run / "metrics.csv").items()
              if not k.startswith("train/loss")}
    parts.append(section("Loss", figure(png, "training loss against the step") if png else "<p>no loss logged yet</p>"))
    quality = loss_png(run / "metrics.csv", plot_quality)
    if quality:
        parts.append(section("Quality while training", figure(quality, "FID and KID of the EMA samples against the "
                                                                   "step (eval.every_n_steps)")))
    evals = {}
    for f in sorted(run.glob("eval*.json")):
        try:
            evals.update({f"{f.stem}: {k}": f"{v:.5g}" if isinstance(v, float) else str(v)
                          for k, v in json.loads(f.read_text()).items() if not isinstance(v, (dict, list))})
        except (ValueError, AttributeError):
            evals[f.name] = "unreadable"
    if others or evals:
        parts.append(section("Metrics and evaluation", table({**others, **evals})))
    grids = pick_grids(sorted((run / "samples").glob("step_*.png")))
    if grids:
        body = "".join(figure(g.read_bytes(), f"step {int(g.stem.split('_')[1])}") for g in grids)
        parts.append(section("Samples over training (EMA weights, the same noise each time)", body))
    images = [run / n for n in RUN_IMAGES if (run / n).is_file()]
    if images:
        parts.append(section("Figures", "".join(figure(p.read_bytes(), p.name) for p in images)))
    skipped = run / "skipped_files.txt"
    if skipped.is_file():
        lines = skipped.read_text().splitlines()
        parts.append(section(f"Skipped files ({len(lines)})", f"<pre>{html.escape(chr(10).join(lines[:50]))}</pre>"))
    config = run / "config.yaml"
    if config.is_file():
        parts.append(section("Config", "<details><summary>config.yaml (every setting of this run, as "
                                       f"`dff fit --config` takes it)</summary><pre>{html.escape(config.read_text())}"
                                       "</pre></details>"))
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>dff run {html.escape(run.name)}'
            f"</title><style>{STYLE}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")
    out = run / REPORT
    tmp = run / f".{REPORT}.tmp"
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out)
    return out
