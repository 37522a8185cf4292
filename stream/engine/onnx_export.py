"""The fused model as an ONNX graph: the one writer that ``export-model`` and the ONNX cache share.

The graph has two inputs (``rgb`` (B, 3, T, S, S), ``flow`` (B, 2, T, S, S)), three outputs
(fused, rgb and flow probabilities, each (B, K)) and a dynamic batch axis. Its metadata carries
the weights' digest, classes and input size, so that a graph from other weights or for another
size is refused by the onnxruntime backend instead of giving wrong numbers.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

from stream.engine.base import FusedProbs
from stream.model import FusedI3D
from stream.modelfile import ModelCard

__all__ = ["ONNX_FILENAME", "ONNX_INPUT_NAMES", "ONNX_OPSET", "ONNX_OUTPUT_NAMES", "write_onnx"]

ONNX_FILENAME = "model.onnx"  # export-model writes it beside the weights
ONNX_INPUT_NAMES = ("rgb", "flow")
ONNX_OUTPUT_NAMES = ("probs", "rgb_probs", "flow_probs")
# 17 is the first opset with every op this graph needs in its current form and is what
# onnxruntime >= 1.14 and TensorRT 8.6+ all read; higher gains nothing for Conv3d/Pad/pooling.
ONNX_OPSET = 17


def write_onnx(
    model: FusedI3D,
    path: str | Path,
    *,
    card: ModelCard,
    input_size_px: int | None = None,
    opset: int = ONNX_OPSET,
) -> Path:
    """Export the fused model to ONNX with a dynamic batch axis; return the written path.

    Uses the TorchScript exporter (``dynamo=False``): the dynamo exporter needs onnxscript, which
    is not a dependency, and gains nothing for a static CNN. The card's weights digest, classes and
    input size go into the ONNX metadata so that the onnxruntime backend can refuse a stale file.
    Writes atomically (temp file + rename) so a crash never leaves a truncated ``model.onnx``.
    """
    import onnx  # a core dependency, but only export needs it

    size_px = input_size_px or card.input_size_px
    path = Path(path)
    module = FusedProbs(model.float().cpu().eval()).eval()
    rgb = torch.zeros(1, 3, card.clip_frames, size_px, size_px)
    flow = torch.zeros(1, 2, card.clip_frames, size_px, size_px)
    tmp = path.with_name(path.name + ".partial")
    dynamic = {name: {0: "batch"} for name in (*ONNX_INPUT_NAMES, *ONNX_OUTPUT_NAMES)}
    with warnings.catch_warnings():
        # tracing warns that the TF-"SAME" pad amounts become constants: they are, for this size
        warnings.simplefilter("ignore")
        with torch.no_grad():
            torch.onnx.export(
                module,
                (rgb, flow),
                str(tmp),
                dynamo=False,
                opset_version=opset,
                input_names=list(ONNX_INPUT_NAMES),
                output_names=list(ONNX_OUTPUT_NAMES),
                dynamic_axes=dynamic,
                do_constant_folding=True,
            )
    proto = onnx.load(str(tmp))
    meta = {
        "weights_sha256": card.weights_sha256,
        "classes": ",".join(card.classes),
        "input_size_px": str(size_px),
        "clip_frames": str(card.clip_frames),
        "flow_weight": repr(float(model.flow_weight)),
        "producer": "swim-stream export-model",
    }
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(tmp))
    os.replace(tmp, path)
    return path
