#!/usr/bin/env bash
# Every figure the README quotes for the shipped weights, measured by the CLI in one go.
#
#   bash scripts/measure-default-weights.sh [OUT]       # OUT defaults to runs/measure (git-ignored)
#
# 1. INT8: a calibration set built by the CLI from phantoms (seeds 300000..), ONNX Runtime static
#    Q/DQ quantisation (entropy), then FP32 vs INT8 on 40 held-out phantoms (seeds 100000..): the
#    gate is slice-filter sensitivity within 1 point and risk-category agreement >= 98 %.
# 2. `cacstream bench pipeline`: end-to-end speed-up over the naive serial PyTorch pipeline and the
#    compute the slice filter saves against volume-wide segmentation (same run, same series), with
#    ONNX Runtime INT8 (the graphs of step 1) beside FP32.
# 3. `cacstream bench stream --mode model`: last slice landing -> JSON report, minus the quiet
#    period, for the 57-slice COCA scan replayed at 20 slices/s (median of 5 fresh engines).
# 4. `cacstream score --mode model` wall time on the 57-slice COCA scan (gated patient 0).
# Machine noise: each benchmark repeats and reports medians; compare ratios, not absolute times.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f .venv/bin/activate ] && . .venv/bin/activate
OUT=${1:-runs/measure}
W=${CACSTREAM_WEIGHTS:-engine/weights/default}
COCA=${CACSTREAM_DATA:-../shared/data}/coca-sample
mkdir -p "$OUT"
say() { echo "[$(date +%H:%M:%S)] $*"; }

# The INT8 files go into a copy of the weights folder: the shipped folder stays FP32-only.
WI="$OUT/weights-int8"
rm -rf "$WI" && cp -r "$W" "$WI"

say "1/4 INT8: calibration set, quantize, evaluate"
[ -d "$OUT/calib-src" ] || cacstream phantom "$OUT/calib-src" --series 40 --seed 300000 --kind mixed >/dev/null
rm -rf "$OUT/calib-set"
cacstream calibrate build "$OUT/calib-src" --weights "$WI" --out "$OUT/calib-set" -n 256 --quiet
cacstream calibrate quantize "$WI" --set "$OUT/calib-set" --method entropy --quiet
cacstream calibrate evaluate "$WI" --phantoms 40 --seed 100000 --out "$OUT/int8-eval" --quiet \
  && echo "INT8 gate: passed" || echo "INT8 gate: FAILED (see $OUT/int8-eval/report.md)"

say "2/4 bench pipeline"
# the copy with the INT8 graphs, so that ONNX Runtime INT8 is benchmarked beside FP32 in the same run
cacstream bench pipeline --weights "$WI" --series 2 --repeats 3 --json "$OUT/pipeline.json" \
  --md "$OUT/pipeline.md" --png "$OUT/pipeline.png" --quiet

say "3/4 bench stream (model mode)"
cacstream bench stream --mode model --weights "$W" --repeats 5 --json "$OUT/stream.json"

say "4/4 score --mode model, COCA gated patient 0"
rm -rf "$OUT/score-coca0"
/usr/bin/time -f "score --mode model on COCA patient 0: %e s wall" \
  cacstream score "$COCA/Gated_release_final/patient/0" --out "$OUT/score-coca0" --mode model --quiet \
  2>&1 | tail -1 | tee "$OUT/score-coca0.txt"
say "done: $OUT"
