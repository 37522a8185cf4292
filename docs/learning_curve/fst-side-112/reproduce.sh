#!/usr/bin/env bash
# Reproduces docs/learning_curve/fst-side-112/ (README, "The learning curve on a held-out setup"):
# the Kinetics-started fst-side-112 fine-tuned on 1, 2 and 5 labelled minutes of the simulator's
# held-out lighting, 3 seeds per point (5 for random 5 minutes of the per-stream recipe):
# export-select minutes against random minutes, and the recipe against the per-stream recipe (RGB
# stream unfrozen at 1e-3), at 1, 2 and 5 minutes (the pool holds 9 minutes, so no 10-minute point).
#
#   docs/learning_curve/fst-side-112/reproduce.sh     # ~7 h on 2 CPU cores (two runs side by side)
#
# Pool: 3 videos x 3 min (seeds 300001-300003, 5 animals); test: 3 videos x 1 min (seeds
# 300101-300103, 7 animals), every 16th frame (399 clips). The pool is scored once by stream-run
# at stride 4 (export-select's uncertainty); both runs share the folder and its scores.
set -euo pipefail
WORK="${WORK:-runs/lc2}"
OUT="${OUT:-docs/learning_curve/fst-side-112}"
V="$WORK/videos"
mkdir -p "$V"
for i in 1 2 3; do
    [ -f "$V/test_$i.mp4" ] || export-synth --view side --held-out lighting --fps 15 --minutes 1 --seed $((300100 + i)) --out "$V" --name "test_$i"
    [ -f "$V/pool_$i.mp4" ] || export-synth --view side --held-out lighting --fps 15 --minutes 3 --seed $((300000 + i)) --out "$V" --name "pool_$i"
done
common=(--init model:trained_models/fst-side-112 --train-videos "$V"/pool_{1,2,3}.mp4 --test-videos "$V"/test_{1,2,3}.mp4
        --frame-step 8 --score-stride 4 --eval-frame-step 16 --cache-dir "$WORK/cache" --threads 1 --out "$WORK/all")
# the scores first (one run), then two runs side by side on their own points
export-learning-curve "${common[@]}" --starts model --select uncertainty --minutes 0 --seed 0
export-learning-curve "${common[@]}" --starts model --select uncertainty --minutes 0,1,2 --seed 0,1,2 &
a=$!
( export-learning-curve "${common[@]}" --starts model --select random --minutes 2 --seed 0,1,2
  export-learning-curve "${common[@]}" --starts per-stream --select uncertainty --minutes 2 --seed 0,1,2 ) &
b=$!
wait "$a"
wait "$b"
# the 5-minute points and the per-stream 1-minute point (added later: ~1.5 h more, two runs side by side)
export-learning-curve "${common[@]}" --starts per-stream --select uncertainty --minutes 5,1 --seed 0,1,2 &
a=$!
export-learning-curve "${common[@]}" --starts per-stream --select random --minutes 5 --seed 0,1,2 &
b=$!
wait "$a"
wait "$b"
# the flow weight re-chosen on one held-back pool video (--flow-weight held-back; added later: ~1.5 h,
# two runs side by side), paired with the per-stream points above
( export-learning-curve "${common[@]}" --starts per-stream --select uncertainty --minutes 1,2 --seed 0,1 --flow-weight held-back
  export-learning-curve "${common[@]}" --starts per-stream --select random --minutes 5 --seed 1 --flow-weight held-back ) &
a=$!
( export-learning-curve "${common[@]}" --starts per-stream --select uncertainty --minutes 1,2 --seed 2 --flow-weight held-back
  export-learning-curve "${common[@]}" --starts per-stream --select random --minutes 5 --seed 0 --flow-weight held-back
  export-learning-curve "${common[@]}" --starts per-stream --select random --minutes 5 --seed 2 --flow-weight held-back ) &
b=$!
wait "$a"
wait "$b"
# seeds 3 and 4 of random 5 minutes, held-back weight and the card's (added later: ~1.5 h, one seed per run)
for seed in 3 4; do
  ( export-learning-curve "${common[@]}" --starts per-stream --select random --minutes 5 --seed $seed --flow-weight held-back
    export-learning-curve "${common[@]}" --starts per-stream --select random --minutes 5 --seed $seed ) &
done
wait
export-learning-curve --out "$WORK/all" --report-only
mkdir -p "$OUT"
cp "$WORK"/all/learning_curve.{csv,md,png} "$OUT/"
