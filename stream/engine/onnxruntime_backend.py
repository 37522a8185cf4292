"""The ``onnxruntime`` backend: the fused graph as ONNX, on the CPU provider tuned for few cores
(the CUDA provider when onnxruntime-gpu is installed): 1.5-2.7x eager PyTorch at 112 px batch 1 on
2 cores (``stream-bench model``), ready in under a second.

The graph comes from ``<model_dir>/model.onnx`` (written, verified and signed by ``export-model``;
one its manifest does not vouch for is not used) or from the user's cache, where the first start exports it, verifies it against PyTorch and signs its
manifest; a corrupt cached graph is exported again (``stream.engine.onnx_cache``).
onnxruntime itself is imported only when this backend is built.
"""

from __future__ import annotations

import importlib
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stream.engine.base import KIND_ONNXRUNTIME, ONNXRUNTIME_INSTALL_HINT, Engine, EngineConfig, first_line, to_numpy
from stream.engine.onnx_export import ONNX_INPUT_NAMES, ONNX_OUTPUT_NAMES
from stream.engine.cache import with_weights_digest
from stream.engine.onnx_cache import discard_cached, export_to_cache, onnx_for_engine
from stream.errors import UserError
from stream.modelfile import load_card, verify_weights

__all__ = ["OnnxRuntimeEngine", "session_options"]

log = logging.getLogger("stream.engine")


def session_options(ort: Any, threads: int | None) -> Any:
    """onnxruntime session options for a live engine (the clip graph and the streaming step share them).

    ``threads``: intra-op threads, None = all cores of this machine.
    """
    options = ort.SessionOptions()
    # one op at a time, each spread over all cores: the graph is a chain of big convolutions,
    # so op-level parallelism only makes the two streams fight for the same 2 cores
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads or os.cpu_count() or 1
    options.inter_op_num_threads = 1
    # constant folding, Conv+BN / Conv+ReLU fusion and layout changes: most of the CPU speed-up
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # spinning worker threads would steal the cores the TV-L1 flow thread needs between calls
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only: warnings about unused initialisers are noise
    return options


class OnnxRuntimeEngine(Engine):
    """``model.onnx`` on onnxruntime: CPU provider tuned for few cores, CUDA provider if installed."""

    backend = KIND_ONNXRUNTIME

    def __init__(self, model_dir: Path, config: EngineConfig) -> None:
        card = load_card(model_dir)
        super().__init__(card, config, model_dir)
        try:
            ort = importlib.import_module("onnxruntime")
        except ImportError:
            raise UserError(f"onnxruntime is not installed: {ONNXRUNTIME_INSTALL_HINT}") from None
        verify_weights(model_dir, card)  # the ONNX graph may be cached: still refuse damaged weights
        self._weights_sha256 = with_weights_digest(model_dir, card).weights_sha256
        path, cached = onnx_for_engine(model_dir, card, self.input_size_px)
        available = ort.get_available_providers()
        want_cuda = (config.device or "").startswith("cuda") or (
            config.device is None and "CUDAExecutionProvider" in available and torch.cuda.is_available()
        )
        if want_cuda and "CUDAExecutionProvider" not in available:
            raise UserError("onnxruntime has no CUDA provider: pip install swim-stream[gpu], or use --device cpu")
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if want_cuda else ["CPUExecutionProvider"]
        self._device_name = "cuda" if want_cuda else "cpu"
        options = session_options(ort, config.threads)
        try:
            self._session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf/RuntimeException types
            if not cached:
                raise UserError(
                    f"{path}: not a valid ONNX model ({first_line(exc)}); re-write it with `export-model {model_dir}`"
                ) from None
            # the cache is ours to repair: a graph onnxruntime cannot read (an onnxruntime
            # downgrade, say, although the manifest vouched for the bytes) is exported again, once
            log.warning("%s: cached ONNX graph does not load (%s); exporting it again", path, first_line(exc))
            discard_cached(path)
            path = export_to_cache(model_dir, card, self.input_size_px)
            try:
                self._session = ort.InferenceSession(str(path), options, providers=providers)
            except Exception as exc2:
                raise UserError(f"{path}: a fresh ONNX export does not load ({first_line(exc2)}); use --engine torch") from None
        self._check_metadata(path, self._session.get_modelmeta().custom_metadata_map)

    def _check_metadata(self, path: Path, meta: dict[str, str]) -> None:
        fix = f"re-write it with `export-model {self.model_dir}`"
        sha = meta.get("weights_sha256", "")
        if sha and sha != self._weights_sha256:
            raise UserError(f"{path}: exported from other weights than {self.card.weights_file}; {fix}")
        classes = meta.get("classes")
        if classes is not None and classes.split(",") != list(self.card.classes):
            raise UserError(f"{path}: classes {classes} disagree with card.json {list(self.card.classes)}; {fix}")
        size = meta.get("input_size_px")
        if size is not None and int(size) != self.input_size_px:
            raise UserError(
                f"{path}: exported for {size} px input, engine asked for {self.input_size_px} px; "
                f"{fix} --size {self.input_size_px}"
            )

    @property
    def name(self) -> str:
        return f"{self.backend}-{self._device_name}"

    @property
    def device(self) -> str:
        return self._device_name

    def _run(self, rgb: np.ndarray | torch.Tensor, flow: np.ndarray | torch.Tensor) -> tuple[np.ndarray, ...]:
        feeds = {ONNX_INPUT_NAMES[0]: to_numpy(rgb), ONNX_INPUT_NAMES[1]: to_numpy(flow)}
        return tuple(self._session.run(list(ONNX_OUTPUT_NAMES), feeds))

    def close(self) -> None:
        self._session = None
        super().close()

