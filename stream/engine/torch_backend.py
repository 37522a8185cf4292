"""The ``torch`` backend: PyTorch on CUDA or on the CPU, with the optimisations each device rewards.

* CUDA: half precision, channels-last-3d and a captured CUDA graph for a fixed batch.
* CPU: TorchScript trace + freeze + ``optimize_for_inference``, which folds batch norm into the
  convolutions and keeps weights in oneDNN layout: 1.1-1.5x eager on 2 shared cores, but 10-30 s
  to build.
* ``compile=True``: ``torch.compile`` instead (minutes on 2 CPU cores: opt-in, never chosen by
  auto); ``optimize=False``: plain eager PyTorch, the benchmark's reference.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from stream.cuda_graph import CudaGraph
from stream.engine.base import CPU_HALF_REFUSAL, KIND_TORCH, Engine, EngineConfig, FusedProbs, torch_device
from stream.errors import UserError
from stream.modelfile import load_model

__all__ = ["TorchEngine"]


class TorchEngine(Engine):
    """PyTorch on CUDA or CPU, with the optimisations each device rewards."""

    backend = KIND_TORCH

    def __init__(self, model_dir: Path, config: EngineConfig) -> None:
        model, card = load_model(model_dir, device="cpu")
        super().__init__(card, config, model_dir)
        self._device = torch_device(config)
        cuda = self._device.type == "cuda"
        # optimize=False is plain eager PyTorch: FP32 unless half is asked for, no graphs, no layout change
        plain = not config.optimize and not config.compile
        half = config.half if config.half is not None else (cuda and not plain)
        if half and not cuda:
            raise UserError(CPU_HALF_REFUSAL)
        self._dtype = torch.float16 if half else torch.float32
        self._channels_last = cuda and config.channels_last and not plain
        graphs = cuda and config.cuda_graphs and not plain
        self._batch = config.batch_size or (1 if graphs else None)
        module: nn.Module = FusedProbs(model).eval().to(self._device, self._dtype)
        if self._channels_last:
            module = module.to(memory_format=torch.channels_last_3d)
        self._tags: list[str] = [self._device.type]
        if self._dtype != torch.float32:
            self._tags.append("fp16")
        self._module = module
        self._runner: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, ...]] = module
        if config.compile:
            self._runner = self._compile(module)
            self._tags.append("compile")
        elif config.optimize and not cuda:
            self._runner = self._freeze(module)
            self._tags.append("frozen")
        elif not config.optimize:
            self._tags.append("eager")
        if cuda and self._dtype == torch.float32:
            self._runner = _without_tf32(self._runner)
        self._graph: CudaGraph | None = None
        if graphs and self._batch is not None:
            self._graph = CudaGraph(self._runner, self._example(self._batch))
            self._tags.append("graphs")

    @property
    def name(self) -> str:
        return "-".join([self.backend, *self._tags])

    @property
    def device(self) -> str:
        return str(self._device)

    @property
    def fixed_batch(self) -> int | None:
        return self._batch if self._graph is not None else None

    def _example(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        t, s = self.card.clip_frames, self.input_size_px
        rgb = torch.zeros(n, 3, t, s, s, device=self._device, dtype=self._dtype)
        flow = torch.zeros(n, 2, t, s, s, device=self._device, dtype=self._dtype)
        return self._layout(rgb), self._layout(flow)

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last_3d) if self._channels_last else x

    def _freeze(self, module: nn.Module) -> Callable[..., tuple[torch.Tensor, ...]]:
        """TorchScript trace + freeze + optimize_for_inference: folds BN, prepacks oneDNN weights."""
        example = self._example(1)
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # TracerWarnings about the constant SAME-pad amounts
            traced = torch.jit.trace(module, example, check_trace=False)  # the check re-traces: 4x the time
            frozen = torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))
        return frozen

    def _compile(self, module: nn.Module) -> Callable[..., tuple[torch.Tensor, ...]]:
        # freezing lets inductor fold batch norm and constant-propagate the weights (inference
        # only); inductor's own CUDA graphs stay off (its default) because CudaGraph wraps this.
        # Compiling takes minutes on 2 CPU cores: it is opt-in, never chosen by auto.
        return torch.compile(module, dynamic=False, options={"freezing": True})

    @torch.inference_mode()
    def _run(self, rgb: np.ndarray | torch.Tensor, flow: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, ...]:
        rgb_t = self._layout(torch.as_tensor(rgb).to(self._device, self._dtype, non_blocking=True))
        flow_t = self._layout(torch.as_tensor(flow).to(self._device, self._dtype, non_blocking=True))
        if self._graph is not None:
            return self._graph(rgb_t, flow_t)
        return self._runner(rgb_t, flow_t)

    def close(self) -> None:
        self._graph = None
        self._runner = self._module = None  # type: ignore[assignment]
        if self._device.type == "cuda":
            torch.cuda.empty_cache()
        super().close()


def _without_tf32(fn: Callable[..., tuple[torch.Tensor, ...]]) -> Callable[..., tuple[torch.Tensor, ...]]:
    """Run ``fn`` with cuDNN's TF32 convolutions off: PyTorch turns them on by default, and their
    10-bit mantissa moved an FP32 engine's probabilities by 0.036 from the CPU's on an H200, more
    than FP16 did. An engine asked for FP32 computes in FP32; FP16 is the fast choice."""

    def run(*args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        saved = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = False
        try:
            return fn(*args)
        finally:
            torch.backends.cudnn.allow_tf32 = saved

    return run

