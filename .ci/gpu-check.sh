#!/usr/bin/env bash
# GPU checks, for a machine with a CUDA GPU (CI has none): the gpu-marked tests, then the three
# benchmarks on CUDA. Runs from a source checkout without installing it (PYTHONPATH), so that it
# also works on a bare GPU image with torch, OpenCV and the other dependencies preinstalled.
# Each step has its own time limit and a failing step does not stop the others; logs go to
# $OUT (default gpu-check-out/). Usage: [STEPS="tests bench-flow"] .ci/gpu-check.sh [VIDEO]
# (VIDEO: real video for the flow bench; STEPS: a subset of the steps below, default all)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu-check-out}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 SWIM_STREAM_CACHE="${SWIM_STREAM_CACHE:-$(mktemp -d)}"
VIDEO_ARGS=()
if [ $# -ge 1 ]; then VIDEO_ARGS=(--video "$1"); fi
BENCH=(python3 -c "import sys; from stream.bench import main; sys.exit(main())")  # stream-bench, uninstalled
STEPS="${STEPS:-tests bench-flow bench-flow-fixed bench-model bench-e2e-stride4 bench-e2e run-demo}"
status=0
step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    case " $STEPS " in *" $name "*) ;; *) return 0 ;; esac
    echo "=== $name (limit ${limit}s)"
    local start=$SECONDS
    timeout "$limit" "$@" > >(tee "$OUT/$name.log") 2>&1
    local rc=$?
    echo "=== $name: exit $rc after $((SECONDS - start)) s"
    [ $rc -eq 0 ] || status=1
}

nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,utilization.gpu --format=csv
python3 -c "import torch, cv2; print('torch', torch.__version__, torch.cuda.get_device_name(), '| OpenCV', cv2.__version__, '| optflow', hasattr(cv2, 'optflow'))"

step tests 240 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_flow.py tests/test_engine.py
step bench-flow 200 "${BENCH[@]}" flow --devices cuda --settings default,fast --sizes 112,224 --batches 1,8 --repeats 5 "${VIDEO_ARGS[@]}"
step bench-flow-fixed 120 "${BENCH[@]}" flow --devices cuda --settings default-fixed --sizes 224 --batches 8 --repeats 2 "${VIDEO_ARGS[@]}"
step bench-model 200 "${BENCH[@]}" model --device cuda --backends torch-eager,torch --size 112,224 --batch 1,8 --repeats 10
step bench-e2e-stride4 120 "${BENCH[@]}" e2e --device cuda --engine torch --size-px 224 --arenas 4 --stride 4 --frames 600 --latency-frames 90
step bench-e2e 200 "${BENCH[@]}" e2e --device cuda --engine torch --size-px 224 --arenas 1,4 --stride 1 --frames 600 --latency-frames 90 --json "$OUT/bench-e2e.json"
# the README's main job on the GPU: the bundled model on the bundled video, outputs outside $OUT
DEMO_OUT="${DEMO_OUT:-$(mktemp -d)/demo}"
step run-demo 180 python3 -c "import sys; from stream.run import main; sys.exit(main())" \
    --video demo/synth_side.mp4 --stride 4 --device cuda --out "$DEMO_OUT" --no-zmq --no-metrics
exit $status
