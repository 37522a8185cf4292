"""``stream-run``: watch a forced swim test live (camera, RTSP/HTTP) or score recordings (``--video``).

Everything a run needs is checked before the first frame is processed: the output folder is
writable, the ZeroMQ and metrics ports are free, every video opens and has a frame, the arenas fit
the frame, the model's checksum matches its card. A camera or stream is opened last, once the
engine is warm, so its first frames are fresh; systemd's READY=1 is sent just before that. A camera
or stream that is not there yet (an IP camera booting after a power cut) is retried with back-off
for up to ``--give-up-s`` (0: until stopped), with systemd's STATUS saying so and its watchdog fed.
Then one loop per source runs ``stream.pipeline.Pipeline``; its outputs are per-arena CSVs and summary JSONs under ``--out``,
ZeroMQ messages, Prometheus metrics and an optional annotated preview.

Exit status: 0 at the end of the input or after SIGTERM (a requested stop: systemd's
``Restart=on-failure`` must not restart us); 130 after SIGINT (Ctrl-C, so batch scripts notice);
1 when a live source gave up (reconnecting, or waiting for it at start) or capture failed; 2 for a
user error before the start; 3 when results could not be written (disk full, quota, I/O error: one
line naming the file and the OS error; the unit's ``RestartPreventExitStatus=3`` stops systemd from
restarting into the same full disk). Every exit after the start flushes the CSVs and writes the
summaries first (after a write error: if the disk still allows it). A start refused before any
result was written removes the output folder it created.
"""

from __future__ import annotations

import argparse
import glob
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from stream.arenas import Arena, check_arenas_fit, resolve_arenas
from stream.capture import (DEFAULT_GIVE_UP_S, DEFAULT_INITIAL_BACKOFF_S, DEFAULT_MAX_BACKOFF_S, DEFAULT_QUEUE_FRAMES,
                            Capture, CaptureConfig, SourceSpec, SourceUnavailable, parse_source,
                            quiet_opencv_logging)
from stream.atomic import atomic_write
from stream.control import DEFAULT_CONTROL_ENDPOINT
from stream.decisions import BIN_S_DEFAULT, GAP_BRIDGE_S_DEFAULT, SMOOTHING_MODES
from stream.errors import EXIT_INTERRUPTED, UserError, cli_main
from stream.trials import TRIAL_MODES, ScheduleEntry, TrialEnded, check_schedule, match_schedule, read_schedule
from stream.version import add_version_argument
from stream.errors import OutputWriteError, output_error
from stream.run_folder import (SOURCE_FILE, check_no_results, check_same_source, source_identity,
                               write_source_identity)
from stream.outputs.metrics import DEFAULT_METRICS_PORT
from stream.outputs.publisher import DEFAULT_ENDPOINT as DEFAULT_ZMQ_ENDPOINT
from stream.web.security import DEFAULT_WEB_ADDR

__all__ = ["main", "build_parser", "default_model_dir", "EXIT_OK", "EXIT_FAILED"]

log = logging.getLogger("stream.run")

EXIT_OK = 0
EXIT_FAILED = 1  # the source gave up or capture failed after the start (summary still written)
DEFAULT_MODEL_NAME = "fst-side-64"  # the bundled side-view model (64 px, synthetic training data)
# Issue 13: published scorers do not count short stops (DBscorer: 2 s minimum bout; EthoVision set-ups:
# typically 1 s). 1 s scored the bundled demo closest to its ground truth (8 bouts for 7 true ones; 2 s
# dropped to 4); a centred 5-frame average removes frame flicker without assuming a calibrated model
# (hysteresis at 0.6 never fired on the demo model, whose P(float) peaks at 0.46). README: "Decision defaults".
MIN_BOUT_S_DEFAULT = 1.0
SMOOTHING_DEFAULT = "average"
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".webm", ".mpg", ".mpeg")


def default_model_dir() -> Path:
    """``trained_models/fst-side-64`` of the repository this package lives in."""
    return Path(__file__).resolve().parents[1] / "trained_models" / DEFAULT_MODEL_NAME


def build_parser() -> argparse.ArgumentParser:
    from stream.engine import ENGINE_KINDS

    p = argparse.ArgumentParser(prog="stream-run", description=__doc__.splitlines()[0].replace("``", ""))
    add_version_argument(p)
    src = p.add_argument_group("input (exactly one)")
    src.add_argument("--camera", type=int, metavar="N", help="camera index (/dev/videoN)")
    src.add_argument("--video", nargs="+", metavar="PATH_OR_GLOB", help="video file(s); globs are expanded")
    src.add_argument("--url", help="RTSP or HTTP(S) stream URL")
    src.add_argument("--realtime", action="store_true",
                     help="pace video files at their own frame rate like a camera (default: as fast as possible)")
    src.add_argument("--max-frames", type=int, metavar="N", help="stop after N model-rate frames per source")

    m = p.add_argument_group("model")
    m.add_argument("--model", type=Path, default=None, metavar="DIR",
                   help=f"model directory with card.json + model.safetensors (default: trained_models/{DEFAULT_MODEL_NAME})")
    m.add_argument("--view", choices=("side", "top"), default=None,
                   help="camera view: picks the bundled model whose card has that view (--model wins; default: "
                        f"trained_models/{DEFAULT_MODEL_NAME})")
    m.add_argument("--engine", default="auto", choices=ENGINE_KINDS,
                   help="inference backend (default: auto, the fastest present)")
    m.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: the best present)")
    m.add_argument("--no-flow-warm-start", action="store_true",
                   help="compute each frame's TV-L1 flow from scratch, exactly as training did")
    m.add_argument("--stride", type=int, default=1, metavar="K",
                   help="run the model on every K-th frame and repeat its prediction in between (slow machines; "
                        "default: 1)")
    m.add_argument("--max-stride", type=int, default=None, metavar="K",
                   help="live or --realtime sources: when the pipeline falls behind it raises the stride up to K "
                        "before frames are dropped (default: one model call a second, 15 at 15 fps; give --stride's value "
                        "to keep it fixed)")

    a = p.add_argument_group("arenas")
    a.add_argument("--roi", action="append", default=[], metavar="x,y,w,h",
                   help="one arena's region of interest in pixels; repeat for several arenas")
    a.add_argument("--check-arenas", action="store_true",
                   help="draw the arenas in use on the first frame (<out>/arenas-<video>.png) and exit")
    a.add_argument("--arenas", type=Path, metavar="FILE",
                   help='arena file (JSON/YAML): {"arenas": [{"id": "A1", "roi": [x, y, w, h]}, ...]}; '
                        "default: <video>.arenas.json next to a video, else the whole frame")

    d = p.add_argument_group("decisions")
    d.add_argument("--smoothing", default=SMOOTHING_DEFAULT, choices=SMOOTHING_MODES,
                   help="smooth the probabilities before labelling (default: %(default)s)")
    d.add_argument("--smoothing-window", type=int, default=5, metavar="FRAMES", help="moving-average window (default: %(default)s)")
    d.add_argument("--min-bout-s", type=float, default=None,
                   help=f"shorter immobility is counted as mobile (default: the model card's fitted value, "
                        f"else {MIN_BOUT_S_DEFAULT:g} s; DBscorer uses 2)")
    d.add_argument("--test-duration-s", "--test-duration", type=float, default=360.0, dest="test_duration_s",
                   help="test length in seconds (default: %(default)s)")
    d.add_argument("--scoring-window-s", "--scoring-window", type=float, default=240.0, dest="scoring_window_s",
                   help="scored over the last this-many seconds of the test (default: %(default)s)")
    d.add_argument("--immobile-classes", default=None, metavar="A,B", help="default: the model card's")
    d.add_argument("--gap-bridge-s", type=float, default=GAP_BRIDGE_S_DEFAULT,
                   help="missing frames shorter than this do not end an immobility bout; they count as missing, "
                        "neither mobile nor immobile (default: %(default)s; 0: every gap ends the bout)")
    d.add_argument("--bin-s", type=float, default=BIN_S_DEFAULT,
                   help="time bins of each trial, s: per-bin seconds and bouts (default: %(default)s, per minute)")

    t = p.add_argument_group("trials")
    t.add_argument("--trials", choices=TRIAL_MODES, default=None,
                   help="how trials start: now (every arena at the first frame; default), control (stream-ctl "
                        "start/stop), auto (an animal appears in an empty arena / is taken out), schedule (--schedule)")
    t.add_argument("--schedule", type=Path, metavar="CSV",
                   help="recordings: CSV video,arena,animal,group,start_s; one trial per row (implies --trials schedule)")
    t.add_argument("--control", default=None, metavar="ENDPOINT",
                   help=f"control endpoint for stream-ctl (REP; default {DEFAULT_CONTROL_ENDPOINT} with --trials "
                        "control, else none); give one to use stream-ctl in any mode; 'none' disables")
    t.add_argument("--control-token-file", type=Path, default=None, metavar="FILE",
                   help="every control request must carry the token in FILE (created, mode 0600, if missing; "
                        "refused if others can read it); required beyond loopback unless --allow-remote-control")
    t.add_argument("--allow-remote-control", action="store_true",
                   help="let a control endpoint beyond loopback take commands without a token (trusted network only)")

    o = p.add_argument_group("outputs")
    o.add_argument("--out", type=Path, default=None, metavar="DIR", help="output folder (default: runs/<UTC time>)")
    o.add_argument("--zmq", default=DEFAULT_ZMQ_ENDPOINT, metavar="ENDPOINT", help="ZeroMQ PUB endpoint (default: %(default)s)")
    o.add_argument("--no-zmq", action="store_true", help="do not publish on ZeroMQ")
    o.add_argument("--zmq-state", default=None, metavar="ENDPOINT",
                   help="old name of --control (it still answers b'counters' with the latest counters)")
    o.add_argument("--metrics-port", type=int, default=DEFAULT_METRICS_PORT, help="Prometheus port; 0 disables (default: %(default)s)")
    o.add_argument("--metrics-addr", default="127.0.0.1", help="address the metrics server listens on (default: %(default)s)")
    o.add_argument("--no-metrics", action="store_true", help="no Prometheus endpoint")
    o.add_argument("--preview", type=Path, default=None, metavar="FILE.mp4", help="annotated preview video")
    o.add_argument("--web", nargs="?", const=DEFAULT_WEB_ADDR, default=None, metavar="ADDR",
                   help=f"serve the lab's page (live view, trials, arenas, results) on ADDR (default {DEFAULT_WEB_ADDR}; "
                        "beyond loopback it needs --web-token-file)")
    o.add_argument("--web-token-file", type=Path, default=None, metavar="FILE",
                   help="the page asks for the token in FILE (created, mode 0600, if missing); required beyond loopback")
    o.add_argument("--resume", action="store_true",
                   help="--video only: re-run a video whose run crashed, appending only the frames its CSVs lack "
                        "(counters are recomputed from the start)")
    o.add_argument("-q", "--quiet", action="store_true", help="no live counters, no progress bar")
    o.add_argument("-v", "--verbose", action="count", default=0,
                   help="-v: progress of set-up (info logging), -vv: debug (also OpenCV/FFmpeg messages)")

    r = p.add_argument_group("live sources")
    r.add_argument("--reconnect-max-backoff-s", type=float, default=DEFAULT_MAX_BACKOFF_S,
                   help=f"longest wait between reconnect attempts, s (first: {DEFAULT_INITIAL_BACKOFF_S} s, doubling; "
                        "default: %(default)s)")
    r.add_argument("--give-up-s", type=float, default=DEFAULT_GIVE_UP_S,
                   help="exit 1 after this many seconds without frames, also while waiting for a camera or stream "
                        "that is not there at start; 0: never give up, wait until stopped (default: %(default)s)")
    r.add_argument("--queue-frames", type=int, default=DEFAULT_QUEUE_FRAMES,
                   help="capture queue in frames; live sources drop (and count) frames when it is full "
                        "(default: %(default)s)")
    return p


# ---------------------------------------------------------------------------------------------- checks
def _expand_videos(patterns: Sequence[str]) -> list[Path]:
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


def _build_engine(kind: str, model_dir: Path, device: str | None, batch_size: int | None):
    from stream.engine import build_engine

    return build_engine(kind, model_dir, device=device, batch_size=batch_size)


# ---------------------------------------------------------------------------------------------- main
@cli_main("stream-run")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # warnings and errors only by default: a refused start must print ONE line on stderr
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if args.verbose < 2:
        quiet_opencv_logging()
    return _Run(args).execute()


class _Run:
    """One invocation: validation, outputs shared by all sources, a pipeline per source."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
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
        self.model_sha256 = ""
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
        if self.args.check_arenas:
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
            if self.notifier is not None:
                self.notifier.close()
            _remove_start_debris(self.created_dirs)  # a refused or failed start leaves no empty run folder

    def _prepare(self) -> tuple[list[_Source], object, Path]:
        """Every check that can fail before the first frame."""
        from stream.modelfile import load_card

        a = self.args
        given = sum(x is not None for x in (a.camera, a.video, a.url))
        if given != 1:
            raise UserError("give exactly one of --camera N, --video PATH..., --url URL")
        if a.stride < 1:
            raise UserError(f"--stride {a.stride}: must be >= 1")
        if a.max_stride is not None and a.max_stride < a.stride:
            raise UserError(f"--max-stride {a.max_stride}: must be >= --stride ({a.stride})")
        if a.max_frames is not None and a.max_frames < 1:
            raise UserError(f"--max-frames {a.max_frames}: must be >= 1")
        if a.roi and a.arenas:
            raise UserError("give either --roi (repeatable) or --arenas FILE, not both")
        if a.resume and not a.video:
            raise UserError("--resume works with --video only: a live session cannot be replayed")
        self._trial_settings()
        # sources
        if a.video:
            videos = _expand_videos(a.video)
            specs = [parse_source(video=v) for v in videos]
        else:
            specs = [parse_source(camera=a.camera, url=a.url)]
            videos = []
        # output folder
        out = a.out or Path("runs") / datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        self.created_dirs = _check_out_dir(out)
        self.out = out
        out_dirs = _unique_dirs(out, videos) if len(videos) > 1 else [out]
        # model card (cheap) then decision settings, so flag mistakes fail fast
        if a.model is not None:
            model_dir = a.model
        elif a.view is not None:
            from stream.modelfile import bundled_model_dir

            model_dir = bundled_model_dir(a.view)
        else:
            model_dir = default_model_dir()
        if a.model is None and not model_dir.is_dir():
            raise UserError(f"bundled model {model_dir} not found; pass --model DIR (a folder with card.json and "
                            "model.safetensors)")
        card = load_card(model_dir)
        if a.view is not None and card.view != a.view:
            log.warning("--view %s but --model %s is a %s-view model; using --model", a.view, model_dir, card.view)
        self._decision_config(card)
        self.model_sha256 = card.weights_sha256
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

    def _open_sources(self, specs: list[SourceSpec], out_dirs: list[Path], card) -> list[_Source]:
        """Every file source opens and delivers a first frame, and its arenas fit; live ones open later."""
        a = self.args
        sources: list[_Source] = []
        try:
            for spec, out_dir in zip(specs, out_dirs):
                arenas = resolve_arenas(rois=a.roi, arena_file=a.arenas, video=spec.location if spec.kind == "file" else None)
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
                check_no_results(source.out_dir, [ar.id for ar in source.arenas], resume=a.resume,
                                 live=source.spec.live)
                if a.resume and source.identity is not None:
                    check_same_source(source.out_dir, source.identity)
        except BaseException:
            for s in sources:
                if s.capture is not None:
                    s.capture.release()
            raise
        return sources

    def _start_engine(self, sources: list[_Source], model_dir: Path, card) -> None:
        """Model weights (checksum) and engine, warmed up for one batch of every arena."""
        n_arenas = max(len(s.arenas) for s in sources)
        batch = n_arenas  # CUDA graphs / TensorRT run one fixed batch: all arenas at once
        try:
            self.engine = _build_engine(self.args.engine, model_dir, self.args.device, batch)
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

        a = self.args
        if sum(x is not None for x in (a.camera, a.video, a.url)) != 1:
            raise UserError("give exactly one of --camera N, --video PATH..., --url URL")
        specs = [parse_source(video=v) for v in _expand_videos(a.video)] if a.video else \
            [parse_source(camera=a.camera, url=a.url)]
        out = a.out or Path("runs") / datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        _check_out_dir(out)
        for spec in specs:
            arenas = resolve_arenas(rois=a.roi, arena_file=a.arenas,
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
        where = f"schedule {self.args.schedule}"
        self.schedule_of, unmatched = match_schedule(self.schedule, [s.spec.location for s in sources],
                                                     base_dir=Path(self.args.schedule).parent)
        for e in unmatched:
            log.warning("%s %s: its video matches none of this run's videos (%s); that trial is not scored",
                        where, e.describe(), ", ".join(Path(s.spec.location).name for s in sources))
        if len(unmatched) == len(self.schedule):
            raise UserError(f"{where}: no row names one of the videos given "
                            f"({', '.join(str(s.spec.location) for s in sources)}); nothing would be scored")
        for source in sources:
            check_schedule(self.schedule_of.get(source.spec.location, []), self.args.test_duration_s,
                           video_s=source.duration_s, where=where)

    def _trial_settings(self) -> None:
        """--trials / --schedule / --control: resolved once, checked before anything opens."""
        a = self.args
        mode = a.trials or ("schedule" if a.schedule else "now")
        if a.schedule is not None and mode != "schedule":
            raise UserError(f"--schedule goes with --trials schedule, not --trials {mode}")
        if mode == "schedule":
            if a.schedule is None:
                raise UserError("--trials schedule needs --schedule FILE.csv (video,arena,animal,group,start_s)")
            if not a.video:
                raise UserError("--schedule is for recordings (--video); on a live camera use --trials control or auto")
            self.schedule = read_schedule(a.schedule)
        self.trial_mode = mode
        control = a.control or a.zmq_state
        if control is None and mode == "control":
            # only where asked for: two camera services on one PC must not both claim the default port
            control = DEFAULT_CONTROL_ENDPOINT
        self.control_endpoint = None if control in (None, "none") else control
        if self.control_endpoint is None:
            if a.control_token_file is not None:
                raise UserError("--control-token-file needs a control endpoint (--control ENDPOINT or --trials control)")
            return
        from stream.control_token import control_token_for

        self.control_token = control_token_for(self.control_endpoint, a.control_token_file, a.allow_remote_control)

    def _decision_config(self, card):
        from stream.decisions import DecisionConfig

        a = self.args
        immobile = tuple(c.strip() for c in a.immobile_classes.split(",") if c.strip()) if a.immobile_classes \
            else tuple(card.immobile_classes)
        unknown = [c for c in immobile if c not in card.classes]
        if unknown:
            raise UserError(f"--immobile-classes {','.join(unknown)}: not classes of the model ({', '.join(card.classes)})")
        return DecisionConfig(fps=card.fps, smoothing=a.smoothing, smoothing_window_frames=a.smoothing_window,
                              min_bout_s=a.min_bout_s if a.min_bout_s is not None
                              else float(card.decisions.get("min_bout_s", MIN_BOUT_S_DEFAULT)),
                              immobile_classes=immobile, test_duration_s=a.test_duration_s,
                              scoring_window_s=a.scoring_window_s, bin_s=a.bin_s, gap_bridge_s=a.gap_bridge_s)

    def _capture_config(self, card, spec: SourceSpec) -> CaptureConfig:
        a = self.args
        return CaptureConfig(fps=card.fps, live=spec.live, realtime=a.realtime, queue_frames=a.queue_frames,
                             max_backoff_s=a.reconnect_max_backoff_s,
                             initial_backoff_s=min(DEFAULT_INITIAL_BACKOFF_S, a.reconnect_max_backoff_s),
                             give_up_s=a.give_up_s, max_frames=a.max_frames)

    def _open_outputs(self) -> None:
        from stream.notify import notifier_from_env
        from stream.outputs.metrics import Metrics
        from stream.outputs.publisher import Publisher

        a = self.args
        if not a.no_metrics and a.metrics_port:
            if not 0 < a.metrics_port < 65536:
                raise UserError(f"--metrics-port {a.metrics_port}: must be 1..65535 (0 disables)")
            self.metrics = Metrics(a.metrics_port, addr=a.metrics_addr)
        if not a.no_zmq:
            self.publisher = Publisher(a.zmq)
        if self.control_endpoint is not None:
            from stream.control import ControlServer

            self.control = ControlServer(self.control_endpoint, self._control,
                                         legacy_state=self.publisher.state_reply if self.publisher else None,
                                         token=self.control_token)
        from stream.outputs.results import ResultsTable

        self.results = ResultsTable(self.out)
        self.notifier = notifier_from_env()
        if a.web is not None or a.web_token_file is not None:
            self._open_web()

    def _open_web(self) -> None:
        """--web: the page's server; arena edits are saved to <out>/arenas.json for the next run."""
        from stream.arena_finder import arena_tools
        from stream.web import WebState, start_web

        if self.args.web is None:
            raise UserError("--web-token-file goes with --web [ADDR]")
        self.web = start_web(self.args.web, self.args.web_token_file, WebState(
            out_dir=self.out, arena_file=self.out / "arenas.json", preview=self.args.preview,
            arena_tools=arena_tools()))
        if not self.args.quiet:
            print(f"stream-run: web page on {self.web.url}", flush=True)

    def _control(self, request: dict) -> dict:
        """A stream-ctl request, answered from the control thread."""
        book = self.book
        if book is None:
            return {"ok": False, "error": "no source is running yet (the model is loading); try again in a moment"}
        return book.command(request)

    # -- running ------------------------------------------------------------------------------------
    def _run_sources(self, sources: list[_Source], card, model_dir: Path) -> int:
        from stream.flow import FlowConfig, TVL1
        from stream.pipeline import look_ahead_s

        a = self.args
        engine = self.engine
        flow = TVL1(FlowConfig(**card.flow), device=engine.device)
        if self.metrics is not None:
            self.metrics.frame_period_s = 1.0 / card.fps
            self.metrics.model_fps.set(card.fps)
            if self.publisher is not None:
                self.metrics.zmq_dropped_count = lambda: self.publisher.dropped
            self.metrics.engine_info.info({"engine": str(engine.name), "device": str(engine.device),
                                           "model": card.name, "input_size_px": str(card.input_size_px),
                                           "fps": str(card.fps), "stride": str(a.stride)})
        self.notifier.ready(f"{card.name} on {engine.name}, {len(sources)} source(s)")
        if not a.quiet:
            print(f"stream-run: model {card.name} ({', '.join(card.classes)}) on {engine.name}/{engine.device}; "
                  f"decisions lag capture by >= {look_ahead_s(card.fps):.2f} s (7-frame look-ahead at {card.fps:g} fps)"
                  + (f"; model on every {a.stride}th frame" if a.stride > 1 else ""), flush=True)
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

    def _run_one(self, source: _Source, card, flow, *, multi: bool) -> int:
        """One source: its trials start, the pipeline runs, the trials end with their summaries."""
        from stream.outputs.base import broadcast
        from stream.outputs.console import summary_table
        from stream.input_check import InputReference
        from stream.pipeline import Pipeline, PipelineConfig

        a = self.args
        capture = self._open_capture(source, card)
        if isinstance(capture, int):
            return capture  # a live source that never came: nothing was written
        book, live_like = self._trial_book(source, card)
        own = self._source_outputs(source, card, capture, multi=multi)  # closed at the end of this source
        outputs = [own[0], self.results, *(o for o in (self.publisher, self.metrics) if o is not None), *own[1:]]
        if self.web is not None:
            from stream.web import WebOutput

            outputs.append(WebOutput(self.web.state))
        if self.metrics is not None:
            from stream.outputs.metrics import camera_label

            self.metrics.start_source(camera_label(source.spec.kind, str(source.spec.location)),
                                      [ar.id for ar in source.arenas], list(card.classes))
        write_error: OutputWriteError | None = None
        info: dict = {}
        try:
            if live_like:
                for trial in book.resume_running():
                    broadcast(outputs, "on_trial_start", trial)
            if source.identity is not None:
                write_source_identity(source.out_dir, source.identity)  # what --resume will check
            pipeline = Pipeline(
                self.engine, flow, source.arenas, book.arenas,
                PipelineConfig(fps=card.fps, size_px=self.engine.input_size_px, stride_frames=a.stride,
                               flow_warm_start=not a.no_flow_warm_start,
                               adaptive_stride=source.spec.live or a.realtime,  # where frames can be dropped
                               max_stride_frames=a.max_stride),
                outputs=outputs, trials=book, heartbeat=self.notifier.watchdog, stop_event=self.stop_event,
                capture_stats=capture.stats,
                input_reference=InputReference(model=card.name, classes=tuple(card.classes), fps=card.fps,
                                               input_stats=card.input_stats),
            )
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
                ended = [(item.trial, {**item.summary, "run": info}) for _, item in book.end_all(result.end_reason)
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
        if not a.quiet and ended:
            print(summary_table(ended, list(card.classes), str(source.spec), source.out_dir, run=info), flush=True)
            print(f"results: {self.results.path} ({len(self.results.rows)} trials)", flush=True)
        if result.gave_up or result.error:
            print(f"stream-run: error: {result.error or 'capture failed'}", file=sys.stderr, flush=True)
            return EXIT_FAILED
        return EXIT_OK

    def _trial_book(self, source: _Source, card):
        """The source's trials: mode, schedule rows, provenance; (book, whether the source runs in real time)."""
        from stream.trials import TrialBook

        book = TrialBook([ar.id for ar in source.arenas], list(card.classes), self._decision_config(card),
                         mode=self.trial_mode, out_dir=source.out_dir, source=str(source.spec),
                         schedule=self.schedule_of.get(source.spec.location, []),
                         summary_extra=lambda trial: {"provenance": self._provenance(source, card, trial)})
        # a camera, or a video paced like one: a restart continues the trial that was running
        live_like = source.spec.live or self.args.realtime
        book.resume_on_stop = live_like and self.trial_mode != "now"
        return book, live_like

    def _provenance(self, source: _Source, card, trial) -> dict:
        """What produced a trial's figures: model and checksum, package version, ROI, source, flow."""
        from stream import __version__

        arena = next(ar for ar in source.arenas if ar.id == trial.arena_id)
        roi = f"{arena.roi.x},{arena.roi.y},{arena.roi.w},{arena.roi.h}" if arena.roi is not None else "full frame"
        from stream.outputs.results import COLUMNS_VERSION
        from stream.recording_time import recording_start_utc

        return {"model": card.name, "model_sha256": self.model_sha256, "swim_stream_version": __version__,
                "roi": roi, "source": str(source.spec), "start_utc": trial.start_utc, "flow": dict(card.flow),
                "flow_warm_start": not self.args.no_flow_warm_start, "stride_frames": self.args.stride,
                "recording_start_utc": recording_start_utc(source.spec.location) if source.spec.kind == "file" else None,
                "results_columns_version": COLUMNS_VERSION}

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

    def _open_capture(self, source: _Source, card) -> Capture | int:
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
        if not self.args.quiet and not getattr(self, "_said_waiting", False):
            self._said_waiting = True
            print(f"stream-run: {status}; retrying with back-off (--give-up-s {self.args.give_up_s:g})", flush=True)

    def _source_outputs(self, source: _Source, card, capture: Capture, *, multi: bool) -> list:
        """The outputs that belong to one source: its CSVs (first), its preview, the terminal."""
        from stream.outputs.console import ConsoleOutput
        from stream.outputs.csv_log import CsvOutput
        from stream.outputs.preview import PreviewWriter

        a = self.args
        spec = source.spec
        outputs: list = [CsvOutput(source.out_dir, list(card.classes), resume=a.resume)]
        try:
            if a.preview is not None:
                path = a.preview if not multi else a.preview.with_name(
                    f"{a.preview.stem}-{source.out_dir.name}{a.preview.suffix}")
                outputs.append(PreviewWriter(path, card.fps, capture.stats.frame_size, source.arenas))
            total = None
            show_bar = spec.kind == "file" and not a.realtime
            if show_bar:
                total = capture.stats.frame_count_estimate(card.fps)
                if a.max_frames:
                    total = min(total, a.max_frames) if total else a.max_frames
            outputs.append(ConsoleOutput(quiet=a.quiet, bar_total=total, bar_desc=Path(spec.location).name if show_bar
                                         else "", show_bar=show_bar,
                                         systemd_status=self.notifier.status if self.notifier is not None else None))
        except BaseException:
            for out in outputs:
                out.close()
            raise
        return outputs

    def _run_info(self, source: _Source, card, capture: Capture, result) -> dict:
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
            "stride_frames": self.args.stride,
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


if __name__ == "__main__":
    sys.exit(main())
