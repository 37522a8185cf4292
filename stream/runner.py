"""The runner: source, engine, trial book, pipeline and outputs, built from one ``RunConfig`` and run.

Why a module of its own: ``stream-run`` and every offline tool that scores videos through the live
code path (``export-validate``, ``export-select``, ``export-fit-motion``, ``export-learning-curve``,
``stream-bench e2e``) call ``run(config)`` with a typed ``stream.run_config.RunConfig``: nobody builds
argv strings or reaches into ``stream.run``. What the run does, its checks and its exit statuses are
described in ``stream.run``'s docstring (the command's help).
"""

from __future__ import annotations

import glob
import logging
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stream.arenas import Arena, check_arenas_fit, resolve_arenas
from stream.atomic import atomic_write
from stream.capture import DEFAULT_INITIAL_BACKOFF_S, Capture, CaptureConfig, SourceSpec, SourceUnavailable, parse_source
from stream.errors import EXIT_INTERRUPTED, OutputWriteError, UserError, output_error
from stream.run_config import DecisionOptions, RunConfig
from stream.run_folder import (SOURCE_FILE, check_no_results, check_same_source, source_identity,
                               write_source_identity)
from stream.trials import ScheduleEntry, TrialEnded, check_schedule, match_schedule, read_schedule

if TYPE_CHECKING:
    from stream.decisions import DecisionConfig
    from stream.engine.base import Engine
    from stream.flow import TVL1
    from stream.live_adapt import LiveAdaptation
    from stream.modelfile import ModelCard
    from stream.pipeline import Pipeline
    from stream.trial_files import Trial
    from stream.trials import TrialBook

__all__ = ["Runner", "run", "expand_videos", "default_model_dir", "EXIT_OK", "EXIT_FAILED", "MIN_BOUT_S_DEFAULT",
           "DEFAULT_MODEL_NAME", "VIDEO_SUFFIXES"]

log = logging.getLogger("stream.run")

EXIT_OK = 0
EXIT_FAILED = 1  # the source gave up or capture failed after the start (summary still written)
DEFAULT_MODEL_NAME = "fst-side-64"  # the bundled side-view model (64 px, synthetic training data)
# Issue 13: published scorers do not count short stops (DBscorer: 2 s minimum bout; EthoVision set-ups:
# typically 1 s). 1 s scored the bundled demo closest to its ground truth (8 bouts for 7 true ones; 2 s
# dropped to 4); a centred 5-frame average removes frame flicker without assuming a calibrated model
# (hysteresis at 0.6 never fired on the demo model, whose P(float) peaks at 0.46). README: "Decision defaults".
MIN_BOUT_S_DEFAULT = 1.0
ADAPTED_MODEL_DIR = "adapted-model"  # --adapt: the video's adapted model, in its run folder
ADAPTED_SUFFIX = "+adabn"  # --adapt: appended to the model's name in results
ADAPT_BATCH = 8  # clips per forward pass while the statistics are estimated (export-adapt's default)
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".webm", ".mpg", ".mpeg")


def default_model_dir() -> Path:
    """``trained_models/fst-side-64`` of the repository this package lives in."""
    return Path(__file__).resolve().parents[1] / "trained_models" / DEFAULT_MODEL_NAME


def decision_config(options: DecisionOptions, card: ModelCard) -> DecisionConfig:
    """The decision settings: the flags, else the model card's fitted values, else our defaults."""
    from stream.decisions import DecisionConfig

    immobile = options.immobile_classes if options.immobile_classes else tuple(card.immobile_classes)
    unknown = [name for name in immobile if name not in card.classes]
    if unknown:
        raise UserError(f"--immobile-classes {','.join(unknown)}: not classes of the model ({', '.join(card.classes)})")
    min_bout_s = options.min_bout_s if options.min_bout_s is not None \
        else float(card.decisions.get("min_bout_s", MIN_BOUT_S_DEFAULT))
    return DecisionConfig(fps=card.fps, smoothing=options.smoothing, smoothing_window_frames=options.smoothing_window,
                          min_bout_s=min_bout_s, immobile_classes=immobile, test_duration_s=options.test_duration_s,
                          scoring_window_s=options.scoring_window_s, bin_s=options.bin_s,
                          gap_bridge_s=options.gap_bridge_s)


def run_video(config: RunConfig, card: ModelCard, engine: Any, arenas: Sequence[Arena], *,
              outputs: Sequence[Any] = ()) -> tuple[Any, Any]:
    """One video through capture, flow, a given engine, decisions and ``outputs``: (pipeline result,
    capture stats). No output folder, ports or trials: for tools that measure the live path itself
    (``stream-bench e2e``) or record what an engine sees (``export-fit-motion``)."""
    from stream.decisions import ArenaDecisions
    from stream.flow import FlowConfig, TVL1
    from stream.pipeline import Pipeline, PipelineConfig

    s, m = config.source, config.model
    video = Path(s.videos[0])
    dconf = decision_config(config.decisions, card)
    decisions = {a.id: ArenaDecisions(a.id, list(card.classes), dconf) for a in arenas}
    capture = Capture(parse_source(video=video), CaptureConfig(fps=card.fps, live=False, realtime=s.realtime,
                                                               max_frames=s.max_frames, queue_frames=s.queue_frames))
    w, h = capture.open()
    check_arenas_fit(list(arenas), w, h, str(video))
    pipeline = Pipeline(engine, TVL1(FlowConfig(**card.flow), device=engine.device), list(arenas), decisions,
                        PipelineConfig(fps=card.fps, size_px=engine.input_size_px, stride_frames=m.stride,
                                       flow_warm_start=m.flow_warm_start, crop=card.crop),
                        outputs=list(outputs))
    capture.start()
    try:
        result = pipeline.run(capture)
    finally:
        capture.close()
    return result, capture.stats


def run(config: RunConfig) -> int:
    """One run from its configuration; the exit status (``stream.run``'s docstring lists them)."""
    return Runner(config).execute()


# ---------------------------------------------------------------------------------------------- checks
def expand_videos(patterns: Sequence[str]) -> list[Path]:
    videos: list[Path] = []
    for pattern in patterns:
        if any(ch in pattern for ch in "*?["):
            matches = sorted(Path(m) for m in glob.glob(pattern, recursive=True))
            matches = [m for m in matches if m.is_file() and m.suffix.lower() in VIDEO_SUFFIXES]
            if not matches:
                raise UserError(f"--video {pattern}: no video files match")
            videos.extend(matches)
        else:
            path = Path(pattern)
            if not path.is_file():
                raise UserError(f"video {path}: no such file")
            videos.append(path)
    unique = list(dict.fromkeys(videos))
    return unique


def _check_out_dir(out: Path) -> list[Path]:
    """Create ``out`` if needed and check it is writable; returns the folders created, deepest first,
    so that a start refused later can remove them again (no empty run folders left behind)."""
    created = [p for p in (out, *out.parents) if not p.exists()]
    try:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / ".write-test", "")  # the same create/fsync/rename every output file will need
        (out / ".write-test").unlink()
    except OSError as exc:
        _remove_if_empty(created)
        if isinstance(output_error(out, exc), OutputWriteError):  # disk full or failing: exit 3, not 2
            raise OutputWriteError(out, exc) from exc
        raise UserError(f"output folder {out}: not writable ({exc.strerror or exc}); choose another with --out") from exc
    return created


def _holds_no_results(folder: Path) -> list[Path] | None:
    """The files of ``folder`` when none of them is a result (only ``source.json`` and per-frame CSVs
    without a row, left by a start that failed); None when it holds anything else."""
    try:
        entries = list(folder.iterdir())
    except OSError:
        return None
    for entry in entries:
        if entry.name == SOURCE_FILE and entry.is_file():
            continue
        if entry.name.endswith(".frames.csv") and entry.is_file():
            try:
                if entry.read_bytes().count(b"\n") <= 1:  # the header at most
                    continue
            except OSError:
                pass
        return None
    return entries


def _remove_start_debris(folders: Sequence[Path]) -> None:
    """After a start that wrote no result: remove what it left in the folders it created, and them."""
    for folder in folders:
        debris = _holds_no_results(folder)
        if debris is None:
            return
        for entry in debris:
            entry.unlink(missing_ok=True)
        try:
            folder.rmdir()
        except OSError:
            return


def _remove_if_empty(folders: Sequence[Path]) -> None:
    """Remove the folders we created (deepest first) that hold nothing; stop at the first that does."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def _unique_dirs(out: Path, videos: Sequence[Path]) -> list[Path]:
    """One subfolder per video, named by its stem (``-2``, ``-3`` appended on a clash)."""
    seen: dict[str, int] = {}
    dirs = []
    for v in videos:
        n = seen.get(v.stem, 0) + 1
        seen[v.stem] = n
        dirs.append(out / (v.stem if n == 1 else f"{v.stem}-{n}"))
    return dirs


@dataclass
class _Source:
    spec: SourceSpec
    out_dir: Path
    arenas: list[Arena]
    capture: Capture | None = None
    identity: dict | None = None  # a file's path, size and first-frame sha256 (stream.run_folder)
    duration_s: float | None = None  # a file's length from its container (frame count / fps), if it says


def _cached_graph(model_dir: Path, card: ModelCard) -> Path:
    """Where the onnxruntime engine keeps the graph of ``model_dir``'s weights (it may not exist)."""
    from stream.engine.cache import with_weights_digest
    from stream.engine.onnx_cache import cached_onnx_path

    return cached_onnx_path(with_weights_digest(model_dir, card), card.input_size_px)


def _build_engine(kind: str, model_dir: Path, device: str | None, batch_size: int | None):
    from stream.engine import build_engine

    return build_engine(kind, model_dir, device=device, batch_size=batch_size)




class Runner:
    """One invocation: validation, outputs shared by all sources, a pipeline per source."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self.stop_event = threading.Event()
        self.signal_name: str | None = None
        self.metrics = None
        self.publisher = None
        self.engine = None
        self.notifier = None
        self.control = None
        self.results = None
        self.web = None  # the page's server (stream.web), when --web
        self.book = None  # the current source's TrialBook (the control thread reads it)
        self.out: Path = Path(".")
        self.schedule: list[ScheduleEntry] = []
        self.schedule_of: dict[str, list[ScheduleEntry]] = {}  # video location -> its schedule rows
        self.trial_mode = "now"
        self.control_endpoint: str | None = None
        self.control_token: str | None = None  # every control request must carry it (None: none required)
        self.model_sha256 = ""  # the weights results credit: the model's, or with --adapt the video's adapted model's
        self.source_sha256 = ""
        self.model_dir: Path | None = None
        self.adapted_graph: Path | None = None  # --adapt on onnxruntime: the video's graph in the cache, removed after it
        self.engine_kind = ""  # the backend _start_engine chose (a live source's adapted engine is built the same)
        self.live_adapted: tuple[ModelCard, float] | None = None  # a live source's adapted model and the source time it took over
        self.created_dirs: list[Path] = []  # output folders this run created: removed again if left empty

    # -- signals --------------------------------------------------------------------------------
    def _on_signal(self, signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        if self.stop_event.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop flushing politely
        self.signal_name = name
        log.warning("%s received: finishing (flushing CSVs, writing summaries)", name)
        self.stop_event.set()

    def _install_signals(self) -> dict:
        if threading.current_thread() is not threading.main_thread():
            return {}
        old = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            old[sig] = signal.signal(sig, self._on_signal)
        return old

    # -- the run --------------------------------------------------------------------------------
    def execute(self) -> int:
        if self.config.arenas.check:
            return self._check_arenas()
        old_handlers = self._install_signals()
        try:
            sources, card, model_dir = self._prepare()
            return self._run_sources(sources, card, model_dir)
        finally:
            for sig, handler in old_handlers.items():
                signal.signal(sig, handler)
            for closer in (self.control, self.web, self.engine, self.publisher, self.metrics):
                if closer is not None:
                    try:
                        closer.close()
                    except Exception:  # noqa: BLE001 - shutdown must go on
                        log.debug("close failed", exc_info=True)
            self._forget_adapted_graph()
            if self.notifier is not None:
                self.notifier.close()
            _remove_start_debris(self.created_dirs)  # a refused or failed start leaves no empty run folder

    def _prepare(self) -> tuple[list[_Source], ModelCard, Path]:
        """Every check that can fail before the first frame."""
        from stream.modelfile import load_card, require_live_crop

        c = self.config  # its settings were checked when it was made (stream.run_config)
        self._trial_settings()
        # sources
        if c.source.videos:
            videos = expand_videos(c.source.videos)
            specs = [parse_source(video=v) for v in videos]
        else:
            specs = [parse_source(camera=c.source.camera, url=c.source.url)]
            videos = []
        # output folder
        out = c.outputs.out or Path("runs") / datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        self.created_dirs = _check_out_dir(out)
        self.out = out
        out_dirs = _unique_dirs(out, videos) if len(videos) > 1 else [out]
        # model card (cheap) then decision settings, so flag mistakes fail fast
        if c.model.dir is not None:
            model_dir = c.model.dir
        elif c.model.view is not None:
            from stream.modelfile import bundled_model_dir

            model_dir = bundled_model_dir(c.model.view)
        else:
            model_dir = default_model_dir()
        if c.model.dir is None and not model_dir.is_dir():
            raise UserError(f"bundled model {model_dir} not found; pass --model DIR (a folder with card.json and "
                            "model.safetensors)")
        card = load_card(model_dir)
        from stream.engine.factory import runs_stepwise

        # before any source, port or engine (the engine checks it too)
        require_live_crop(card, model_dir, stepwise=runs_stepwise(c.model.engine, card))
        if c.model.view is not None and card.view != c.model.view:
            log.warning("--view %s but --model %s is a %s-view model; using --model", c.model.view, model_dir, card.view)
        if c.model.adapt_clips and card.kind != "i3d":
            raise UserError(f"--adapt: {model_dir} is a {card.kind!r} model; it has no BatchNorm statistics to adapt")
        if c.model.adapt_clips and (not c.source.videos or c.source.realtime) and runs_stepwise(c.model.engine, card):
            raise UserError(f"--adapt on a live (or --realtime) source swaps engines between two model calls, and --engine {c.model.engine} "
                            "carries its state from frame to frame; use --engine auto, torch or onnxruntime")
        self._decision_config(card)
        self.model_sha256 = self.source_sha256 = card.weights_sha256
        self.model_dir = model_dir
        # ports
        self._open_outputs()
        sources = self._open_sources(specs, out_dirs, card)
        try:
            self._match_schedule(sources)
        except BaseException:
            for s in sources:
                if s.capture is not None:
                    s.capture.release()
            raise
        self._start_engine(sources, model_dir, card)
        return sources, card, model_dir

    def _open_sources(self, specs: list[SourceSpec], out_dirs: list[Path], card: ModelCard) -> list[_Source]:
        """Every file source opens and delivers a first frame, and its arenas fit; live ones open later."""
        c = self.config
        sources: list[_Source] = []
        try:
            for spec, out_dir in zip(specs, out_dirs):
                arenas = resolve_arenas(rois=c.arenas.rois, arena_file=c.arenas.file, video=spec.location if spec.kind == "file" else None)
                if spec.live:
                    # opened once the engine is ready (just after READY=1): a camera left unread
                    # during the model load would hand us stale frames, and a stream may hang up
                    sources.append(_Source(spec, out_dir, arenas, None))
                    continue
                capture = Capture(spec, self._capture_config(card, spec))
                w, h = capture.open()
                try:
                    check_arenas_fit(arenas, w, h, str(spec))
                    identity = source_identity(spec.location, capture.first_frame)
                except (UserError, OSError):
                    capture.release()
                    raise
                stats = capture.stats
                duration_s = (stats.source_frame_count / stats.source_fps
                              if stats.source_frame_count > 0 and stats.source_fps > 0 else None)
                if len(specs) > 1:
                    capture.release()  # reopened when its turn comes; keeps file handles few
                    capture = None
                sources.append(_Source(spec, out_dir, arenas, capture, identity, duration_s))
            for source in sources:  # earlier results are never overwritten; --resume continues the same video
                check_no_results(source.out_dir, [ar.id for ar in source.arenas], resume=c.outputs.resume,
                                 live=source.spec.live)
                if c.outputs.resume and source.identity is not None:
                    check_same_source(source.out_dir, source.identity)
        except BaseException:
            for s in sources:
                if s.capture is not None:
                    s.capture.release()
            raise
        return sources

    def _start_engine(self, sources: list[_Source], model_dir: Path, card: ModelCard) -> None:
        """Model weights (checksum) and engine, warmed up for one batch of every arena."""
        n_arenas = max(len(s.arenas) for s in sources)
        batch = n_arenas  # CUDA graphs / TensorRT run one fixed batch: all arenas at once
        from stream.engine.base import KIND_AUTO, KIND_TENSORRT, KIND_TORCH

        kind = self.config.model.engine
        if self.config.model.adapt_clips and kind == KIND_AUTO:
            from stream.engine.factory import choose_backend

            # a new model per video: onnxruntime's graph exports in seconds and runs a 112 px clip ~1.6x faster
            # than PyTorch on a CPU; a TensorRT build per video would take minutes, so a GPU runs PyTorch
            kind, _, reason = choose_backend(model_dir, self.config.model.device)
            if kind == KIND_TENSORRT:
                kind, reason = KIND_TORCH, "--adapt: a TensorRT build per video would cost more than it saves"
            log.info("engine auto with --adapt: %s (%s)", kind, reason)
        try:
            self.engine = _build_engine(kind, model_dir, self.config.model.device, batch)
            self.engine_kind = kind
            self.engine.warmup(n_arenas)
        except BaseException:
            for s in sources:
                if s.capture is not None:
                    s.capture.release()
            raise
        log.info("engine %s on %s; model %s (%s, %d px, %.1f fps, classes %s)", self.engine.name, self.engine.device,
                 card.name, card.view, card.input_size_px, card.fps, ", ".join(card.classes))

    def _check_arenas(self) -> int:
        """--check-arenas: a PNG of each source's first frame with the arenas in use; no model, no run."""
        from stream.arena_finder import draw_arenas, grab_median_frame

        c = self.config
        specs = [parse_source(video=v) for v in expand_videos(c.source.videos)] if c.source.videos else \
            [parse_source(camera=c.source.camera, url=c.source.url)]
        out = c.outputs.out or Path("runs") / datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        _check_out_dir(out)
        for spec in specs:
            arenas = resolve_arenas(rois=c.arenas.rois, arena_file=c.arenas.file,
                                    video=spec.location if spec.kind == "file" else None)
            location = int(spec.location) if spec.kind == "camera" else str(spec.location)
            image = grab_median_frame(location, 1)
            check_arenas_fit(arenas, image.shape[1], image.shape[0], str(spec))
            stem = Path(str(spec.location)).stem if spec.kind == "file" else spec.kind
            png = draw_arenas(image, arenas, out / f"arenas-{stem}.png")
            print(f"stream-run: {len(arenas)} arena(s) of {spec} drawn in {png}")
        return EXIT_OK

    def _match_schedule(self, sources: list[_Source]) -> None:
        """Schedule rows to videos (resolved path, else file name, any case); a warning for every row
        that names none, one error for rows that overlap, a warning for rows past a video's end."""
        if not self.schedule:
            return
        where = f"schedule {self.config.trials.schedule}"
        self.schedule_of, unmatched = match_schedule(self.schedule, [s.spec.location for s in sources],
                                                     base_dir=Path(self.config.trials.schedule).parent)
        for e in unmatched:
            log.warning("%s %s: its video matches none of this run's videos (%s); that trial is not scored",
                        where, e.describe(), ", ".join(Path(s.spec.location).name for s in sources))
        if len(unmatched) == len(self.schedule):
            raise UserError(f"{where}: no row names one of the videos given "
                            f"({', '.join(str(s.spec.location) for s in sources)}); nothing would be scored")
        for source in sources:
            check_schedule(self.schedule_of.get(source.spec.location, []), self.config.decisions.test_duration_s,
                           video_s=source.duration_s, where=where)

    def _trial_settings(self) -> None:
        """The schedule's rows and the control token: files read before anything opens."""
        t = self.config.trials
        if t.mode == "schedule" and t.schedule is not None:
            self.schedule = read_schedule(t.schedule)
        self.trial_mode = t.mode
        self.control_endpoint = t.control
        if self.control_endpoint is None:
            return
        from stream.control_token import control_token_for

        self.control_token = control_token_for(self.control_endpoint, t.control_token_file, t.allow_remote_control)

    def _decision_config(self, card: ModelCard) -> DecisionConfig:
        return decision_config(self.config.decisions, card)

    def _capture_config(self, card: ModelCard, spec: SourceSpec) -> CaptureConfig:
        c = self.config
        return CaptureConfig(fps=card.fps, live=spec.live, realtime=c.source.realtime, queue_frames=c.source.queue_frames,
                             max_backoff_s=c.source.reconnect_max_backoff_s,
                             initial_backoff_s=min(DEFAULT_INITIAL_BACKOFF_S, c.source.reconnect_max_backoff_s),
                             give_up_s=c.source.give_up_s, max_frames=c.source.max_frames)

    def _open_outputs(self) -> None:
        from stream.notify import notifier_from_env
        from stream.outputs.metrics import Metrics
        from stream.outputs.publisher import Publisher

        c = self.config
        if c.outputs.metrics_port:
            self.metrics = Metrics(c.outputs.metrics_port, addr=c.outputs.metrics_addr)
        if c.outputs.zmq is not None:
            self.publisher = Publisher(c.outputs.zmq)
        if self.control_endpoint is not None:
            from stream.control import ControlServer

            self.control = ControlServer(self.control_endpoint, self._control,
                                         legacy_state=self.publisher.state_reply if self.publisher else None,
                                         token=self.control_token)
        from stream.outputs.results import ResultsTable

        self.results = ResultsTable(self.out)
        self.notifier = notifier_from_env()
        if c.web.addr is not None or c.web.token_file is not None:
            self._open_web()

    def _open_web(self) -> None:
        """--web: the page's server; arena edits are saved to <out>/arenas.json for the next run."""
        from stream.arena_finder import arena_tools
        from stream.web import WebState, start_web

        self.web = start_web(self.config.web.addr, self.config.web.token_file, WebState(
            out_dir=self.out, arena_file=self.out / "arenas.json", preview=self.config.outputs.preview,
            arena_tools=arena_tools()))
        if not self.config.outputs.quiet:
            print(f"stream-run: web page on {self.web.url}", flush=True)

    def _control(self, request: dict) -> dict:
        """A stream-ctl request, answered from the control thread."""
        book = self.book
        if book is None:
            return {"ok": False, "error": "no source is running yet (the model is loading); try again in a moment"}
        return book.command(request)

    # -- running ------------------------------------------------------------------------------------
    def _run_sources(self, sources: list[_Source], card: ModelCard, model_dir: Path) -> int:
        from stream.flow import FlowConfig, TVL1
        from stream.pipeline import look_ahead_s

        c = self.config
        engine = self.engine
        flow = TVL1(FlowConfig(**card.flow), device=engine.device)
        if self.metrics is not None:
            self.metrics.frame_period_s = 1.0 / card.fps
            self.metrics.model_fps.set(card.fps)
            if self.publisher is not None:
                self.metrics.zmq_dropped_count = lambda: self.publisher.dropped
            self.metrics.engine_info.info({"engine": str(engine.name), "device": str(engine.device),
                                           "model": card.name, "input_size_px": str(card.input_size_px),
                                           "fps": str(card.fps), "stride": str(c.model.stride)})
        self.notifier.ready(f"{card.name} on {engine.name}, {len(sources)} source(s)")
        if not c.outputs.quiet:
            print(f"stream-run: model {card.name} ({', '.join(card.classes)}) on {engine.name}/{engine.device}; "
                  f"decisions lag capture by >= {look_ahead_s(card.fps):.2f} s (7-frame look-ahead at {card.fps:g} fps)"
                  + (f"; model on every {c.model.stride}th frame" if c.model.stride > 1 else ""), flush=True)
        exit_code = EXIT_OK
        for source in sources:
            if self.stop_event.is_set():
                if source.capture is not None:
                    source.capture.release()
                continue
            code = self._run_one(source, card, flow, multi=len(sources) > 1)
            exit_code = max(exit_code, code)
        self.notifier.stopping(f"stopped ({self.signal_name or 'end of input'})")
        if self.signal_name == "SIGINT":
            return EXIT_INTERRUPTED
        return exit_code

    def _run_one(self, source: _Source, card: ModelCard, flow: TVL1, *, multi: bool) -> int:
        """One source: adapted first (--adapt, a recorded video) or while it runs (a live one), then scored."""
        c = self.config
        adaptation = None
        if c.model.adapt_clips and (source.spec.live or c.source.realtime):  # a video paced like a camera: adapted like one
            if self.live_adapted is not None:  # the previous video's adapted model: this one starts from the source model
                self.engine.close()
                self.engine = None
                self._forget_adapted_graph()
                self._start_engine([source], self.model_dir, card)
                self.model_sha256 = self.source_sha256
                self.live_adapted = None
            adaptation = self._live_adaptation(source, card)
        elif c.model.adapt_clips:
            card = self._adapt(source, card)
        try:
            return self._score_source(source, card, flow, adaptation, multi=multi)
        finally:
            if adaptation is not None:
                adaptation.close()
                if (why := adaptation.unfinished()) is not None:
                    log.warning("--adapt on %s: %s", source.spec, why)

    def _score_source(self, source: _Source, card: ModelCard, flow: TVL1, adaptation: LiveAdaptation | None, *,
                      multi: bool) -> int:
        """One source: its trials start, the pipeline runs, the trials end with their summaries."""
        from stream.outputs.base import broadcast
        from stream.outputs.console import summary_table

        c = self.config
        capture = self._open_capture(source, card)
        if isinstance(capture, int):
            return capture  # a live source that never came: nothing was written
        book, live_like = self._trial_book(source, card)
        own = self._source_outputs(source, card, capture, multi=multi)  # closed at the end of this source
        outputs = self._all_outputs(source, card, own)
        write_error: OutputWriteError | None = None
        info: dict = {}
        try:
            if live_like:
                for trial in book.resume_running():
                    broadcast(outputs, "on_trial_start", trial)
            if source.identity is not None:
                write_source_identity(source.out_dir, source.identity)  # what --resume will check
            pipeline = self._pipeline(source, card, flow, book, outputs, capture, adaptation)
            self.book = book
            if self.web is not None:
                self.web.state.attach(book, source.arenas, str(source.spec))
            if self.publisher is not None:  # --resume: what the interrupted run published is not sent again
                self.publisher.skip_through = own[0].resumed_through
            capture.start()
            try:
                result = pipeline.run(capture)
            except OutputWriteError as exc:  # disk full mid-run: stop here, keep what is on disk
                write_error = exc
                result = pipeline.result
                result.error, result.end_reason = str(exc), "output error"
            finally:
                capture.close()
            if self.signal_name:
                result.stopped = True
                result.end_reason = f"stopped by {self.signal_name}"
            info = self._run_info(source, card, capture, result)
            if write_error is not None:  # end the trials in every output that still can, then the one error
                ended = [(item.trial, item.summary.with_run(info)) for _, item in book.end_all(result.end_reason)
                         if isinstance(item, TrialEnded)]
                self._end_trials_despite(write_error, outputs, ended)
            elif result.stopped and book.resume_on_stop:
                log.warning("stopped with trials running: they resume when stream-run starts again with --out %s",
                            source.out_dir)
            else:  # summaries: always, whatever ended the run
                pipeline.end_trials(result.end_reason, info)
        finally:
            self.book = None
            if self.web is not None:
                self.web.state.detach()
            for out in own:
                try:
                    out.close()
                except (UserError, OSError):
                    if write_error is None:
                        raise
                    log.debug("closing %s after the write error failed too", out, exc_info=True)
        ended = own[-1].ended  # the console output collected the trials this source ended
        if not c.outputs.quiet and ended:
            print(summary_table(ended, list(card.classes), str(source.spec), source.out_dir, run=info), flush=True)
            print(f"results: {self.results.path} ({len(self.results.rows)} trials)", flush=True)
        if result.gave_up or result.error:
            print(f"stream-run: error: {result.error or 'capture failed'}", file=sys.stderr, flush=True)
            return EXIT_FAILED
        return EXIT_OK

    def _adapt(self, source: _Source, card: ModelCard) -> ModelCard:
        """--adapt: the model with this video's own BatchNorm statistics (``stream.adabn``), written to
        ``<run folder>/adapted-model`` and run by a new engine; returns its card, which results credit.
        ``--resume`` reuses the folder's adapted model, so a resumed run scores with the same statistics."""
        from stream import adabn
        from stream.modelfile import load_card

        c = self.config
        folder = source.out_dir / ADAPTED_MODEL_DIR
        video = Path(source.spec.location)
        if c.outputs.resume and (folder / "card.json").is_file():
            adapted = load_card(folder)
            came_from = (adapted.training.get("adaptation") or {}).get("source_weights_sha256")
            if came_from != self.source_sha256:
                raise UserError(f"--resume: {folder} was adapted from other weights ({came_from or 'unknown'}), not from {self.model_dir}; "
                                "rerun without --resume into a new --out")
            log.info("--resume: scoring with the adapted model already in %s", folder)
        else:
            from tqdm import tqdm

            t0 = time.monotonic()
            source_card = load_card(self.model_dir)
            frames = round(source.duration_s * source_card.fps) if source.duration_s else None
            with tqdm(total=2 * frames if frames else None, unit="frame", desc=f"adapting to {video.name} (2 passes)", leave=False,
                      dynamic_ncols=True, disable=True if c.outputs.quiet else None) as bar:  # fmt: skip
                clips = adabn.video_clips(video, [ar.roi for ar in source.arenas], source_card, count=c.model.adapt_clips,
                                          warm_start=c.model.flow_warm_start, on_frame=lambda _: bar.update())  # fmt: skip
            adapted, moved = self._write_adapted(folder, clips, "cpu", videos=[video.name], recordings=len(source.arenas), seed=0)
            if not c.outputs.quiet:
                print(f"stream-run: adapted {source_card.name} to {video.name} ({len(clips)} clips, BatchNorm variances moved "
                      f"{100 * moved:.0f} %) in {time.monotonic() - t0:.0f} s: {folder}", flush=True)
        if self.engine is not None:
            self.engine.close()
            self.engine = None
        self._forget_adapted_graph()
        self._start_engine([source], folder, adapted)
        self.adapted_graph = _cached_graph(folder, adapted)
        self.model_sha256 = adapted.weights_sha256
        return adapted

    def _write_adapted(self, folder: Path, clips: list, device: str, **facts) -> tuple[ModelCard, float]:
        """The source model with BatchNorm statistics estimated on ``clips``, saved to ``folder`` (through
        ``<folder>.partial``: a crash mid-write leaves no half model under the real name); (its card, how far
        the variances moved). ``facts`` (videos, recordings, seed, ...) go into the card's adaptation block."""
        import shutil

        from stream import adabn
        from stream.modelfile import load_card, load_model, save_model

        model, source_card = load_model(self.model_dir)
        model.to(device)
        moved = adabn.reestimate_batchnorm(model, adabn.batches_of(clips, ADAPT_BATCH), device)
        adapted = adabn.adapted_card(source_card, name=f"{source_card.name}{ADAPTED_SUFFIX}", clips=len(clips),
                                     frame_step=adabn.DEFAULT_FRAME_STEP, moved=moved,
                                     flow_warm_start=self.config.model.flow_warm_start, **facts)  # fmt: skip
        partial = folder.with_name(folder.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        save_model(model.cpu().eval(), adapted, partial, half=True)
        shutil.rmtree(folder, ignore_errors=True)
        partial.rename(folder)
        return load_card(folder), moved

    def _live_adaptation(self, source: _Source, card: ModelCard) -> LiveAdaptation:
        """--adapt on a camera or stream: the first clips the source model scores give the statistics
        (``stream.live_adapt``); the adapted model is saved to the run folder and its engine takes over
        between two model calls. Results credit it from the trial that ends after the swap on, with the
        source time it took over (``_provenance``)."""
        from stream.live_adapt import LiveAdaptation

        c = self.config
        folder = source.out_dir / ADAPTED_MODEL_DIR
        if folder.exists():  # an earlier session's adapted model credited its results: kept
            folder = source.out_dir / f"{ADAPTED_MODEL_DIR}-{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}"
        device = str(self.engine.device)
        n_arenas = len(source.arenas)
        built: dict = {}  # what the build made, for the swap (written on its thread before the engine is handed over)

        def build(clips: list) -> Engine:
            t0 = time.monotonic()
            built["card"], built["moved"] = self._write_adapted(folder, clips, device, videos=[str(source.spec)],
                                                                recordings=n_arenas, seed=None, live=True)  # fmt: skip
            engine = _build_engine(self.engine_kind, folder, c.model.device, n_arenas)
            engine.warmup(n_arenas)
            log.info("adapted %s to %s on %d clips in %.0f s: %s", card.name, source.spec, len(clips), time.monotonic() - t0, folder)
            return engine

        def on_swap(engine: Engine, centre: int, timestamp_s: float) -> None:
            adapted = built["card"]
            self.engine = engine
            self.model_sha256 = adapted.weights_sha256
            self.live_adapted = (adapted, timestamp_s)
            self.adapted_graph = _cached_graph(folder, adapted)
            if self.metrics is not None:
                self.metrics.engine_info.info({"engine": str(engine.name), "device": str(engine.device), "model": adapted.name,
                                               "input_size_px": str(adapted.input_size_px), "fps": str(adapted.fps),
                                               "stride": str(c.model.stride)})  # fmt: skip
            window_from = self._decision_config(card).scoring_window_start_s
            for arena_id, trial in self._running_trials():
                if timestamp_s - trial.start_s > window_from:
                    log.warning("trial %s (arena %s): its scoring window began %.1f s before the adapted model took over; "
                                "those seconds were scored by %s", trial.trial_id, arena_id,
                                timestamp_s - trial.start_s - window_from, card.name)
            if not c.outputs.quiet:
                print(f"stream-run: adapted {card.name} to {source.spec} ({adaptation.wanted} clips, BatchNorm variances moved "
                      f"{100 * built['moved']:.0f} %); it scores from {timestamp_s:.1f} s on: {folder}", flush=True)

        adaptation = LiveAdaptation(c.model.adapt_clips, n_arenas, build, on_swap)  # on_swap reads it: named first
        return adaptation

    def _running_trials(self) -> list[tuple[str, Trial]]:
        """(arena id, trial) of the current source's running trials."""
        if self.book is None:
            return []
        return [(aid, at.trial) for aid, at in self.book.arenas.items() if at.trial is not None]

    def _forget_adapted_graph(self) -> None:
        """An adapted model's ONNX graph serves one video: out of the user's cache once it is scored."""
        if self.adapted_graph is not None:
            from stream.engine.onnx_cache import discard_cached

            discard_cached(self.adapted_graph)
            self.adapted_graph = None

    def _all_outputs(self, source: _Source, card: ModelCard, own: list) -> list:
        """Every output of this source, in order: its CSVs first (nothing is published unsaved), the
        results table, ZeroMQ, Prometheus, its preview and terminal, the web page. A new output is
        built in ``_open_outputs`` (one per run) or ``_source_outputs`` (one per source) and listed here."""
        outputs = [own[0], self.results, *(o for o in (self.publisher, self.metrics) if o is not None), *own[1:]]
        if self.web is not None:
            from stream.web import WebOutput

            outputs.append(WebOutput(self.web.state))
        if self.metrics is not None:
            from stream.outputs.metrics import camera_label

            self.metrics.start_source(camera_label(source.spec.kind, str(source.spec.location)),
                                      [ar.id for ar in source.arenas], list(card.classes))
        return outputs

    def _pipeline(self, source: _Source, card: ModelCard, flow: TVL1, book: TrialBook, outputs: list,
                  capture: Capture, adaptation: LiveAdaptation | None = None) -> Pipeline:
        """The source's pipeline: engine, flow, its arenas' trials, the outputs."""
        from stream.input_check import InputReference
        from stream.pipeline import Pipeline, PipelineConfig

        c = self.config
        return Pipeline(
            self.engine, flow, source.arenas, book.arenas,
            PipelineConfig(fps=card.fps, size_px=self.engine.input_size_px, stride_frames=c.model.stride,
                           flow_warm_start=c.model.flow_warm_start,
                           adaptive_stride=source.spec.live or c.source.realtime,  # where frames can be dropped
                           max_stride_frames=c.model.max_stride, crop=card.crop),
            outputs=outputs, trials=book, heartbeat=self.notifier.watchdog, stop_event=self.stop_event,
            capture_stats=capture.stats,
            input_reference=InputReference(model=card.name, classes=tuple(card.classes), fps=card.fps,
                                           input_stats=card.input_stats),
            adaptation=adaptation,
        )

    def _trial_book(self, source: _Source, card: ModelCard) -> tuple[TrialBook, bool]:
        """The source's trials: mode, schedule rows, provenance; (book, whether the source runs in real time)."""
        from stream.trials import TrialBook

        book = TrialBook([ar.id for ar in source.arenas], list(card.classes), self._decision_config(card),
                         mode=self.trial_mode, out_dir=source.out_dir, source=str(source.spec),
                         schedule=self.schedule_of.get(source.spec.location, []),
                         provenance=lambda trial: self._provenance(source, card, trial))
        # a camera, or a video paced like one: a restart continues the trial that was running
        live_like = source.spec.live or self.config.source.realtime
        book.resume_on_stop = live_like and self.trial_mode != "now"
        return book, live_like

    def _provenance(self, source: _Source, card: ModelCard, trial: Trial) -> dict:
        """What produced a trial's figures: model and checksum, package version, ROI, source, flow."""
        from stream import __version__

        arena = next(ar for ar in source.arenas if ar.id == trial.arena_id)
        roi = f"{arena.roi.x},{arena.roi.y},{arena.roi.w},{arena.roi.h}" if arena.roi is not None else "full frame"
        from stream.outputs.results import COLUMNS_VERSION
        from stream.recording_time import recording_start_utc

        adaptation = None
        if self.live_adapted is not None:  # a live source's adapted model scored this trial from ``scoring_from_s`` on
            adapted, from_s = self.live_adapted
            card = adapted
            adaptation = {"model": adapted.name, "scoring_from_source_s": round(from_s, 3),
                          "scored_before_it_s": round(max(0.0, from_s - trial.start_s), 3)}
        facts = {"model": card.name, "model_sha256": self.model_sha256, "swim_stream_version": __version__,
                "roi": roi, "source": str(source.spec), "start_utc": trial.start_utc, "flow": dict(card.flow),
                "flow_warm_start": self.config.model.flow_warm_start, "stride_frames": self.config.model.stride,
                "recording_start_utc": recording_start_utc(source.spec.location) if source.spec.kind == "file" else None,
                "results_columns_version": COLUMNS_VERSION, "run_config": self.config.to_json()}
        if adaptation is not None:
            facts["live_adaptation"] = adaptation
        return facts

    @staticmethod
    def _end_trials_despite(error: OutputWriteError, outputs: list, ended: list[tuple]) -> None:
        """After a write error: end every trial in every output that still can (the summaries, if the
        disk allows), then raise the one error, saying whether the summaries were written."""
        failed = 0
        for trial, summary in ended:
            for out in outputs:
                try:
                    out.on_trial_end(trial, summary)
                except (UserError, OSError):
                    failed += 1
                    log.debug("%s could not end trial %s", out, trial, exc_info=True)
        note = ("; the summaries were written" if not failed else
                "; the summaries could not be written either" if failed >= len(ended) else
                "; some summaries could not be written")
        raise OutputWriteError(error.path, error.os_error, note) from error

    def _open_capture(self, source: _Source, card: ModelCard) -> Capture | int:
        """The source's capture, opened now if it was not at the checks (a live source, or one of many).

        A live source that is not there is waited for (``Capture.open_waiting``); if it never comes
        the exit status is returned instead: 1 after --give-up-s, 0 when a signal stopped the wait.
        """
        if source.capture is not None:
            return source.capture
        capture = Capture(source.spec, self._capture_config(card, source.spec))
        if source.spec.live:
            try:
                w, h = capture.open_waiting(self._waiting_for_source, stop_event=self.stop_event)
            except SourceUnavailable as exc:
                if self.stop_event.is_set():
                    return EXIT_OK  # stopped (SIGTERM/Ctrl-C) before the camera came: nothing to write
                print(f"stream-run: error: {exc}", file=sys.stderr, flush=True)
                return EXIT_FAILED  # like a camera lost mid-run: systemd restarts us and we wait again
        else:
            w, h = capture.open()
        check_arenas_fit(source.arenas, w, h, str(source.spec))
        return capture

    def _waiting_for_source(self, status: str) -> None:
        """A live source is not there yet: tell systemd (STATUS, watchdog) and, once, the terminal."""
        self.notifier.status(status)
        self.notifier.watchdog()
        if not self.config.outputs.quiet and not getattr(self, "_said_waiting", False):
            self._said_waiting = True
            print(f"stream-run: {status}; retrying with back-off (--give-up-s {self.config.source.give_up_s:g})", flush=True)

    def _source_outputs(self, source: _Source, card: ModelCard, capture: Capture, *, multi: bool) -> list:
        """The outputs that belong to one source: its CSVs (first), its preview, the terminal."""
        from stream.outputs.console import ConsoleOutput
        from stream.outputs.csv_log import CsvOutput
        from stream.outputs.preview import PreviewWriter

        c = self.config
        spec = source.spec
        outputs: list = [CsvOutput(source.out_dir, list(card.classes), resume=c.outputs.resume)]
        try:
            if c.outputs.preview is not None:
                path = c.outputs.preview if not multi else c.outputs.preview.with_name(
                    f"{c.outputs.preview.stem}-{source.out_dir.name}{c.outputs.preview.suffix}")
                outputs.append(PreviewWriter(path, card.fps, capture.stats.frame_size, source.arenas))
            total = None
            show_bar = spec.kind == "file" and not c.source.realtime
            if show_bar:
                total = capture.stats.frame_count_estimate(card.fps)
                if c.source.max_frames:
                    total = min(total, c.source.max_frames) if total else c.source.max_frames
            outputs.append(ConsoleOutput(quiet=c.outputs.quiet, bar_total=total, bar_desc=Path(spec.location).name if show_bar
                                         else "", show_bar=show_bar,
                                         systemd_status=self.notifier.status if self.notifier is not None else None))
        except BaseException:
            for out in outputs:
                out.close()
            raise
        return outputs

    def _run_info(self, source: _Source, card: ModelCard, capture: Capture, result) -> dict:
        """The ``run`` block of every summary: what ran, on what, and how it went."""
        from stream.pipeline import look_ahead_s

        stats = capture.stats
        return {
            "source": str(source.spec),
            "source_kind": source.spec.kind,
            "model": card.name,
            "engine": str(self.engine.name),
            "device": str(self.engine.device),
            "model_fps": card.fps,
            "input_size_px": self.engine.input_size_px,
            "input_crop": card.crop,  # issue 21: the whole arena ("roi") or the window around the mouse ("mouse")
            "stride_frames": self.config.model.stride,
            "look_ahead_s": round(look_ahead_s(card.fps), 4),
            "frame_size": list(stats.frame_size),
            "capture": {
                "source_fps": stats.source_fps,
                "source_frames": stats.source_frames,
                "source_frames_declared": stats.source_frame_count or None,
                "frames_dropped_queue_full": stats.dropped_queue_full,
                "source_frames_skipped_resample": stats.dropped_resample,
                "frames_repeated_resample": stats.repeated_resample,
                "invalid_frames": stats.invalid_frames,
                "reconnect_attempts": stats.reconnects,
            },
            # the file ended well short of its declared frame count: results cover part of the test
            "truncated_recording": stats.truncated,
            "zmq_dropped": self.publisher.dropped if self.publisher is not None else None,
            "finished_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **result.to_dict(),
        }


