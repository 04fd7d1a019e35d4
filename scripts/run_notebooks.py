"""Run the course notebooks in full mode, as a learner does (Run All, a fresh kernel, a folder outside the
repository), and keep what they measured: notebooks/results/<notebook>.json holds the numbers each notebook
passed to `learn.record` (the numbers its text and the notes quote; scripts/quoted_numbers.py checks them), its
wall time, the machine and the date. One notebook at a time; nothing else should run on the machine.

    python scripts/run_notebooks.py                    # all of notebooks/0*_*.py
    python scripts/run_notebooks.py 02_pixel 04_latent # some
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
RESULTS = NOTEBOOKS / "results"


def machine() -> str:
    import torch

    from dff.training.report import cpu_model

    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    isa = "AVX-512 bf16" if "avx512_bf16" in flags else "AVX-512" if "avx512f" in flags else "no AVX-512"
    if "amx_bf16" in flags:
        isa += ", AMX-bf16"
    return (f"{cpu_model()} ({isa}), {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
            f"torch {torch.__version__}, Python {platform.python_version()}")


def run(name: str, timeout: int) -> dict:
    """Execute notebooks/<name>.py in full mode in a temporary folder; its record, wall time and machine."""
    import jupytext
    import nbclient

    nb = jupytext.read(NOTEBOOKS / f"{name}.py")
    with tempfile.TemporaryDirectory(prefix=f"dff-{name}-") as tmp:
        record = Path(tmp) / "record.json"
        env = {"DFF_RECORD": str(record)}
        saved = {k: os.environ.get(k) for k in ("DFF_QUICK", "DFF_RECORD", "MPLBACKEND")}
        os.environ.pop("DFF_QUICK", None), os.environ.pop("MPLBACKEND", None)
        os.environ.update(env)
        before, t0 = round(os.getloadavg()[0], 2), time.time()
        try:
            nbclient.NotebookClient(nb, kernel_name="python3", timeout=timeout,
                                    resources={"metadata": {"path": tmp}}).execute()
        finally:
            for k, v in saved.items():
                os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        wall, after = time.time() - t0, round(os.getloadavg()[0], 2)
        values = json.loads(record.read_text()) if record.is_file() else {}
    return {"notebook": f"notebooks/{name}.ipynb", "mode": "full (DFF_QUICK unset), Run All in a fresh kernel",
            "command": f"python scripts/run_notebooks.py {name}", "date": datetime.date.today().isoformat(),
            "machine": machine(), "wall_s": round(wall, 1), "loadavg_1min": {"before": before, "after": after},
            "values": values}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("names", nargs="*", help="notebook names (default: all)")
    ap.add_argument("--timeout", type=int, default=3600, help="seconds per cell")
    args = ap.parse_args()
    names = args.names or sorted(p.stem for p in NOTEBOOKS.glob("0*_*.py"))
    RESULTS.mkdir(exist_ok=True)
    for name in names:
        if not (NOTEBOOKS / f"{name}.py").is_file():
            sys.exit(f"dff: no notebook notebooks/{name}.py")
        print(f"{name}: running in full mode ...", flush=True)
        res = run(name, args.timeout)
        (RESULTS / f"{name}.json").write_text(json.dumps(res, indent=2) + "\n")
        print(f"{name}: {res['wall_s']:.0f} s, {len(res['values'])} recorded values -> "
              f"notebooks/results/{name}.json", flush=True)


if __name__ == "__main__":
    main()
