"""Time one step of the streaming engine: the PyTorch step against the same step as one ONNX graph (issue 22).

Why: a PyTorch step is hundreds of small ops per stream (``--count-ops`` counts them); the question
was whether their dispatch, not their arithmetic, bounds the step, and whether onnxruntime running
the step as one graph (``stream.engine.streaming_onnx``, the rings as state) pays. Every variant
runs in this one process on the same frames, so the ratios are against a reference measured in
the same run (the README's "Streaming engine" gives the figures)::

    python -m export.streaming_step_bench --model trained_models/fst-side-64 --arenas 1,4 --threads 1,2

Variants, per thread count and arena count (ms per step, and the PyTorch step's time over it):

* ``torch``: the engine's PyTorch step (``_FusedStreaming`` on its modulo rings);
* ``torch-jit``: the graph form (``StepGraph``) traced, frozen and ``optimize_for_inference``d;
* ``onnxruntime``: the graph on onnxruntime with plain ``run`` (state arrays in and out);
* ``onnxruntime-iobind``: the engine's way (``OnnxStep``: the state bound in place, two sets in turn).
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from stream.bench.arguments import int_list
from stream.engine.cache import with_weights_digest
from stream.engine.onnx_export import ONNX_INPUT_NAMES, ONNX_OUTPUT_NAMES
from stream.engine.onnxruntime_backend import session_options
from stream.engine.streaming import _FusedStreaming, _Rings
from stream.engine.streaming_onnx import NEXT_PREFIX, STATE_PREFIX, OnnxStep, StepGraph, write_streaming_onnx
from stream.errors import UserError, cli_main
from stream.modelfile import load_model

__all__ = ["main", "time_steps"]

log = logging.getLogger("export.streaming_step_bench")

DEFAULT_MODEL = Path("trained_models/fst-side-64")
WARMUP_STEPS = 5  # allocation, oneDNN primitives and onnxruntime's first-run planning
DEFAULT_STEPS = 20  # per variant: ~1-3 s each on the 2-core machine at 64 px
VARIANTS = ("torch", "torch-jit", "onnxruntime", "onnxruntime-iobind")


def _mean_ms(step: Callable[[], object], steps: int) -> float:
    for _ in range(WARMUP_STEPS):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps * 1e3


def _ops_per_step(stream: _FusedStreaming, rgb: torch.Tensor, flow: torch.Tensor) -> int:
    """PyTorch ops one step dispatches (both streams), from the profiler's top-level events."""
    rings = _Rings()
    with torch.inference_mode():
        stream(rgb, flow, rings)  # the rings exist: the profiled step is a steady one
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            stream(rgb, flow, rings)
    return sum(1 for e in prof.events() if e.cpu_parent is None)


def time_steps(model_dir: Path, arenas: Sequence[int], threads: Sequence[int], steps: int = DEFAULT_STEPS,
               variants: Sequence[str] = VARIANTS) -> list[dict]:
    """One row per (threads, arenas, variant): ms per step and the ``torch`` variant's time over it."""
    import onnxruntime as ort

    model, card = load_model(model_dir, device="cpu")
    card = with_weights_digest(model_dir, card)
    size = card.input_size_px
    stream = _FusedStreaming(model.eval(), card.clip_frames).eval()
    graph = StepGraph(stream, size).eval()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = write_streaming_onnx(stream, Path(tmp) / "step.onnx", card=card, input_size_px=size)
        jit = None
        if "torch-jit" in variants:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tracing's constant warnings, as in the export
                jit = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(
                    graph, (torch.zeros(1, 3, size, size), torch.zeros(1, 2, size, size), *graph.zero_states(1)),
                    check_trace=False).eval()))
        for n_threads in threads:
            torch.set_num_threads(n_threads)
            session = ort.InferenceSession(str(path), session_options(ort, n_threads), providers=["CPUExecutionProvider"])
            state_names = [i.name for i in session.get_inputs() if i.name.startswith(STATE_PREFIX)]
            next_names = [NEXT_PREFIX + name[len(STATE_PREFIX) :] for name in state_names]
            for n in arenas:
                g = torch.Generator().manual_seed(n)
                rgb, flow = torch.rand(n, 3, size, size, generator=g) * 2 - 1, torch.randn(n, 2, size, size, generator=g)
                times = {}
                rings = _Rings()

                def torch_step() -> None:
                    with torch.inference_mode():
                        stream(rgb, flow, rings)

                times["torch"] = _mean_ms(torch_step, steps)
                if jit is not None:
                    states = graph.zero_states(n)

                    def jit_step() -> None:
                        with torch.inference_mode():
                            states[:] = jit(rgb, flow, *states)[3:]

                    times["torch-jit"] = _mean_ms(jit_step, steps)
                if "onnxruntime" in variants:
                    feeds = {ONNX_INPUT_NAMES[0]: rgb.numpy(), ONNX_INPUT_NAMES[1]: flow.numpy(),
                             **{name: z.numpy() for name, z in zip(state_names, graph.zero_states(n))}}

                    def ort_step() -> None:
                        out = session.run([*ONNX_OUTPUT_NAMES, *next_names], feeds)
                        feeds.update(zip(state_names, out[len(ONNX_OUTPUT_NAMES) :]))

                    times["onnxruntime"] = _mean_ms(ort_step, steps)
                if "onnxruntime-iobind" in variants:
                    onnx_step = OnnxStep(session, ort)
                    state = onnx_step.new_state(n)
                    times["onnxruntime-iobind"] = _mean_ms(lambda: onnx_step(rgb.numpy(), flow.numpy(), state), steps)
                for variant, ms in times.items():
                    rows.append({"threads": n_threads, "arenas": n, "variant": variant, "ms_per_step": ms,
                                 "speedup_vs_torch": times["torch"] / ms})
                    log.info("threads %d, %d arenas: %-19s %7.1f ms/step  %.2fx the torch step",
                             n_threads, n, variant, ms, times["torch"] / ms)
    return rows


@cli_main("streaming-step-bench")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.streaming_step_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help=f"model directory (default {DEFAULT_MODEL})")
    parser.add_argument("--arenas", default="1,4", help="comma-separated arena counts (the step's batch)")
    parser.add_argument("--threads", default="1,2", help="comma-separated intra-op thread counts (PyTorch and onnxruntime alike)")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="timed steps per variant")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--count-ops", action="store_true", help="also count the ops one PyTorch step dispatches")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or "torch" not in variants:
        raise UserError(f"--variants {args.variants}: choose from {', '.join(VARIANTS)}; torch (the reference) is needed")
    if not (args.model / "card.json").is_file():
        raise UserError(f"{args.model}: no card.json; pass a model directory with --model")
    log.info("load average %s (cores %d)", " ".join(f"{x:.2f}" for x in os.getloadavg()), os.cpu_count() or 1)
    if args.count_ops:
        model, card = load_model(args.model, device="cpu")
        s = card.input_size_px
        ops = _ops_per_step(_FusedStreaming(model.eval(), card.clip_frames).eval(), torch.zeros(1, 3, s, s), torch.zeros(1, 2, s, s))
        log.info("one PyTorch step dispatches %d ops (both streams)", ops)
    rows = time_steps(args.model, int_list(args.arenas, "--arenas"), int_list(args.threads, "--threads"),
                      args.steps, variants)
    print(f"{'threads':>7} {'arenas':>6} {'variant':<19} {'ms/step':>8} {'vs torch':>8}")
    for r in rows:
        print(f"{r['threads']:>7} {r['arenas']:>6} {r['variant']:<19} {r['ms_per_step']:>8.1f} {r['speedup_vs_torch']:>7.2f}x")
    log.info("load average after: %s", " ".join(f"{x:.2f}" for x in os.getloadavg()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
