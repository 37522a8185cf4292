"""Checkpoints and logs of ``export-train``: what a run writes after every epoch, and reads back on ``--resume``.

Split out of ``export/train.py`` (issue 23); ``export.train`` re-exports every name.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from export import checkpoint as ckpt_io
from stream.atomic import atomic_write
from stream.errors import UserError
from stream.modelfile import nonfinite_problem

if TYPE_CHECKING:
    from export.train_config import TrainConfig

__all__ = ["BEST_NAME", "CHECKPOINT_FORMAT", "CHECKPOINT_NAME", "LOG_CSV_NAME", "LOG_JSONL_NAME", "TrainResult", "load_checkpoint"]


CHECKPOINT_NAME = "checkpoint.safetensors"  # resumable state (tensors + JSON, never a pickle), rewritten after every epoch
BEST_NAME = "best.safetensors"  # weights of the epoch with the lowest validation loss
LOG_JSONL_NAME = "log.jsonl"  # one JSON object per finished epoch
LOG_CSV_NAME = "log.csv"  # the same rows as CSV, for a spreadsheet
CHECKPOINT_FORMAT = 2  # bump when the checkpoint state changes incompatibly (1 = the old pickle checkpoint.pt)


@dataclass
class TrainResult:
    """What a run produced: per-epoch history (also in log.jsonl) and which epoch's weights were kept."""

    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0  # 1-based epoch whose weights the model holds at the end
    best_val_loss: float | None = None  # None when there was no validation set
    stopped_early: bool = False
    epochs_run: int = 0


def _prefixed(prefix: str, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}/{k}": v for k, v in state_dict.items()}


def _unprefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + "/")}


def _save_checkpoint(path: Path, model, optimizer, scheduler, scaler, config: TrainConfig, num_classes: int, epoch: int, since_best: int, result: TrainResult, rngs: list[dict[str, Any]]) -> None:
    tensors = _prefixed("model", model.state_dict())
    state = {
        "format": CHECKPOINT_FORMAT,
        "config": asdict(config),
        "num_classes": num_classes,
        "epoch": epoch,
        "optimizer": ckpt_io.to_plain(optimizer.state_dict(), "optimizer", tensors),
        "scheduler": ckpt_io.to_plain(scheduler.state_dict(), "scheduler", tensors),
        "scaler": ckpt_io.to_plain(scaler.state_dict(), "scaler", tensors),
        "rng": rngs,  # one entry per rank
        "since_best": since_best,
        "result": asdict(result),
    }
    ckpt_io.save_checkpoint(path, tensors, state)


def _load_state_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, state = ckpt_io.load_checkpoint(path)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path}: checkpoint format {state.get('format')} is not {CHECKPOINT_FORMAT}; delete it to start over")
    # optimizer state (momentum, Adam's moments and step) is floating point; load_state_dict would
    # cast a relabelled integer tensor without a word, and a NaN in it makes every weight NaN
    optimizer = {k: v for k, v in tensors.items() if k.startswith("optimizer/")}
    wrong = next((k for k, v in optimizer.items() if not v.is_floating_point()), None)
    problem = (f"tensor {wrong} is stored as {str(tensors[wrong].dtype).removeprefix('torch.')}, not floating point"
               if wrong else nonfinite_problem(optimizer))
    if problem:
        raise UserError(f"{path}: {problem}; delete it to start over")
    return tensors, state


def _check_model_state(path: Path, state: dict[str, torch.Tensor], model: torch.nn.Module) -> None:
    """A checkpoint's weights must have the model's own dtypes and shapes and be finite: a relabelled
    dtype is silently converted by ``load_state_dict``, and NaN weights train on to a NaN model."""
    own = model.state_dict()
    for key, value in state.items():
        want = own.get(key)
        if want is not None and (value.dtype != want.dtype or value.shape != want.shape):
            raise UserError(f"{path}: tensor model/{key} is stored as {str(value.dtype).removeprefix('torch.')} {list(value.shape)}, "
                            f"the model's is {str(want.dtype).removeprefix('torch.')} {list(want.shape)} "
                            "(relabelled, or another model's); delete it to start over")
    problem = nonfinite_problem(state)
    if problem:
        raise UserError(f"{path}: {problem}; the run it saved had diverged: delete it to start over")


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A training checkpoint as the nested state the loop saved (model state dict under ``"model"``)."""
    tensors, state = _load_state_file(path)
    out = {k: ckpt_io.from_plain(v, tensors) for k, v in state.items()}
    out["model"] = _unprefixed("model", tensors)
    return out


def _load_checkpoint(path: Path, config: TrainConfig) -> dict[str, Any]:
    ckpt = load_checkpoint(path)
    saved = dict(ckpt.get("config") or {})
    now = asdict(config)
    differ = [k for k in now if k not in ("device", "num_workers") and saved.get(k) != now[k]]
    if differ:
        raise UserError(f"{path}: checkpoint was made with different settings ({', '.join(differ)}); use the same settings or a new --out directory")
    return ckpt


def _write_logs(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """Rewrite both logs from the history so a resumed run never shows an epoch twice."""
    atomic_write(run_dir / LOG_JSONL_NAME, "".join(json.dumps(row) + "\n" for row in history))
    columns = list(dict.fromkeys(k for row in history for k in row))

    def write_csv(fh) -> None:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(history)

    atomic_write(run_dir / LOG_CSV_NAME, write_csv)
