"""A model on disk: a directory holding ``model.safetensors`` and its ``card.json``.

The card travels with the weights and the runtime reads everything from it (classes, input
size, fps, the TV-L1 parameters the flow stream was trained with, the fusion weight): live flow
computed with other parameters than training flow silently degrades the flow stream, so the
parameters are part of the model, not of the command line.

Weights are safetensors (no pickle, so a model file from elsewhere cannot run code) and the
card records their sha256; loading refuses a truncated, corrupted or swapped weights file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from stream.atomic import atomic_path, atomic_write
from stream.errors import UserError
from stream.model import DROPOUT_KEEP_PROB, FusedI3D

__all__ = [
    "ModelCard",
    "ModelFileError",
    "save_model",
    "load_card",
    "load_model",
    "load_weights",
    "verify_weights",
    "sha256_file",
    "CARD_FILE",
    "WEIGHTS_FILE",
    "CARD_FORMAT_VERSION",
]

log = logging.getLogger(__name__)

CARD_FILE = "card.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FORMAT_VERSION = 1
_HASH_CHUNK = 1 << 20
MODEL_KINDS = ("i3d", "motion")  # what the engine factory can build from a card


class ModelFileError(UserError):
    """A model directory that cannot be used as it is (missing, corrupt, inconsistent)."""


@dataclass
class ModelCard:
    """What the runtime must know to use the weights correctly. Serialised as ``card.json``."""

    name: str  # short id, also the directory name of a shipped model
    view: str  # "side" or "top": which camera placement the model was trained for
    classes: list[str]  # class names in logit order
    immobile_classes: list[str]  # which classes count as immobility for the lab read-outs
    input_size_px: int  # square crop side the model sees (224 in the paper; smaller for CPU)
    fps: float  # frame rate of the training clips; live video is resampled to it
    flow: dict[str, Any]  # dataclasses.asdict(stream.flow.FlowConfig) used for training flow
    flow_weight: float  # fusion: w * p_flow + (1 - w) * p_rgb
    init: str = "random"  # how the weights were initialised before training (checkpoint, inflated 2D, ...)
    clip_frames: int = 16  # frames per clip (8 previous + centre + 7 next)
    dropout_keep_prob: float = DROPOUT_KEEP_PROB
    training: dict[str, Any] = field(default_factory=dict)  # data, epochs, lr, ... (say if synthetic)
    metrics: dict[str, Any] = field(default_factory=dict)  # measured cross-validation figures
    weights_file: str = WEIGHTS_FILE
    weights_sha256: str = ""
    weights_dtype: str = "float32"  # storage dtype; loading always returns float32
    format_version: int = CARD_FORMAT_VERSION
    created_utc: str = ""
    kind: str = "i3d"  # "i3d" (fused two-stream network) or "motion" (flow threshold baseline, stream/motion.py)
    decisions: dict[str, Any] = field(default_factory=dict)  # stream-run defaults fitted with the model (min_bout_s)

    def validate(self, where: str = "card") -> None:
        problems = []
        if not self.classes or len(set(self.classes)) != len(self.classes):
            problems.append("classes must be a non-empty list of distinct names")
        unknown = [c for c in self.immobile_classes if c not in self.classes]
        if unknown:
            problems.append(f"immobile_classes {unknown} are not among classes {self.classes}")
        if self.input_size_px < 32:
            problems.append(f"input_size_px {self.input_size_px} < 32 (I3D downsamples by 32)")
        if self.fps <= 0:
            problems.append(f"fps must be > 0, got {self.fps}")
        if not 0.0 <= self.flow_weight <= 1.0:
            problems.append(f"flow_weight must be in [0, 1], got {self.flow_weight}")
        if self.kind not in MODEL_KINDS:
            problems.append(f"kind must be one of {', '.join(MODEL_KINDS)}, got {self.kind!r}")
        if self.view not in ("side", "top"):
            problems.append(f"view must be 'side' or 'top', got {self.view!r}")
        if problems:
            raise ModelFileError(f"{where}: " + "; ".join(problems))

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "card") -> "ModelCard":
        names = {f.name for f in dataclasses.fields(cls)}
        required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        missing = sorted(required - data.keys())
        if missing:
            raise ModelFileError(f"{where}: missing field(s) {', '.join(missing)}")
        if data.get("format_version", CARD_FORMAT_VERSION) > CARD_FORMAT_VERSION:
            raise ModelFileError(f"{where}: card format {data['format_version']} is newer than this swim-stream understands ({CARD_FORMAT_VERSION}); upgrade swim-stream")
        extra = sorted(data.keys() - names)
        if extra:
            log.warning("%s: ignoring unknown card field(s) %s", where, ", ".join(extra))
        return cls(**{k: v for k, v in data.items() if k in names})


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


MODEL_FILE_MODE = 0o644  # a service user must read a model root installed (mkstemp makes 0600)


def _atomic_write_text(path: Path, text: str) -> None:
    # 0644: mkstemp makes 0600; a service user must be able to read a model root installed
    atomic_write(path, text, mode=MODEL_FILE_MODE)


def save_model(model: FusedI3D, card: ModelCard, directory: str | Path, *, half: bool = False) -> Path:
    """Write weights and card; fills ``card.weights_sha256`` (and dtype, creation time).

    ``half=True`` stores float16 weights (half the size, for models shipped in git); the
    rounding changes probabilities by ~1e-3, far below what decides a label.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if len(card.classes) != model.num_classes:
        raise ValueError(f"card has {len(card.classes)} classes, model has {model.num_classes}")
    card.validate(str(directory / CARD_FILE))
    dtype = torch.float16 if half else torch.float32
    state = {k: (v.detach().to("cpu", dtype) if v.is_floating_point() else v.detach().cpu()).contiguous() for k, v in model.state_dict().items()}
    weights = directory / card.weights_file
    with atomic_path(weights, mode=MODEL_FILE_MODE) as tmp:  # readable by a service user, whatever the umask
        save_file(state, str(tmp), metadata={"format": "pt", "swim_stream_card_format": str(CARD_FORMAT_VERSION)})
    card.weights_sha256 = sha256_file(weights)
    card.weights_dtype = "float16" if half else "float32"
    card.flow_weight = float(model.flow_weight)
    card.created_utc = card.created_utc or datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    _atomic_write_text(directory / CARD_FILE, card.to_json())
    log.info("saved model %s to %s (%.1f MB)", card.name, directory, weights.stat().st_size / 1e6)
    return directory


def load_card(directory: str | Path) -> ModelCard:
    directory = Path(directory)
    if not directory.is_dir():
        raise ModelFileError(f"{directory}: model directory not found (expected a folder with {CARD_FILE} and {WEIGHTS_FILE})")
    path = directory / CARD_FILE
    if not path.is_file():
        raise ModelFileError(f"{path}: model card not found; a model directory holds {CARD_FILE} and {WEIGHTS_FILE}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{path}: not valid JSON ({exc}); restore the card from the model's source") from exc
    if not isinstance(data, dict):
        raise ModelFileError(f"{path}: expected a JSON object")
    card = ModelCard.from_dict(data, str(path))
    card.validate(str(path))
    return card


def verify_weights(directory: str | Path, card: ModelCard) -> Path:
    """Check the weights file against the card's sha256 without loading it.

    Engines that run a derived graph (ONNX, TensorRT) still call this: a cached graph must not
    hide that the model it came from is now truncated, corrupt or swapped.
    """
    directory = Path(directory)
    weights = directory / card.weights_file
    if not weights.is_file():
        raise ModelFileError(f"{weights}: weights file not found (card {directory / CARD_FILE} refers to it)")
    if not card.weights_sha256:
        log.warning("%s: card has no weights_sha256; weights not verified", directory / CARD_FILE)
        return weights
    actual = sha256_file(weights)
    if actual != card.weights_sha256:
        raise ModelFileError(
            f"{weights}: checksum mismatch (sha256 {actual[:12]}... but the card says {card.weights_sha256[:12]}...); "
            "the file is truncated or corrupt, or belongs to another card: copy the model directory again"
        )
    return weights


def load_weights(directory: str | Path, card: ModelCard | None = None, *, verify: bool = True) -> dict[str, torch.Tensor]:
    """The float32 state dict of a model directory, after checking its sha256 against the card."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    card = card or load_card(directory)
    weights = directory / card.weights_file
    if verify:
        verify_weights(directory, card)
    elif not weights.is_file():
        raise ModelFileError(f"{weights}: weights file not found (card {directory / CARD_FILE} refers to it)")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFileError(f"{weights}: cannot read safetensors ({exc}); copy the model directory again") from exc
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def load_model(directory: str | Path, *, device: str | torch.device = "cpu", verify: bool = True) -> tuple[FusedI3D, ModelCard]:
    """Rebuild the ``FusedI3D`` described by the card, load and check its weights, eval mode."""
    directory = Path(directory)
    card = load_card(directory)
    state = load_weights(directory, card, verify=verify)
    n_weights = {k: state[k].shape[0] for k in ("rgb.logits.conv3d.weight", "flow.logits.conv3d.weight") if k in state}
    if len(n_weights) != 2:
        raise ModelFileError(f"{directory / card.weights_file}: not a fused I3D (no rgb./flow. logits weights)")
    if set(n_weights.values()) != {len(card.classes)}:
        raise ModelFileError(
            f"{directory / CARD_FILE}: card lists {len(card.classes)} classes {card.classes} but the weights have "
            f"{sorted(set(n_weights.values()))} outputs; the card does not belong to these weights"
        )
    model = FusedI3D(num_classes=len(card.classes), flow_weight=card.flow_weight, dropout_keep_prob=card.dropout_keep_prob)
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise ModelFileError(
            f"{directory / card.weights_file}: weights do not match a fused I3D "
            f"(missing {missing[:4]}, unexpected {result.unexpected_keys[:4]})"
        )
    return model.to(device).eval(), card
