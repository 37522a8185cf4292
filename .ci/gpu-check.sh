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
# The default steps fit a 15-minute device lease with its start (their limits add up to 600 s);
# bench-flow-fixed and bench-e2e-stride4 are there to be named in STEPS.
STEPS="${STEPS:-tests bench-flow bench-model bench-e2e run-demo}"
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

step tests 120 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_flow.py tests/test_engine.py tests/test_streaming.py
step bench-flow 90 "${BENCH[@]}" flow --devices cuda --settings default,fast --sizes 112,224 --batches 1,8 --repeats 3 "${VIDEO_ARGS[@]}"
step bench-flow-fixed 120 "${BENCH[@]}" flow --devices cuda --settings default-fixed --sizes 224 --batches 8 --repeats 2 "${VIDEO_ARGS[@]}"
step bench-model 120 "${BENCH[@]}" model --device cuda --backends torch-eager,torch --size 112,224 --batch 1,8 --repeats 5
step bench-e2e-stride4 120 "${BENCH[@]}" e2e --device cuda --engine torch --size-px 224 --arenas 4 --stride 4 --frames 600 --latency-frames 90
# issue 22's GPU line: arenas kept live at stride 1, 224 px, the default flow, clip-wise against streaming
step bench-e2e 210 "${BENCH[@]}" e2e --device cuda --engine torch,streaming-torch --size-px 224 --arenas 1,4,16,32 --stride 1 --frames 300 --latency-frames 60 --json "$OUT/bench-e2e.json"
# the README's main job on the GPU: the bundled model on the bundled video, outputs outside $OUT
DEMO_OUT="${DEMO_OUT:-$(mktemp -d)/demo}"
step run-demo 60 python3 -c "import sys; from stream.run import main; sys.exit(main())" \
    --video demo/synth_side.mp4 --stride 4 --device cuda --out "$DEMO_OUT" --no-zmq --no-metrics
exit $status
