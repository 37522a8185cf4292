"""Training checkpoints that cannot run code: tensors in safetensors, everything else as JSON.

``torch.load(weights_only=False)`` unpickles, and a pickle can call any function: a crafted
``checkpoint.pt`` handed to a lab ran code when ``export-train --resume`` or ``export-evaluate``
reached it. A checkpoint here is ONE ``.safetensors`` file: the tensors (model, optimizer state)
are its tensors, and the rest (epoch, history, configuration, optimizer hyper-parameters,
scheduler, AMP scaler, RNG states as plain lists of integers) is a JSON document stored in the
file's metadata header under ``STATE_KEY``. One file keeps the atomic rename atomic: a crash can
never leave tensors of one epoch beside the state of another.

Reading parses a length-prefixed JSON header and raw tensor bytes; nothing is ever unpickled.
Checkpoints of the old pickle format (``checkpoint.pt`` / ``best.pt``) are refused by name, without
being opened.

Nested state (an optimizer's ``state_dict``) is flattened by ``to_plain``: every tensor becomes
``{"__tensor__": key}`` with the tensor stored under ``key``, a dict with non-string keys (the
optimizer's per-parameter state is keyed by int) becomes ``{"__items__": [[key, value], ...]}``,
and tuples become lists. ``from_plain`` reverses it.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stream.atomic import atomic_path
from stream.errors import UserError

__all__ = [
    "STATE_KEY",
    "LEGACY_NAMES",
    "save_checkpoint",
    "load_checkpoint",
    "refuse_legacy_checkpoints",
    "to_plain",
    "from_plain",
    "rng_state",
    "set_rng_state",
]

STATE_KEY = "swim_stream_state"  # safetensors metadata key that holds the JSON state
LEGACY_NAMES = ("checkpoint.pt", "best.pt")  # pickle checkpoints written before format 2: never opened
_TENSOR = "__tensor__"
_ITEMS = "__items__"


def to_plain(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """A JSON-able copy of ``obj``; its tensors move into ``tensors`` under keys starting with ``prefix``."""
    if isinstance(obj, torch.Tensor):
        key = f"{prefix}"
        if key in tensors:
            raise ValueError(f"tensor key {key!r} used twice")
        tensors[key] = obj.detach().to("cpu").contiguous().clone()  # own storage: safetensors refuses shared memory
        return {_TENSOR: key}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj) and _TENSOR not in obj and _ITEMS not in obj:
            return {k: to_plain(v, f"{prefix}/{k}", tensors) for k, v in obj.items()}
        return {_ITEMS: [[k, to_plain(v, f"{prefix}/{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v, f"{prefix}/{i}", tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return obj.item()
    raise TypeError(f"{prefix}: cannot store a {type(obj).__name__} in a checkpoint")


def from_plain(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The nested state ``to_plain`` flattened, with its tensors put back."""
    if isinstance(obj, dict):
        if set(obj) == {_TENSOR}:
            try:
                return tensors[obj[_TENSOR]]
            except KeyError:
                raise UserError(f"checkpoint names a tensor {obj[_TENSOR]!r} that it does not hold; delete it to start over") from None
        if set(obj) == {_ITEMS}:
            return {k: from_plain(v, tensors) for k, v in obj[_ITEMS]}
        return {k: from_plain(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [from_plain(v, tensors) for v in obj]
    return obj


def save_checkpoint(path: Path, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
    """Write tensors + JSON state to ``path`` atomically (temporary file in the same folder, then rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    text = json.dumps(state, allow_nan=True)
    # safetensors recreates the file it writes (mode 0600): set what any new file would get
    with atomic_path(path, mode=0o666 & ~_umask()) as tmp:
        save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(tmp), metadata={STATE_KEY: text})


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors on the CPU, JSON state) of a checkpoint; a file that is not ours is one UserError line."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        state = json.loads(meta[STATE_KEY])
        if not isinstance(state, dict):
            raise ValueError("state is not a JSON object")
    except OSError as exc:
        raise UserError(f"{path}: cannot read the checkpoint ({exc.strerror or exc}); delete it to start over") from None
    except Exception as exc:  # not safetensors, no state, bad JSON: the file is not a checkpoint of ours
        raise UserError(f"{path}: not a swim-stream checkpoint ({exc.__class__.__name__}); delete it to start over") from None
    return tensors, state


def refuse_legacy_checkpoints(run_dir: Path) -> None:
    """Pickle checkpoints of earlier versions are refused unopened: unpickling a handed file runs its code."""
    for name in LEGACY_NAMES:
        old = Path(run_dir) / name
        if old.exists():
            raise UserError(f"{old}: an old pickle checkpoint, which is never loaded (it could run code); "
                            "retrain, or delete it (and its folder's runs) to start over")  # fmt: skip


# RNG states as plain lists: JSON, and the same state on every platform


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) generator states as JSON-able lists."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [name, [int(k) for k in keys], int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    try:
        version, internal, gauss = state["python"]
        random.setstate((int(version), tuple(int(v) for v in internal), gauss))
        name, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((str(name), np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss), float(cached)))
        torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise UserError(f"checkpoint: random-generator state is damaged ({exc.__class__.__name__}); delete it to start over") from None
