"""``RunConfig``: everything one ``stream-run`` needs, typed, validated once, from flags or a TOML file.

Why: the run used to read the raw argparse namespace in a hundred places, and the offline tools
(``export-validate``, ``export-select``, ...) drove it by building argv strings. Now the parser (or
``RunConfig.from_toml``) makes one frozen tree here, every one-line ``UserError`` about a setting
is raised here, and ``stream.runner.Runner`` reads attributes.

A TOML file has one table per group, keys named as the fields below (``stream-run --config
rig.toml``; ``systemd/swim-stream.toml.example`` shows one)::

    [source]
    camera = 0
    [arenas]
    rois = ["0,0,320,480", "320,0,320,480"]
    [outputs]
    out = "/var/lib/swim-stream/cam0/run 1"   # a space is fine: no shell splits it

Flags given explicitly on the command line win over the file; everything else comes from the file,
then from the defaults. Relative paths in a file are taken relative to the file's folder (a
service's working directory is ``/``).
"""

from __future__ import annotations

import argparse
import dataclasses
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stream.capture import DEFAULT_GIVE_UP_S, DEFAULT_MAX_BACKOFF_S, DEFAULT_QUEUE_FRAMES
from stream.control import DEFAULT_CONTROL_ENDPOINT
from stream.decisions import BIN_S_DEFAULT, GAP_BRIDGE_S_DEFAULT, SMOOTHING_MODES
from stream.errors import UserError
from stream.outputs.metrics import DEFAULT_METRICS_PORT
from stream.outputs.publisher import DEFAULT_ENDPOINT as DEFAULT_ZMQ_ENDPOINT
from stream.trials import TRIAL_MODES

__all__ = ["ArenaConfig", "DecisionOptions", "ModelConfig", "OutputConfig", "RunConfig", "SourceConfig",
           "TrialOptions", "WebConfig", "given_dests", "SMOOTHING_DEFAULT", "SMOOTHING_WINDOW_DEFAULT",
           "TEST_DURATION_S_DEFAULT", "SCORING_WINDOW_S_DEFAULT", "METRICS_ADDR_DEFAULT", "CONFIG_VERSION"]

CONFIG_VERSION = 1  # the layout of RunConfig.to_json (in every summary's provenance); bump on a rename
SMOOTHING_DEFAULT = "average"  # issue 13: a centred 5-frame average (README: "Decision defaults")
SMOOTHING_WINDOW_DEFAULT = 5  # frames; removes frame flicker without assuming a calibrated model
TEST_DURATION_S_DEFAULT = 360.0  # the standard 6-minute forced swim test
SCORING_WINDOW_S_DEFAULT = 240.0  # scored over its last 4 minutes (Porsolt's convention)
ADAPT_CLIPS_DEFAULT = 64  # --adapt without a number: clips per video for its BatchNorm statistics (stream.adabn)
METRICS_ADDR_DEFAULT = "127.0.0.1"  # every port binds to loopback unless asked (stream.network)
MAX_PORT = 65535


@dataclass(frozen=True)
class SourceConfig:
    """Where frames come from: exactly one of camera, videos, url."""

    camera: int | None = None  # /dev/videoN
    videos: tuple[str, ...] = ()  # paths or globs, expanded by the runner
    url: str | None = None  # RTSP or HTTP(S)
    realtime: bool = False  # pace files at their own frame rate, like a camera
    max_frames: int | None = None  # stop after this many model-rate frames per source
    reconnect_max_backoff_s: float = DEFAULT_MAX_BACKOFF_S
    give_up_s: float = DEFAULT_GIVE_UP_S  # 0: never
    queue_frames: int = DEFAULT_QUEUE_FRAMES


@dataclass(frozen=True)
class ArenaConfig:
    rois: tuple[str, ...] = ()  # "x,y,w,h" per arena
    file: Path | None = None  # arena file (JSON/YAML); default: <video>.arenas.json, else the whole frame
    check: bool = False  # --check-arenas: draw them on the first frame and exit


@dataclass(frozen=True)
class ModelConfig:
    dir: Path | None = None  # None: the bundled model (of ``view``, if given)
    view: str | None = None  # "side" or "top"
    engine: str = "auto"
    device: str | None = None  # None: the best present
    flow_warm_start: bool = True
    stride: int = 1  # model on every stride-th frame
    max_stride: int | None = None  # live/paced sources: the adaptive stride's ceiling (None: one call a second)
    adapt_clips: int = 0  # --adapt: each source's own BatchNorm statistics from this many clips (stream.adabn, stream.live_adapt); 0: off


@dataclass(frozen=True)
class DecisionOptions:
    """The decision flags; ``stream.decisions.DecisionConfig`` is made from them and the model card."""

    smoothing: str = SMOOTHING_DEFAULT
    smoothing_window: int = SMOOTHING_WINDOW_DEFAULT  # frames
    min_bout_s: float | None = None  # None: the card's fitted value, else the runner's default
    test_duration_s: float = TEST_DURATION_S_DEFAULT
    scoring_window_s: float = SCORING_WINDOW_S_DEFAULT
    immobile_classes: tuple[str, ...] | None = None  # None: the card's
    bin_s: float = BIN_S_DEFAULT
    gap_bridge_s: float = GAP_BRIDGE_S_DEFAULT  # a shorter gap does not end a bout (0: every gap does)


@dataclass(frozen=True)
class TrialOptions:
    mode: str = "now"  # resolved: now, control, auto or schedule
    schedule: Path | None = None
    control: str | None = None  # resolved control endpoint; None: no control endpoint
    control_token_file: Path | None = None
    allow_remote_control: bool = False


@dataclass(frozen=True)
class OutputConfig:
    out: Path | None = None  # None: runs/<UTC time>
    zmq: str | None = DEFAULT_ZMQ_ENDPOINT  # None: no ZeroMQ
    metrics_port: int = DEFAULT_METRICS_PORT  # 0: no Prometheus endpoint
    metrics_addr: str = METRICS_ADDR_DEFAULT
    preview: Path | None = None
    resume: bool = False
    quiet: bool = False
    verbose: int = 0


@dataclass(frozen=True)
class WebConfig:
    addr: str | None = None  # None: no page
    token_file: Path | None = None


@dataclass(frozen=True)
class RunConfig:
    """One ``stream-run``: a tree of frozen groups; build it with ``from_args``, ``from_toml`` or ``make``."""

    source: SourceConfig = field(default_factory=SourceConfig)
    arenas: ArenaConfig = field(default_factory=ArenaConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    decisions: DecisionOptions = field(default_factory=DecisionOptions)
    trials: TrialOptions = field(default_factory=TrialOptions)
    outputs: OutputConfig = field(default_factory=OutputConfig)
    web: WebConfig = field(default_factory=WebConfig)

    # -- building ------------------------------------------------------------------------------
    @classmethod
    def make(cls, **groups: Mapping[str, Any]) -> RunConfig:
        """From plain values per group (``make(source={"videos": ["a.mp4"]}, model={"stride": 4})``),
        as the offline tools build one; resolved and validated like the command line."""
        raw: dict[tuple[str, str], Any] = {}
        for group, values in groups.items():
            raw.update(_raw_group(group, values, where="RunConfig.make"))
        return _build(raw)

    @classmethod
    def from_args(cls, ns: argparse.Namespace, *, base: Mapping[tuple[str, str], Any] | None = None,
                  given: set[str] | None = None) -> RunConfig:
        """From ``stream-run``'s parsed flags. With ``base`` (a file's values, ``read_toml``) only the
        flags in ``given`` (those typed on the command line) override it."""
        raw = dict(base or {})
        dests = None if base is None else (given or set())
        raw.update(_raw_from_namespace(ns, dests))
        return _build(raw)

    @classmethod
    def from_toml(cls, path: str | Path) -> RunConfig:
        return _build(read_toml(path))

    # -- recording -----------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """Plain JSON values (paths as strings, tuples as lists), versioned: the summary's provenance."""
        def plain(value: Any) -> Any:
            if isinstance(value, Path):
                return str(value)
            if isinstance(value, tuple):
                return [plain(v) for v in value]
            return value

        tree: dict[str, Any] = {"version": CONFIG_VERSION}
        for group in dataclasses.fields(self):
            tree[group.name] = {f.name: plain(getattr(getattr(self, group.name), f.name))
                                for f in dataclasses.fields(getattr(self, group.name))}
        return tree


_GROUPS: dict[str, type] = {f.name: f.default_factory for f in dataclasses.fields(RunConfig)}  # type: ignore[misc]
_CHOICES: dict[tuple[str, str], tuple[str, ...]] = {
    ("model", "view"): ("side", "top"),
    ("decisions", "smoothing"): tuple(SMOOTHING_MODES),
    ("trials", "mode"): tuple(TRIAL_MODES),
}
_SKIP = object()


def _opt_tuple(value: Any) -> Any:
    return tuple(value) if value is not None else ()


def _classes(value: str | None) -> Any:
    parts = tuple(c.strip() for c in value.split(",") if c.strip()) if value else ()
    return parts or None


# stream-run's flag (argparse dest) -> (group, field, conversion); in order: later ones win
_FLAGS: tuple[tuple[str, str, str, Any], ...] = (
    ("camera", "source", "camera", None), ("video", "source", "videos", _opt_tuple), ("url", "source", "url", None),
    ("realtime", "source", "realtime", None), ("max_frames", "source", "max_frames", None),
    ("reconnect_max_backoff_s", "source", "reconnect_max_backoff_s", None),
    ("give_up_s", "source", "give_up_s", None), ("queue_frames", "source", "queue_frames", None),
    ("roi", "arenas", "rois", _opt_tuple), ("arenas", "arenas", "file", None), ("check_arenas", "arenas", "check", None),
    ("model", "model", "dir", None), ("view", "model", "view", None), ("engine", "model", "engine", None),
    ("device", "model", "device", None), ("no_flow_warm_start", "model", "flow_warm_start", lambda v: not v),
    ("stride", "model", "stride", None), ("max_stride", "model", "max_stride", None),
    ("adapt", "model", "adapt_clips", lambda v: _SKIP if v is None else v),
    ("smoothing", "decisions", "smoothing", None), ("smoothing_window", "decisions", "smoothing_window", None),
    ("min_bout_s", "decisions", "min_bout_s", None), ("test_duration_s", "decisions", "test_duration_s", None),
    ("scoring_window_s", "decisions", "scoring_window_s", None),
    ("immobile_classes", "decisions", "immobile_classes", _classes), ("bin_s", "decisions", "bin_s", None),
    ("gap_bridge_s", "decisions", "gap_bridge_s", None),
    ("trials", "trials", "mode", None), ("schedule", "trials", "schedule", None),
    ("zmq_state", "trials", "control", None),  # the old name of --control: --control wins
    ("control", "trials", "control", lambda v: _SKIP if v is None else v),
    ("control_token_file", "trials", "control_token_file", None),
    ("allow_remote_control", "trials", "allow_remote_control", None),
    ("out", "outputs", "out", None), ("zmq", "outputs", "zmq", None),
    ("no_zmq", "outputs", "zmq", lambda v: None if v else _SKIP),
    ("metrics_port", "outputs", "metrics_port", None), ("metrics_addr", "outputs", "metrics_addr", None),
    ("no_metrics", "outputs", "metrics_port", lambda v: 0 if v else _SKIP),
    ("preview", "outputs", "preview", None), ("resume", "outputs", "resume", None),
    ("quiet", "outputs", "quiet", None), ("verbose", "outputs", "verbose", None),
    ("web", "web", "addr", None), ("web_token_file", "web", "token_file", None),
)


def _raw_from_namespace(ns: argparse.Namespace, dests: set[str] | None) -> dict[tuple[str, str], Any]:
    raw: dict[tuple[str, str], Any] = {}
    for dest, group, name, convert in _FLAGS:
        if not hasattr(ns, dest) or (dests is not None and dest not in dests):
            continue
        value = getattr(ns, dest)
        value = convert(value) if convert is not None else value
        if value is not _SKIP:
            raw[(group, name)] = value
    return raw


def given_dests(parser: argparse.ArgumentParser, argv: Sequence[str]) -> set[str]:
    """The flags (argparse dests) typed in ``argv``, as opposed to left at their defaults."""
    saved = [(action, action.default) for action in parser._actions]  # noqa: SLF001 - argparse has no public list
    try:
        for action, _ in saved:
            action.default = argparse.SUPPRESS
        return set(vars(parser.parse_args(list(argv))))
    finally:
        for action, default in saved:
            action.default = default


# -- TOML ------------------------------------------------------------------------------------------
_TYPES: dict[str, tuple[type, ...]] = {  # field annotation -> the TOML value types it accepts
    "int": (int,), "int | None": (int,), "float": (int, float), "float | None": (int, float),
    "str": (str,), "str | None": (str,), "bool": (bool,), "Path | None": (str, Path),
    "tuple[str, ...]": (list, tuple), "tuple[str, ...] | None": (list, tuple),
}


def _raw_group(group: str, values: Mapping[str, Any], *, where: str,
               base_dir: Path | None = None) -> dict[tuple[str, str], Any]:
    cls = _GROUPS.get(group)
    if cls is None:
        raise UserError(f"{where}: unknown table [{group}] (known: {', '.join(_GROUPS)})")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    raw: dict[tuple[str, str], Any] = {}
    for key, value in values.items():
        f = fields.get(key)
        if f is None:
            raise UserError(f"{where}: [{group}] {key}: unknown key (known: {', '.join(fields)})")
        kind = str(f.type)
        accepted = _TYPES[kind]
        if value is None:  # (only from make: TOML has no null) unset, or the default of a required field
            if "None" in kind:
                raw[(group, key)] = None
            continue
        if isinstance(value, bool) and bool not in accepted or not isinstance(value, accepted):
            raise UserError(f"{where}: [{group}] {key} = {value!r}: expected {kind.replace(' | None', '')}")
        if kind.startswith("tuple"):
            if not all(isinstance(v, str) for v in value):
                raise UserError(f"{where}: [{group}] {key} = {value!r}: expected a list of strings")
            value = tuple(value)
            if (group, key) == ("source", "videos") and base_dir is not None:  # paths (or globs) like any other
                value = tuple(v if Path(v).is_absolute() else str(base_dir / v) for v in value)
        elif kind == "Path | None":
            value = Path(value) if base_dir is None or Path(value).is_absolute() else base_dir / value
        elif kind.startswith("float"):
            value = float(value)
        raw[(group, key)] = value
    return raw


def read_toml(path: str | Path) -> dict[tuple[str, str], Any]:
    """A TOML file's values as ``{(group, field): value}``, each checked for its type (one-line errors)."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise UserError(f"--config {path}: no such file") from None
    except OSError as exc:
        raise UserError(f"--config {path}: cannot read it ({exc.strerror or exc})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"--config {path}: not valid TOML ({exc})") from exc
    raw: dict[tuple[str, str], Any] = {}
    for group, values in data.items():
        if not isinstance(values, dict):
            raise UserError(f"{path}: {group} = {values!r}: settings go in tables ([source], [model], ...)")
        raw.update(_raw_group(group, values, where=str(path), base_dir=path.parent))
    return raw


# -- resolving and checking ------------------------------------------------------------------------
def _build(raw: Mapping[tuple[str, str], Any]) -> RunConfig:
    groups: dict[str, dict[str, Any]] = {name: {} for name in _GROUPS}
    for (group, name), value in raw.items():
        groups[group][name] = value
    for (group, name), choices in _CHOICES.items():
        value = groups[group].get(name)
        if value is not None and value not in choices:
            raise UserError(f"[{group}] {name} = {value!r}: not one of {', '.join(choices)}")
    engine = groups["model"].get("engine")
    if engine is not None:
        from stream.engine import ENGINE_KINDS

        if engine not in ENGINE_KINDS:
            raise UserError(f"--engine {engine}: not one of {', '.join(ENGINE_KINDS)}")
    trials = groups["trials"]
    trials["mode"] = trials.get("mode") or ("schedule" if trials.get("schedule") is not None else "now")
    control = trials.get("control")
    if control is None and trials["mode"] == "control":
        # only where asked for: two camera services on one PC must not both claim the default port
        control = DEFAULT_CONTROL_ENDPOINT
    trials["control"] = None if control in (None, "none") else control
    config = RunConfig(**{name: _GROUPS[name](**values) for name, values in groups.items()})
    _check(config)
    return config


def _check(c: RunConfig) -> None:
    """Every setting mistake that needs no file, port or model: one line each, before anything opens."""
    s, t = c.source, c.trials
    if sum((s.camera is not None, bool(s.videos), s.url is not None)) != 1:
        raise UserError("give exactly one of --camera N, --video PATH..., --url URL")
    if c.model.stride < 1:
        raise UserError(f"--stride {c.model.stride}: must be >= 1")
    if c.model.max_stride is not None and c.model.max_stride < c.model.stride:
        raise UserError(f"--max-stride {c.model.max_stride}: must be >= --stride ({c.model.stride})")
    if c.model.adapt_clips < 0:
        raise UserError(f"--adapt {c.model.adapt_clips}: the number of clips must be >= 1")
    if s.max_frames is not None and s.max_frames < 1:
        raise UserError(f"--max-frames {s.max_frames}: must be >= 1")
    if c.arenas.rois and c.arenas.file:
        raise UserError("give either --roi (repeatable) or --arenas FILE, not both")
    if c.outputs.resume and not s.videos:
        raise UserError("--resume works with --video only: a live session cannot be replayed")
    if t.schedule is not None and t.mode != "schedule":
        raise UserError(f"--schedule goes with --trials schedule, not --trials {t.mode}")
    if t.mode == "schedule":
        if t.schedule is None:
            raise UserError("--trials schedule needs --schedule FILE.csv (video,arena,animal,group,start_s)")
        if not s.videos:
            raise UserError("--schedule is for recordings (--video); on a live camera use --trials control or auto")
    if t.control is None and t.control_token_file is not None:
        raise UserError("--control-token-file needs a control endpoint (--control ENDPOINT or --trials control)")
    port = c.outputs.metrics_port
    if port and not 0 < port <= MAX_PORT:
        raise UserError(f"--metrics-port {port}: must be 1..{MAX_PORT} (0 disables)")
    if c.web.addr is None and c.web.token_file is not None:
        raise UserError("--web-token-file goes with --web [ADDR]")
