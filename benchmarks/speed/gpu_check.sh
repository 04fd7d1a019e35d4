#!/usr/bin/env bash
# The GPU check of the speed work, end to end in about 10 minutes on one H100 or H200 (compiling takes ~2 of them):
#   bash benchmarks/speed/gpu_check.sh      (from the repository root, on a machine with a CUDA GPU)
# 1. installs what the machine lacks: the project itself from src/ (PYTHONPATH) and its Python dependencies
#    missing there, from wheels in .whl/ when the machine has no network, else from the package index (a machine
#    with torch, lightning, torchmetrics, safetensors, scikit-learn and matplotlib lacks only jsonargparse[signatures]:
#    pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl jsonargparse docstring_parser typeshed_client);
# 2. benchmarks/speed/train_speed.py: each speed option on and off (the original's 64x64 U-Net, the latent config's
#    U-Net on cached latents), images/s, ms/step, peak memory, FLOP/s, sampling images/s;
# 3. benchmarks/gates/quality_gate.py: the digits config trained float32 (two seeds) and fast, loss and FID/KID
#    compared;
#    benchmarks/speed/data_speed.py: an image folder per item (PIL) against data.on_device;
# 4. writes benchmarks/results/speed-<device>.json and quality_gate-<device>.json (copied to $OUT when set) and
#    commits them when run inside a git checkout (DFF_COMMIT=0 to skip).
# Budgets: SPEED_BUDGET_S (default 330) for the speed table, GATE_TIMEOUT_S (default 240: the fast run compiles)
# for the gate.
# 5. benchmarks/speed/sample_speed.py (part "sample"): DPM-Solver++ 20 at batch 256 in float32, bf16 and
#    bf16 + channels_last for the 64x64 and the latent U-Net (issue 34 item 1's targets: >= 1,500 and >= 5,000 images/s).
# Parts: GPU_CHECK_PARTS (default "speed gate data sample") runs only those, e.g. two calls of a leased machine that
# limits one command's time: GPU_CHECK_PARTS=speed, then GPU_CHECK_PARTS="gate data". In a 15-minute lease of an
# H200 (2026-11-29) a first call of SPEED_BUDGET_S=400 took 7.3 min and two more single variants 2.6 and 2.9.
set -u -o pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1

if ! "$PY" -c "import jsonargparse, docstring_parser, typeshed_client" 2>/dev/null; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/dff-site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/dff-site
  else
    "$PY" -m pip install -q "jsonargparse[signatures]>=4.27" || exit 1
  fi
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
"$PY" - <<'EOF' || exit 1
import torch, lightning, dff
assert torch.cuda.is_available(), "no CUDA GPU: gpu_check.sh is for a GPU machine (benchmarks/speed/train_speed.py runs on the CPU too)"
print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, lightning {lightning.__version__}, dff {dff.__version__}")
EOF
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader || true

SLUG=$("$PY" -c "import torch; print(''.join(c if c.isalnum() else '-' for c in torch.cuda.get_device_name()).strip('-'))")
RESULTS=benchmarks/results
mkdir -p "$RESULTS"
LOG=${OUT:-/tmp}/gpu_check.log
start=$(date +%s)
PARTS=" ${GPU_CHECK_PARTS:-speed gate data sample} "

[[ $PARTS == *" speed "* ]] && { timeout $(( ${SPEED_BUDGET_S:-330} + 60 )) "$PY" benchmarks/speed/train_speed.py --budget-s "${SPEED_BUDGET_S:-330}" \
  --out "$RESULTS/speed-$SLUG.json" 2>&1 | tee "$LOG"
echo "speed benchmark: $(( $(date +%s) - start )) s" | tee -a "$LOG"; }

[[ $PARTS == *" gate "* ]] && { rm -f /tmp/dff-quality-gate/quality_gate.json
  timeout "${GATE_TIMEOUT_S:-240}" "$PY" benchmarks/gates/quality_gate.py --parallel \
  --out /tmp/dff-quality-gate 2>&1 | grep -v "it/s" | tail -n 20 | tee -a "$LOG"
[ -f /tmp/dff-quality-gate/quality_gate.json ] && cp /tmp/dff-quality-gate/quality_gate.json "$RESULTS/quality_gate-$SLUG.json"; }
[[ $PARTS == *" sample "* ]] && timeout 240 "$PY" benchmarks/speed/sample_speed.py --configs pixel_64 latent_maps_256 \
  --batch 256 --variants fp32 bf16 bf16_cl --rounds 3 --out "$RESULTS/sample_speed-$SLUG.json" 2>&1 | tail -n 4 \
  | tee -a "$LOG"
[[ $PARTS == *" data "* ]] && timeout 90 "$PY" benchmarks/speed/data_speed.py --num 2000 --batch 256 --batches 20 2>&1 \
  | tail -n 4 | tee -a "$LOG"
echo "gpu_check: $(( $(date +%s) - start )) s in all" | tee -a "$LOG"

if [ -n "${OUT:-}" ]; then  # what this call measured
  [[ $PARTS == *" speed "* ]] && cp "$RESULTS/speed-$SLUG.json" "$OUT/" 2>/dev/null
  [[ $PARTS == *" gate "* && -f /tmp/dff-quality-gate/quality_gate.json ]] && cp "$RESULTS/quality_gate-$SLUG.json" "$OUT/"
  [[ $PARTS == *" sample "* ]] && cp "$RESULTS/sample_speed-$SLUG.json" "$OUT/" 2>/dev/null
fi
if [ "${DFF_COMMIT:-1}" = 1 ] && git rev-parse --git-dir >/dev/null 2>&1; then
  git add "$RESULTS"/*-"$SLUG".json && git commit -qm "GPU check on $SLUG: speed table and quality gate" -- "$RESULTS" \
    && echo "committed $RESULTS/*-$SLUG.json"
fi
exit 0
