#!/usr/bin/env bash
# Reproduces docs/learning_curve/ (README, "What to annotate next"): the bundled side model
# fine-tuned on 0-10 labelled minutes of a setup held out from its training, against random
# initialisation, with minutes picked by export-select against minutes picked at random.
#
#   docs/learning_curve/reproduce.sh            # ~75 min on 2 CPU cores (two runs side by side)
#
# The new setup: the simulator's LIGHTING family drawn from its held-out range (the family the
# bundled fst-side-64 transfers to worst, 0.387 in its REGENERATE.md), every other family from its
# training range; each video draws its own lighting, so test videos are lit differently from the
# videos the minutes come from. Pool: 4 videos x 4 min (9 animals); test: 3 videos x 1 min
# (7 animals). Labelling is simulated from the simulator's complete label files. Everything is
# seeded; the CPU run repeats to the bit only with the same torch thread count (see the README).
set -euo pipefail
WORK="${WORK:-runs/lc}"
MODEL="${MODEL:-trained_models/fst-side-64}"
OUT="${OUT:-docs/learning_curve}"
mkdir -p "$WORK/videos"
V="$WORK/videos"
for i in 1 2 3; do
    [ -f "$V/test_$i.mp4" ] || export-synth --view side --held-out lighting --fps 15 --minutes 1 --seed $((300100 + i)) --out "$V" --name "test_$i"
done
for i in 1 2 3 4; do
    [ -f "$V/pool_$i.mp4" ] || export-synth --view side --held-out lighting --fps 15 --minutes 4 --seed $((300000 + i)) --out "$V" --name "pool_$i"
done
common=(--init "model:$MODEL" --train-videos "$V"/pool_{1,2,3,4}.mp4 --test-videos "$V"/test_{1,2,3}.mp4
        --frame-step 8 --score-stride 2 --eval-frame-step 8 --cache-dir "$WORK/cache" --threads 1)
# the full curve for the recipe a lab would use; the comparisons at 1, 2 and 5 minutes (CPU time)
export-learning-curve "${common[@]}" --minutes 0,1,2,5,10 --starts model --select uncertainty --out "$WORK/curve_a" &
( export-learning-curve "${common[@]}" --minutes 1,2,5 --starts model --select random --out "$WORK/curve_b"
  export-learning-curve "${common[@]}" --minutes 1,2,5 --starts random --select uncertainty --out "$WORK/curve_c" ) &
wait
mkdir -p "$WORK/all/points"
cp "$WORK"/curve_{a,b,c}/points/*.json "$WORK/all/points/"
export-learning-curve --out "$WORK/all" --report-only
cp "$WORK"/all/learning_curve.{csv,md,png} "$OUT/"
