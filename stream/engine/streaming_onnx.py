"""The streaming engine's step as one ONNX graph on onnxruntime, its rings as state inputs and outputs.

``StreamingOnnxEngine`` is engine kind ``streaming``: ``stream.engine.streaming.StreamingEngine``
(kind ``streaming-torch``) with its step run by onnxruntime on the CPU; on CUDA, or without
onnxruntime installed, it keeps the PyTorch step (a log line says so).

Why: a torch step of ``stream.engine.streaming`` is ~400 small ops per stream, each paying Python
and dispatch overhead, which bounds one arena; onnxruntime runs the same step as one graph
(measured on the shared 2-core CPU, bundled 64 px model, one intra-op thread: 1.5-2.6x the torch
step for 1 arena, 1.6x for 4; with 2 threads 6-8x, the torch step's threads stalling on the loaded
machine: README, "Streaming engine", ``python -m export.streaming_step_bench``).

The graph (``StepGraph``, traced from the torch step itself, so both compute one function)::

    rgb (B, 3, S, S), flow (B, 2, S, S), state_<key> (B, L, C, H, W) per ring
        -> probs, rgb_probs, flow_probs (B, K), next_<key> (B, L, C, H, W) per ring

A ring in the graph holds a layer's past ``L`` input columns, oldest first; a step appends the new
column and drops the oldest (a shift: a graph has no Python frame counter for the torch rings'
modulo slot). All zeros is a segment's start, as for the torch rings. The batch axis is dynamic:
one graph serves any arena count. The graph is exported once per weights and input size into the
ONNX cache (``stream.engine.onnx_cache``, graph ``stream``), checked there against the torch step
over ``VERIFY_STEPS`` frames; later starts load it. The states stay in numpy arrays that
onnxruntime reads and writes in place (I/O binding, two sets used in turn), so a step copies
nothing but the new column of each ring.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from stream.engine.base import FP32_ATOL, ONNXRUNTIME_INSTALL_HINT, STREAM_RECEPTIVE_FRAMES, EngineConfig, Prediction, to_numpy
from stream.engine.cache import load_or_build_cached, with_weights_digest
from stream.engine.onnx_cache import GRAPH_STREAM, VERIFY_THREADS, cached_onnx_facts, cached_onnx_path
from stream.engine.onnx_export import ONNX_INPUT_NAMES, ONNX_OPSET, ONNX_OUTPUT_NAMES
from stream.engine.onnxruntime_backend import session_options
from stream.engine.streaming import StreamingEngine, _FusedStreaming, _Rings
from stream.errors import UserError
from stream.modelfile import ModelCard

__all__ = ["OnnxStep", "OnnxStepState", "StepGraph", "StreamingOnnxEngine", "check_streaming_onnx", "open_onnx_step",
           "write_streaming_onnx"]

log = logging.getLogger("stream.engine")

STATE_PREFIX = "state_"  # graph input of ring <key>: state_<key>
NEXT_PREFIX = "next_"  # graph output of ring <key> after the step: next_<key>
# the first-build check steps this many frames: every ring is then read at every depth it has
# (the deepest output reads STREAM_RECEPTIVE_FRAMES back), so a wrong shift anywhere shows
VERIFY_STEPS = STREAM_RECEPTIVE_FRAMES + 4
VERIFY_ARENAS = 2  # a batch of two: a mix-up between arenas shows too
VERIFY_SEED = 22
# the graph's form, in the cache manifest: a cached step of an older form is rebuilt, not run
# (2: symmetric SAME padding inside the convolutions and pools instead of separate Pad nodes)
STEP_FORMAT = 2


class GraphRings:
    """The torch rings' ``taps`` on explicit state tensors, for tracing the step into a graph.

    ``states[key]``: (B, L, C, H, W), the ring's past L columns oldest first; after the step
    ``next[key]`` holds it shifted by this frame's column.
    """

    def __init__(self, states: dict[int, torch.Tensor]) -> None:
        self.frame = 0  # _FusedStreaming counts steps here; the graph needs no count
        self.states = states
        self.next: dict[int, torch.Tensor] = {}

    def taps(self, key: int, column: torch.Tensor, back: Sequence[int]) -> list[torch.Tensor]:
        """As ``_Rings.taps``: store ``column`` as this frame's input of ``key``, return the columns ``back`` frames ago."""
        if tuple(back) == (0,):
            return [column]
        ring = torch.cat([self.states[key], column.unsqueeze(1)], dim=1)  # (B, L + 1, C, H, W), now last
        self.next[key] = ring[:, 1:]
        now = ring.shape[1] - 1
        return [ring[:, now - b] for b in back]


def ring_layout(stream: _FusedStreaming, size_px: int) -> dict[int, tuple[int, ...]]:
    """Ring key -> state shape without the batch, (L, C, H, W), read from one torch step at ``size_px``."""
    rings = _Rings()
    with torch.inference_mode():
        stream(torch.zeros(1, stream.rgb.in_channels, size_px, size_px),
               torch.zeros(1, stream.flow.in_channels, size_px, size_px), rings)
    # a torch ring holds now and the L columns before it
    return {key: (ring.shape[0] - 1, *ring.shape[2:]) for key, ring in sorted(rings.rings.items())}


class StepGraph(nn.Module):
    """``forward(rgb, flow, *states) -> (probs, rgb_probs, flow_probs, *next states)``: one traceable step."""

    def __init__(self, stream: _FusedStreaming, size_px: int) -> None:
        super().__init__()
        self.stream = stream
        self.layout = ring_layout(stream, size_px)

    def zero_states(self, arenas: int) -> list[torch.Tensor]:
        return [torch.zeros(arenas, *shape) for shape in self.layout.values()]

    def forward(self, rgb: torch.Tensor, flow: torch.Tensor, *states: torch.Tensor) -> tuple[torch.Tensor, ...]:
        rings = GraphRings(dict(zip(self.layout, states)))
        outs = self.stream(rgb, flow, rings)
        return (*outs, *(rings.next[key] for key in self.layout))


def write_streaming_onnx(stream: _FusedStreaming, path: str | Path, *, card: ModelCard, input_size_px: int) -> Path:
    """Export one step of ``stream`` (the torch streaming module of ``card``'s weights) to ``path``.

    TorchScript exporter, as ``stream.engine.onnx_export.write_onnx`` (no onnxscript needed).
    """
    path = Path(path)
    graph = StepGraph(stream, input_size_px).eval()
    s = input_size_px
    inputs = [*ONNX_INPUT_NAMES, *(f"{STATE_PREFIX}{key}" for key in graph.layout)]
    outputs = [*ONNX_OUTPUT_NAMES, *(f"{NEXT_PREFIX}{key}" for key in graph.layout)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracing warns that pad amounts and tap indices are constants: they are
        with torch.no_grad():
            torch.onnx.export(graph, (torch.zeros(1, 3, s, s), torch.zeros(1, 2, s, s), *graph.zero_states(1)), str(path),
                              dynamo=False, opset_version=ONNX_OPSET, input_names=inputs, output_names=outputs,
                              dynamic_axes={name: {0: "batch"} for name in (*inputs, *outputs)}, do_constant_folding=True)
    log.info("exported the streaming step of %s (%d rings as state) to %s", card.name, len(graph.layout), path)
    return path


class OnnxStepState:
    """The rings of one stream as numpy arrays that onnxruntime reads and writes in place.

    Two sets, used in turn: a step reads one and writes the other (a graph may not write what it reads).
    """

    def __init__(self, ort: Any, shapes: Sequence[tuple[int, ...]], arenas: int, classes: int) -> None:
        self.arenas = arenas
        self._arrays = [[np.zeros((arenas, *shape), np.float32) for shape in shapes] for _ in range(2)]
        self._values = [[ort.OrtValue.ortvalue_from_numpy(a) for a in arrays] for arrays in self._arrays]
        self.probs = [np.zeros((arenas, classes), np.float32) for _ in ONNX_OUTPUT_NAMES]
        self.prob_values = [ort.OrtValue.ortvalue_from_numpy(p) for p in self.probs]
        self.current = 0  # the set the next step reads

    def reset(self) -> None:
        """A segment's start: every ring all zeros."""
        for array in self._arrays[self.current]:
            array.fill(0.0)

    def read_write(self) -> tuple[list[Any], list[Any]]:
        """(the OrtValues this step reads, those it writes)."""
        return self._values[self.current], self._values[1 - self.current]

    def swap(self) -> None:
        self.current = 1 - self.current


class OnnxStep:
    """One streaming step on an onnxruntime session of the graph ``write_streaming_onnx`` wrote."""

    def __init__(self, session: Any, ort: Any) -> None:
        self._session, self._ort = session, ort
        states = [i for i in session.get_inputs() if i.name.startswith(STATE_PREFIX)]
        self._state_names = [i.name for i in states]
        self._next_names = [NEXT_PREFIX + name[len(STATE_PREFIX) :] for name in self._state_names]
        self._shapes = [tuple(int(d) for d in i.shape[1:]) for i in states]
        self._classes = int(session.get_outputs()[0].shape[1])

    def new_state(self, arenas: int) -> OnnxStepState:
        return OnnxStepState(self._ort, self._shapes, arenas, self._classes)

    def __call__(self, rgb: np.ndarray, flow: np.ndarray, state: OnnxStepState) -> tuple[np.ndarray, ...]:
        """rgb (N, 3, S, S), flow (N, 2, S, S) float32 -> fused, rgb, flow probabilities (N, K), copies."""
        binding = self._session.io_binding()
        binding.bind_cpu_input(ONNX_INPUT_NAMES[0], np.ascontiguousarray(rgb, np.float32))
        binding.bind_cpu_input(ONNX_INPUT_NAMES[1], np.ascontiguousarray(flow, np.float32))
        read, write = state.read_write()
        for name, value in zip(self._state_names, read):
            binding.bind_ortvalue_input(name, value)
        for name, value in zip(ONNX_OUTPUT_NAMES, state.prob_values):
            binding.bind_ortvalue_output(name, value)
        for name, value in zip(self._next_names, write):
            binding.bind_ortvalue_output(name, value)
        self._session.run_with_iobinding(binding)
        state.swap()
        return tuple(p.copy() for p in state.probs)


def _session(ort: Any, path: Path, threads: int | None) -> Any:
    return ort.InferenceSession(str(path), session_options(ort, threads), providers=["CPUExecutionProvider"])


def check_streaming_onnx(path: Path, stream: _FusedStreaming, input_size_px: int, *, atol: float = FP32_ATOL) -> float:
    """The graph at ``path`` against the torch step over ``VERIFY_STEPS`` random frames of 2 arenas; the max difference.

    Refused with one line when the two differ by more than ``atol`` (a fresh export is never used unchecked).
    """
    import onnxruntime as ort  # only reached from the streaming engine, which imported it already

    step = OnnxStep(_session(ort, path, VERIFY_THREADS), ort)
    g = torch.Generator().manual_seed(VERIFY_SEED)
    s, n = input_size_px, VERIFY_ARENAS
    rings, state, worst = _Rings(), step.new_state(n), 0.0
    with torch.inference_mode():
        for _ in range(VERIFY_STEPS):
            rgb, flow = torch.rand(n, 3, s, s, generator=g) * 2 - 1, torch.randn(n, 2, s, s, generator=g)
            want = stream(rgb, flow, rings)
            got = step(rgb.numpy(), flow.numpy(), state)
            worst = max(worst, *(float(np.abs(w.numpy() - o).max()) for w, o in zip(want, got)))
    if not worst <= atol:  # also catches NaN
        raise UserError(f"{path}: the streaming step's ONNX export differs from PyTorch by {worst:.2e} > {atol:.0e}; "
                        "use --engine streaming-torch, and report it with the model card")
    log.info("streaming ONNX step checked against PyTorch over %d frames of %d arenas: max abs diff %.1e", VERIFY_STEPS, n, worst)
    return worst


def open_onnx_step(model_dir: str | Path, card: ModelCard, stream: _FusedStreaming, input_size_px: int,
                   threads: int | None) -> OnnxStep:
    """The cached step graph of these weights and this size (exported and checked on the first start), loaded."""
    import onnxruntime as ort  # the caller checked it is installed

    card = with_weights_digest(model_dir, card)
    path = cached_onnx_path(card, input_size_px, graph=GRAPH_STREAM)

    def build(tmp: Path) -> None:
        write_streaming_onnx(stream, tmp, card=card, input_size_px=input_size_px)
        check_streaming_onnx(tmp, stream, input_size_px)

    session = load_or_build_cached(path, build, lambda p: _session(ort, p, threads),
                                   facts={**cached_onnx_facts(card, input_size_px, graph=GRAPH_STREAM), "step_format": STEP_FORMAT},
                                   what="ONNX streaming step")
    log.info("engine streaming: onnxruntime step %s (%d threads)", path, threads or os.cpu_count() or 1)
    return OnnxStep(session, ort)


class StreamingOnnxEngine(StreamingEngine):
    """Kind ``streaming``: the streaming engine with its step on onnxruntime (CPU), else the PyTorch step."""

    def __init__(self, model_dir: Path, config: EngineConfig) -> None:
        super().__init__(model_dir, config)
        self._onnx_step: OnnxStep | None = None
        if self._device.type != "cpu":
            log.info("engine streaming: %s: the PyTorch step (the ONNX step runs on the CPU only)", self._device)
            return
        try:
            import onnxruntime  # noqa: F401  (whether it is there; open_onnx_step uses it)
        except ImportError:
            log.info("engine streaming: onnxruntime not installed, the step runs in PyTorch (%s)", ONNXRUNTIME_INSTALL_HINT)
            return
        self._onnx_step = open_onnx_step(self.model_dir, self.card, self.module, self.input_size_px, config.threads)

    @property
    def name(self) -> str:
        if self._onnx_step is None:
            return super().name
        return f"{self.backend}-onnxruntime-{self._device.type}"

    def new_state(self, num_arenas: int) -> _Rings | OnnxStepState:
        if self._onnx_step is None:
            return super().new_state(num_arenas)
        return self._onnx_step.new_state(num_arenas)

    def step(self, rgb: torch.Tensor, flow: torch.Tensor, state: _Rings | OnnxStepState) -> Prediction:
        if self._onnx_step is None:
            return super().step(rgb, flow, state)
        fused, rgb_p, flow_p = self._onnx_step(to_numpy(rgb), to_numpy(flow), state)
        return Prediction(fused=fused, rgb=rgb_p, flow=flow_p)

    def close(self) -> None:
        self._onnx_step = None
        super().close()
