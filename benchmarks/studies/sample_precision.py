"""Does sampling in bf16 change quality? FID/KID of the same digits models sampled in float32 and in bf16 autocast
(DPM-Solver++(2M), 20 steps, 1,000 samples from the same seed), against the spread between the models' seeds.

    python benchmarks/studies/sample_precision.py EXPORT [EXPORT ...] [--steps 20] [--out FILE.json]

EXPORT: exported digits models (runs of configs/pixel_digits.yaml, e.g. the seeds of benchmarks/studies/convergence.py).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for benchmarks.common
from benchmarks.common import score_digits  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("exports", nargs="+")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    rows = []
    for export in args.exports:
        for precision in ("32", "bf16"):
            t0 = time.perf_counter()
            r = score_digits(Path(export), args.steps, precision=precision)
            rows.append({"export": str(export), "precision": precision, **r,
                         "seconds": round(time.perf_counter() - t0, 2)})
            print(json.dumps(rows[-1]))
    summary = {}
    for precision in ("32", "bf16"):
        fids = [r["fid"] for r in rows if r["precision"] == precision]
        summary[precision] = {"fid_mean": round(statistics.mean(fids), 4),
                              "fid_sd": round(statistics.stdev(fids), 4) if len(fids) > 1 else None}
    diffs = [b["fid"] - a["fid"] for a, b in zip(rows[0::2], rows[1::2])]
    summary["bf16_minus_32"] = {"mean": round(statistics.mean(diffs), 4), "max_abs": round(max(map(abs, diffs)), 4)}
    result = {"steps": args.steps, "rows": rows, "summary": summary}
    print(json.dumps(summary))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
