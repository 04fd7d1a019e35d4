"""The README's commands as a new user runs them, timed: a fresh clone of HEAD, `bash run.sh demo` (set-up included:
the virtual environment and every install), then `bash run.sh dff demo latent`, then `bash run.sh test`. Writes
benchmarks/results/readme_commands-<machine>.json with each wall time, the times the demos print and the latent
demo's judge line, which the README quotes (scripts/quoted_numbers.py). Nothing else should run on the machine.

    python benchmarks/readme_commands.py [--name amd-epyc] [--skip-latent] [--skip-test] [--keep-latent DIR]

--keep-latent copies the latent demo's runs/latent_demo to DIR (for benchmarks/gates/latent_demo.py --skip-demo).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(cmd: list[str], cwd: Path) -> tuple[float, str]:
    """(wall seconds, stdout + stderr) of cmd run in cwd; exits naming the command when it fails."""
    t0 = time.time()
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "DFF_VENV", "PYTHONPATH")}
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{out[-3000:]}")
    return time.time() - t0, out


def cpu_bf16() -> str:
    """Which bf16 hardware the CPU has, by the probes the CPU default precision follows (dff.speed)."""
    from dff.speed import cpu_has_amx_bf16, cpu_has_bf16

    return "AMX-bf16" if cpu_has_amx_bf16() else "avx512_bf16" if cpu_has_bf16() else "none (float32 by default)"


def precision(out: str) -> str | None:
    """The training precision a run printed ("speed: precision bf16-mixed; ...")."""
    m = re.search(r"speed: precision (\S+);", out)
    return m.group(1) if m else None


def seconds(pattern: str, out: str) -> float | None:
    m = re.search(pattern, out)
    return float(m.group(1)) if m else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--name", default="amd-epyc", help="machine name in the result file's name")
    ap.add_argument("--skip-latent", action="store_true")
    ap.add_argument("--skip-test", action="store_true")
    ap.add_argument("--keep-latent", default=None, help="copy the latent demo's run folder here")
    args = ap.parse_args()
    from dff.training.report import cpu_model

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    res: dict = {"date": datetime.date.today().isoformat(), "commit": commit,
                 "machine": f"{os.cpu_count()} cores; {cpu_model()}", "cpu_bf16": cpu_bf16(),
                 "loadavg_before": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory(prefix="dff-readme-") as tmp:
        clone = Path(tmp) / "dff"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        wall, out = timed(["bash", "run.sh", "demo"], clone)
        demo = seconds(r"demo finished in (\d+) s", out)
        res["demo"] = {"command": "bash run.sh demo", "wall_s": round(wall, 1), "demo_s": demo,
                       "trained_s": seconds(r"trained in (\d+) s", out),
                       "setup_s": round(wall - demo, 1) if demo else None, "precision": precision(out)}
        print(json.dumps(res["demo"]), flush=True)
        if not args.skip_latent:
            wall, out = timed(["bash", "run.sh", "dff", "demo", "latent"], clone)
            judge = next((line for line in out.splitlines() if line.startswith("texture judge:")), None)
            res["latent_demo"] = {"command": "bash run.sh dff demo latent", "wall_s": round(wall, 1),
                                  "demo_s": seconds(r"latent demo finished in (\d+) s", out),
                                  "latent_trained_s": seconds(r"latent model trained in (\d+) s", out),
                                  "precision": precision(out),
                                  "max_steps": seconds(r"max_steps=(\d+)", out),
                                  "judge_line": judge,
                                  "recognised_of_16": int(judge.split()[2]) if judge else None}
            print(json.dumps(res["latent_demo"]), flush=True)
            if args.keep_latent:
                shutil.copytree(clone / "runs" / "latent_demo", args.keep_latent, dirs_exist_ok=False)
        if not args.skip_test:
            wall, out = timed(["bash", "run.sh", "test"], clone)
            summary = [line for line in out.splitlines() if " passed" in line][-1:]
            res["test"] = {"command": "bash run.sh test", "wall_s": round(wall, 1),
                           "summary": summary[0].strip("= ") if summary else None}
            print(json.dumps(res["test"]), flush=True)
    res["loadavg_after"] = os.getloadavg()[0]
    out = ROOT / "benchmarks" / "results" / f"readme_commands-{args.name}.json"
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
