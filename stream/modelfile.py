"""A model on disk: a directory holding ``model.safetensors`` and its ``card.json``.

The card travels with the weights and the runtime reads everything from it (classes, input
size, fps, the TV-L1 parameters the flow stream was trained with, the fusion weight): live flow
computed with other parameters than training flow silently degrades the flow stream, so the
parameters are part of the model, not of the command line.

Weights are safetensors (no pickle, so a model file from elsewhere cannot run code) and the
card records their sha256; loading refuses a truncated, corrupted or swapped weights file, a
tensor stored in another dtype than the card says (a relabelled header reinterprets the bytes)
and NaN or infinite weights. A card is read strictly, in one line per refusal: every TV-L1 key,
known ``decisions`` in range, fps in a sane range, and a size and nesting cap checked before
(and while) it is parsed.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import math
import numbers
import os
import re
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from stream.atomic import atomic_path, atomic_write
from stream.errors import UserError
from stream.model import DROPOUT_KEEP_PROB, FusedI3D
from stream.preprocess import CLIP_FRAMES

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
    "VIEWS",
    "BUNDLED_MODELS_DIR",
    "PREFERRED_BUNDLED",
    "bundled_model_dir",
    "bundled_models",
    "flow_config_problems",
    "decisions_problems",
    "read_card_json",
    "stored_dtype_problem",
    "nonfinite_problem",
    "MIN_CARD_FPS",
    "MAX_CARD_FPS",
    "MAX_CARD_BYTES",
    "MAX_CARD_DEPTH",
    "TRAINED_FOR",
    "TRAINED_FOR_CLIP",
    "TRAINED_FOR_STREAMING",
    "CROPS",
    "CROP_ROI",
    "CROP_MOUSE",
    "require_live_crop",
]

log = logging.getLogger(__name__)

CARD_FILE = "card.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FORMAT_VERSION = 1
_HASH_CHUNK = 1 << 20
MODEL_KINDS = ("i3d", "motion")  # what the engine factory can build from a card
# What an I3D card's weights compute well (card ``trained_for``): "clip", the 16-frame clip model every
# engine runs; "streaming", the causal function of the streaming engine (stream/causal_i3d.py,
# export.streaming_finetune), which only ``--engine streaming`` computes (README, "Streaming engine").
TRAINED_FOR_CLIP = "clip"
TRAINED_FOR_STREAMING = "streaming"
TRAINED_FOR = (TRAINED_FOR_CLIP, TRAINED_FOR_STREAMING)
# What the model's input shows (card ``crop``): "roi", the whole arena resized to the input size (older
# cards, no field); "mouse", the input-size window around the mouse cut from the arena at twice the
# input size (export.dataset offline, stream.clip_source live; the step-wise engines refuse it).
CROP_ROI = "roi"
CROP_MOUSE = "mouse"
CROPS = (CROP_ROI, CROP_MOUSE)
VIEWS = ("side", "top")  # camera placements: side = swim/struggle/float, top = mobile/immobile
WEIGHTS_DTYPES = {"i3d": ("float32", "float16"), "motion": ("json",)}  # per kind: what save_model / save_motion_model write
MIN_INPUT_SIZE_PX = 32  # below 32 px the stride-32 I3D body has nothing left to pool
# A card's frame rate: live video is resampled to it, so a typo (1e-9, 15000) would silently feed
# the model clips of another time scale. 16 frames at 1 fps already span 16 s (no longer a
# behaviour clip); 240 fps is the fastest camera rodent-behaviour rigs use (a clip then spans 67 ms).
MIN_CARD_FPS = 1.0
MAX_CARD_FPS = 240.0
# A card is a few kB (the bundled ones are 3-22 kB): 1 MiB is generous, and it is checked before
# the file is read, since parsing a 1 GB "card" took 3.4 GB of memory.
MAX_CARD_BYTES = 1 << 20
# JSON nesting a card may have: the bundled cards nest 7 deep (training.config...); deeper is not
# a card, and thousands of levels made the parser (or a later copy) raise RecursionError.
MAX_CARD_DEPTH = 32
# The stream-run defaults a card may carry in ``decisions``, with their accepted range: an unknown
# key (a typo) would silently fall back to stream-run's default, so it is an error.
# min_bout_s: no published FST scoring uses a minimum bout above a few seconds; 60 s catches a
# value given in frames or milliseconds.
MAX_CARD_MIN_BOUT_S = 60.0
CARD_DECISION_RANGES = {"min_bout_s": (0.0, MAX_CARD_MIN_BOUT_S)}
# safetensors dtype of each stored tensor, per card ``weights_dtype``; BatchNorm's batch counter
# is stored as int64 whatever the precision. A tensor of another dtype was relabelled or belongs
# to another file: loading would convert its bytes into numbers nobody trained.
_STORED_DTYPES = {"float32": torch.float32, "float16": torch.float16}
_COUNTER_SUFFIX = "num_batches_tracked"
_SHA256 = re.compile(r"[0-9a-f]{64}")


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
    kind: str = "i3d"  # "i3d" (fused two-stream network) or "motion" (flow threshold baseline, stream/engine/motion.py)
    decisions: dict[str, Any] = field(default_factory=dict)  # stream-run defaults fitted with the model (min_bout_s)
    # issue 24.12: brightness, contrast, flow magnitude of the training clips ({p01, p50, p99} each,
    # stream.input_check.input_stats_summary); a trial far outside is warned about. Optional: {} in older cards
    input_stats: dict[str, Any] = field(default_factory=dict)
    # issue 22: "clip" (default, older cards) or "streaming": see TRAINED_FOR
    trained_for: str = TRAINED_FOR_CLIP
    crop: str = CROP_ROI  # issue 21: the input crop the model was trained on, see CROPS

    def validate(self, where: str = "card") -> None:
        """Types, ranges, classes and the flow settings, all at once: one line naming every bad field.

        Run when a card is read (``load_card``) and before one is written (``save_model``), so a bad
        card stops a start before any weights, engine or video is opened.
        """
        problems = _type_problems(self, _card_hints())
        if not problems:  # range checks assume the types are right
            problems = self._range_problems()
        if problems:
            raise ModelFileError(f"{where}: " + "; ".join(problems))

    def _range_problems(self) -> list[str]:
        problems = []
        if not self.name.strip():
            problems.append("name must not be empty")
        if not self.classes or len(set(self.classes)) != len(self.classes) or not all(c.strip() for c in self.classes):
            problems.append("classes must be a non-empty list of distinct, non-empty names")
        unknown = [c for c in self.immobile_classes if c not in self.classes]
        if unknown:
            problems.append(f"immobile_classes {unknown} are not among classes {self.classes}")
        elif len(set(self.immobile_classes)) != len(self.immobile_classes):
            problems.append(f"immobile_classes {self.immobile_classes} lists a class twice")
        if self.input_size_px < MIN_INPUT_SIZE_PX:
            problems.append(f"input_size_px {self.input_size_px} < {MIN_INPUT_SIZE_PX} (I3D downsamples by 32)")
        if not MIN_CARD_FPS <= self.fps <= MAX_CARD_FPS:
            problems.append(f"fps must be in [{MIN_CARD_FPS:g}, {MAX_CARD_FPS:g}], got {self.fps:g}")
        if not 0.0 <= self.flow_weight <= 1.0:
            problems.append(f"flow_weight must be in [0, 1], got {self.flow_weight}")
        if not 0.0 < self.dropout_keep_prob <= 1.0:
            problems.append(f"dropout_keep_prob must be in (0, 1], got {self.dropout_keep_prob}")
        if self.clip_frames != CLIP_FRAMES:
            problems.append(f"clip_frames must be {CLIP_FRAMES} (8 previous + centre + 7 next), got {self.clip_frames}")
        if self.view not in VIEWS:
            problems.append(f"view must be one of {', '.join(repr(v) for v in VIEWS)}, got {self.view!r}")
        if Path(self.weights_file).name != self.weights_file or self.weights_file in ("", ".", ".."):
            problems.append(f"weights_file must be a file name inside the model directory, got {self.weights_file!r}")
        if self.weights_sha256 and not _SHA256.fullmatch(self.weights_sha256):
            problems.append(f"weights_sha256 must be 64 lowercase hex digits, got {self.weights_sha256[:20]!r}")
        dtypes = WEIGHTS_DTYPES.get(self.kind, ())
        if dtypes and self.weights_dtype not in dtypes:
            problems.append(f"weights_dtype of a {self.kind} model must be one of {', '.join(dtypes)}, got {self.weights_dtype!r}")
        from stream.input_check import input_stats_problems

        problems += input_stats_problems(self.input_stats)
        if not 1 <= self.format_version <= CARD_FORMAT_VERSION:
            problems.append(f"format_version {self.format_version} is not one this swim-stream understands (1..{CARD_FORMAT_VERSION}); upgrade swim-stream")
        if self.kind not in MODEL_KINDS:
            problems.append(f"kind must be one of {', '.join(MODEL_KINDS)}, got {self.kind!r}")
        if self.crop not in CROPS:
            problems.append(f"crop must be one of {', '.join(CROPS)}, got {self.crop!r}")
        if self.trained_for not in TRAINED_FOR:
            problems.append(f"trained_for must be one of {', '.join(TRAINED_FOR)}, got {self.trained_for!r}")
        elif self.trained_for == TRAINED_FOR_STREAMING and self.kind != "i3d":
            problems.append(f"trained_for {TRAINED_FOR_STREAMING!r} is for i3d models, not {self.kind!r}")
        problems.extend(flow_config_problems(self.flow))
        problems.extend(decisions_problems(self.decisions))
        return problems

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "card") -> "ModelCard":
        names = {f.name for f in dataclasses.fields(cls)}
        required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        missing = sorted(required - data.keys())
        if missing:
            raise ModelFileError(f"{where}: missing field(s) {', '.join(missing)}")
        version = data.get("format_version", CARD_FORMAT_VERSION)
        if isinstance(version, int) and not isinstance(version, bool) and version > CARD_FORMAT_VERSION:
            raise ModelFileError(f"{where}: card format {data['format_version']} is newer than this swim-stream understands ({CARD_FORMAT_VERSION}); upgrade swim-stream")
        extra = sorted(data.keys() - names)
        if extra:
            log.warning("%s: ignoring unknown card field(s) %s", where, ", ".join(extra))
        known = {k: v for k, v in data.items() if k in names}
        problems = _type_problems(known, _card_hints())
        if problems:  # before the constructor: a string where a number belongs must not get further
            raise ModelFileError(f"{where}: " + "; ".join(problems))
        hints = _card_hints()
        known = {k: float(v) if hints[k] is float else v for k, v in known.items()}  # JSON 15 -> 15.0
        if isinstance(known.get("flow"), dict):  # a card written before a TV-L1 key existed computes its flow without it
            from stream.flow import FLOW_KEYS_ADDED_LATER

            known["flow"] = {**FLOW_KEYS_ADDED_LATER, **known["flow"]}
        return cls(**known)


def require_live_crop(card: ModelCard, model_dir: Path | str, *, stepwise: bool) -> None:
    """Refuse, in one line, a model whose input crop the engine cannot be fed. The clip-wise engines get
    either crop (stream.clip_source); a step-wise engine (``--engine streaming``) keeps per-layer state
    over the image, which a mouse window that moves from clip to clip would tear apart."""
    if card.crop != CROP_ROI and stepwise:
        raise ModelFileError(f"{model_dir}: trained on {card.crop!r} crops (card crop {card.crop!r}), which a step-wise "
                             f"engine cannot follow (its per-layer state is spatial, the window moves from clip to clip); "
                             f"use a clip-wise engine (--engine auto, torch, onnxruntime or tensorrt)")


@functools.cache
def _card_hints() -> dict[str, Any]:
    return typing.get_type_hints(ModelCard)


_JSON_TYPES = ((bool, "true/false"), (int, "integer"), (float, "number"), (str, "string"), (list, "array"), (dict, "object"))


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return next((name for kind, name in _JSON_TYPES if isinstance(value, kind)), type(value).__name__)


def _expected(hint: Any) -> tuple[Callable[[Any], bool], str]:
    """A check and a description for a field's type hint (the card and FlowConfig use these few)."""
    if hint is bool:
        return (lambda v: isinstance(v, bool)), "true or false"
    if hint is int:
        return (lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool)), "an integer"
    if hint is float:
        return (lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)), "a finite number"
    if hint is str:
        return (lambda v: isinstance(v, str)), "a string"
    if typing.get_origin(hint) is list:
        return (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v)), "a list of strings"
    if typing.get_origin(hint) is dict:
        return (lambda v: isinstance(v, dict) and all(isinstance(k, str) for k in v)), "an object"
    return (lambda v: True), "anything"


def _type_problems(values: Any, hints: dict[str, Any], prefix: str = "") -> list[str]:
    """One phrase per field of ``values`` (a dict or dataclass) whose JSON type does not fit its hint."""
    items = values.items() if isinstance(values, dict) else ((f.name, getattr(values, f.name)) for f in dataclasses.fields(values))
    problems = []
    for name, value in items:
        if name not in hints:
            continue
        check, wanted = _expected(hints[name])
        if not check(value):
            shown = json.dumps(value) if _json_type(value) in ("null", "true/false", "integer", "number", "string") else _json_type(value)
            kind = _json_type(value)
            problems.append(f"{prefix}{name} must be {wanted}, got {shown[:40]}" + ("" if kind in ("null", "true/false") else f" ({kind})"))
    return problems


def flow_config_problems(flow: dict[str, Any]) -> list[str]:
    """Why the card's ``flow`` is not a valid ``stream.flow.FlowConfig`` (empty when it is).

    Live flow computed with other TV-L1 settings than training flow degrades the flow stream, so
    unknown keys are errors (a typo would silently fall back to a default), not warnings, and so
    are missing ones: ``"flow": {}`` would run OpenCV's defaults, which the model may never have
    seen. ``save_model`` writes every key (``dataclasses.asdict(FlowConfig)``).
    """
    from stream.flow import FlowConfig  # torch + OpenCV: imported by everything that loads a model anyway

    hints = typing.get_type_hints(FlowConfig)
    unknown = sorted(flow.keys() - hints.keys())
    if unknown:
        return [f"flow has unknown key(s) {', '.join(unknown)} (known: {', '.join(hints)})"]
    from stream.flow import FLOW_KEYS_ADDED_LATER

    missing = [k for k in hints if k not in flow and k not in FLOW_KEYS_ADDED_LATER]
    if missing:
        return [f"flow is missing TV-L1 key(s) {', '.join(missing)} (the settings the model was trained with; "
                "a default would silently compute other flow)"]
    problems = _type_problems(flow, hints, prefix="flow.")
    if problems:
        return problems
    try:
        FlowConfig(**flow)
    except ValueError as exc:
        return ["flow: " + str(exc).removeprefix("FlowConfig: ")]
    return []


def decisions_problems(decisions: dict[str, Any]) -> list[str]:
    """Why the card's ``decisions`` (stream-run defaults fitted with the model) cannot be used."""
    unknown = sorted(decisions.keys() - CARD_DECISION_RANGES.keys())
    if unknown:
        return [f"decisions has unknown key(s) {', '.join(unknown)} (known: {', '.join(CARD_DECISION_RANGES)})"]
    problems = _type_problems(decisions, {k: float for k in CARD_DECISION_RANGES}, prefix="decisions.")
    for key, (low, high) in CARD_DECISION_RANGES.items():
        if not problems and key in decisions and not low <= decisions[key] <= high:
            problems.append(f"decisions.{key} must be in [{low:g}, {high:g}], got {decisions[key]:g}")
    return problems


def _json_depth(value: Any) -> int:
    """Nesting depth of parsed JSON, without recursion (a hostile file may nest deeper than the stack)."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        item, depth = todo.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            if depth <= MAX_CARD_DEPTH:  # past the limit the answer is already known
                todo.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def read_card_json(path: Path) -> Any:
    """The parsed JSON of a card file, refused in one line when too large, not JSON or too deeply nested.

    The size is checked before anything is read (a 1 GB file took 3.4 GB of memory to parse).
    """
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            data = fh.read(MAX_CARD_BYTES + 1) if size <= MAX_CARD_BYTES else b""
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot read the model card ({exc.strerror or exc})") from None
    if size > MAX_CARD_BYTES or len(data) > MAX_CARD_BYTES:
        raise ModelFileError(f"{path}: {max(size, len(data)) / 2**20:.1f} MiB is not a model card (at most "
                             f"{MAX_CARD_BYTES // 2**20} MiB); restore the card from the model's source")
    too_deep = ModelFileError(f"{path}: JSON nested deeper than {MAX_CARD_DEPTH} levels is not a model card; "
                              "restore the card from the model's source")
    try:
        parsed = json.loads(data.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{path}: not valid JSON ({exc}); restore the card from the model's source") from None
    except RecursionError:  # nested deeper than the parser goes
        raise too_deep from None
    if _json_depth(parsed) > MAX_CARD_DEPTH:  # parsed, but copies and asdict() recurse further later
        raise too_deep
    return parsed


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


MODEL_FILE_MODE = 0o644  # a service user must read a model root installed (mkstemp makes 0600)


def write_model_text(path: Path, text: str) -> None:
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
    write_model_text(directory / CARD_FILE, card.to_json())
    log.info("saved model %s to %s (%.1f MB)", card.name, directory, weights.stat().st_size / 1e6)
    return directory


def load_card(directory: str | Path) -> ModelCard:
    directory = Path(directory)
    if not directory.is_dir():
        raise ModelFileError(f"{directory}: model directory not found (expected a folder with {CARD_FILE} and {WEIGHTS_FILE})")
    path = directory / CARD_FILE
    if not path.is_file():
        raise ModelFileError(f"{path}: model card not found; a model directory holds {CARD_FILE} and {WEIGHTS_FILE}")
    data = read_card_json(path)
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
    stored = _STORED_DTYPES.get(card.weights_dtype)
    if stored is not None:
        problem = stored_dtype_problem(state, stored)
        if problem:
            raise ModelFileError(f"{weights}: {problem}, but the card says {card.weights_dtype} weights "
                                 "(relabelled, or from another file); copy the model directory again")
    problem = nonfinite_problem(state)
    if problem:
        raise ModelFileError(f"{weights}: {problem}; the model is broken (a diverged training?): retrain it or copy it again")
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def stored_dtype_problem(state: dict[str, torch.Tensor], floating: torch.dtype) -> str | None:
    """Which tensor is not stored as ``floating`` (BatchNorm's counter: int64), or None.

    Shared with training checkpoints (``export.train``): a header whose dtype was relabelled
    reinterprets the bytes, and ``load_state_dict`` would copy the result without a word.
    """
    for key, value in state.items():
        want = torch.int64 if key.endswith(_COUNTER_SUFFIX) else floating
        if value.dtype != want:
            return f"tensor {key} is stored as {str(value.dtype).removeprefix('torch.')}, not {str(want).removeprefix('torch.')}"
    return None


def nonfinite_problem(state: dict[str, torch.Tensor]) -> str | None:
    """Which floating-point tensors hold NaN or infinity (a diverged model), or None."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        return f"{len(bad)} tensor(s) hold NaN or infinite values (first: {bad[0]})"
    return None


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


# ------------------------------------------------------------------------------- bundled models

BUNDLED_MODELS_DIR = Path(__file__).resolve().parents[1] / "trained_models"  # shipped in the repository
# the bundled model preferred for each camera view when several have it (stream-run --view)
PREFERRED_BUNDLED = {"side": "fst-side-64", "top": "fst-top-mouse"}


def bundled_models(root: Path = BUNDLED_MODELS_DIR) -> dict[str, str]:
    """``{model directory name: view}`` of every bundled model, read from each ``card.json``.

    Only the ``view`` is read here; the chosen model's whole card is checked when it is loaded,
    so one broken card elsewhere does not stop a start with a good one (it is logged).
    """
    found = {}
    for card_path in sorted(root.glob(f"*/{CARD_FILE}")):
        try:
            view = read_card_json(card_path).get("view")
        except (ModelFileError, AttributeError) as exc:
            log.warning("%s: skipped while looking for bundled models (%s)", card_path, exc)
            continue
        if isinstance(view, str):
            found[card_path.parent.name] = view
    return found


def bundled_model_dir(view: str, root: Path = BUNDLED_MODELS_DIR) -> Path:
    """The bundled model for camera ``view``: ``PREFERRED_BUNDLED[view]`` if its card says that
    view, else the only (or alphabetically first) bundled model whose card does."""
    if view not in VIEWS:
        raise UserError(f"--view {view!r}: choose one of {', '.join(VIEWS)}")
    models = bundled_models(root)
    matching = sorted(name for name, v in models.items() if v == view)
    if not matching:
        have = ", ".join(f"{name} ({v})" for name, v in sorted(models.items())) or f"none in {root}"
        raise UserError(f"--view {view}: no bundled model for the {view} view (bundled: {have}); pass --model DIR")
    preferred = PREFERRED_BUNDLED.get(view)
    name = preferred if preferred in matching else matching[0]
    if len(matching) > 1:
        log.info("--view %s: bundled models %s; using %s", view, ", ".join(matching), name)
    return root / name
