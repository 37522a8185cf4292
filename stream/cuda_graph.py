"""Capture a function once as a CUDA graph, then replay it for new inputs of the same shapes.

Both the model engine and TV-L1 are thousands of small kernels per call (TV-L1's fast setting is
~600 per frame pair, the I3D ~300): launched one Python call at a time their launch overhead, not
the GPU, sets the pace. A captured graph launches them all at once. The inputs are copied into
fixed buffers the graph was captured on, and the outputs are cloned out of the graph's own
buffers, so callers can keep results across calls.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["CudaGraph", "WARMUP_RUNS"]

# Capture needs a few eager runs first so that cuDNN picks its algorithms, lazily built tables
# (TV-L1's resize matrices) exist on the device and the caching allocator settles; three is what
# the PyTorch CUDA-graph docs use.
WARMUP_RUNS = 3


class CudaGraph:
    """``fn(*inputs)`` (no host synchronisation inside) captured for the shapes and dtypes of
    ``example``; calling it replays the graph and returns its outputs as a tuple: ``fn`` returns a
    tensor, a tuple of tensors, or None when it works in place on buffers its owner keeps."""

    def __init__(self, fn: Callable[..., torch.Tensor | tuple[torch.Tensor, ...] | None],
                 example: tuple[torch.Tensor, ...]) -> None:
        self._inputs = tuple(x.clone() for x in example)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.inference_mode(), torch.cuda.stream(stream):
            for _ in range(WARMUP_RUNS):
                fn(*self._inputs)
        torch.cuda.current_stream().wait_stream(stream)
        self._graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(self._graph):
            out = fn(*self._inputs)
        self._outputs = () if out is None else out if isinstance(out, tuple) else (out,)

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if len(inputs) != len(self._inputs):
            raise ValueError(f"captured with {len(self._inputs)} inputs, called with {len(inputs)}")
        for buffer, x in zip(self._inputs, inputs, strict=True):
            buffer.copy_(x)
        self._graph.replay()
        return tuple(o.clone() for o in self._outputs)
