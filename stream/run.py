"""``stream-run``: watch a forced swim test live (camera, RTSP/HTTP) or score recordings (``--video``).

Everything a run needs is checked before the first frame is processed: the output folder is
writable, the ZeroMQ and metrics ports are free, every video opens and has a frame, the arenas fit
the frame, the model's checksum matches its card. A camera or stream is opened last, once the
engine is warm, so its first frames are fresh; systemd's READY=1 is sent just before that. A camera
or stream that is not there yet (an IP camera booting after a power cut) is retried with back-off
for up to ``--give-up-s`` (0: until stopped), with systemd's STATUS saying so and its watchdog fed.
Then one loop per source runs ``stream.pipeline.Pipeline``; its outputs are per-arena CSVs and summary JSONs under ``--out``,
ZeroMQ messages, Prometheus metrics and an optional annotated preview.

Settings come from the flags or from a TOML file (``--config FILE.toml``: one table per group of
``stream.run_config.RunConfig``; flags typed on the command line win over the file). This module is
only the parser: ``stream.run_config`` checks the settings, ``stream.runner`` runs them.

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
import logging
import sys
from pathlib import Path

from stream.capture import DEFAULT_GIVE_UP_S, DEFAULT_INITIAL_BACKOFF_S, DEFAULT_MAX_BACKOFF_S, DEFAULT_QUEUE_FRAMES, quiet_opencv_logging
from stream.control import DEFAULT_CONTROL_ENDPOINT
from stream.decisions import BIN_S_DEFAULT, GAP_BRIDGE_S_DEFAULT, SMOOTHING_MODES
from stream.errors import cli_main
from stream.outputs.metrics import DEFAULT_METRICS_PORT
from stream.outputs.publisher import DEFAULT_ENDPOINT as DEFAULT_ZMQ_ENDPOINT
from stream.run_config import (ADAPT_CLIPS_DEFAULT, METRICS_ADDR_DEFAULT, SCORING_WINDOW_S_DEFAULT, SMOOTHING_DEFAULT, SMOOTHING_WINDOW_DEFAULT,
                               TEST_DURATION_S_DEFAULT, RunConfig, given_dests, read_toml)
from stream.runner import DEFAULT_MODEL_NAME, EXIT_FAILED, EXIT_OK, MIN_BOUT_S_DEFAULT, default_model_dir, run
from stream.trials import TRIAL_MODES
from stream.version import add_version_argument
from stream.web.security import DEFAULT_WEB_ADDR

__all__ = ["main", "build_parser", "config_from_argv", "default_model_dir", "EXIT_OK", "EXIT_FAILED"]

def build_parser() -> argparse.ArgumentParser:
    from stream.engine import ENGINE_KINDS

    p = argparse.ArgumentParser(prog="stream-run", description=__doc__.splitlines()[0].replace("``", ""))
    add_version_argument(p)
    p.add_argument("--config", type=Path, default=None, metavar="FILE.toml",
                   help="settings from a TOML file (tables [source], [arenas], [model], [decisions], [trials], "
                        "[outputs], [web]; see systemd/swim-stream.toml.example); flags given here win over it")
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

    m.add_argument("--adapt", type=int, nargs="?", const=ADAPT_CLIPS_DEFAULT, default=None, metavar="CLIPS",
                   help="estimate the model's BatchNorm statistics again on CLIPS of the source's own unlabelled clips "
                        f"(AdaBN; default {ADAPT_CLIPS_DEFAULT}): a recorded video before it is scored; a camera or stream from "
                        "the first clips its running trials give (one per arena a second), then the adapted model takes over. "
                        "The adapted model is kept in the run folder (adapted-model/) and credited in results.csv")

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
    d.add_argument("--smoothing-window", type=int, default=SMOOTHING_WINDOW_DEFAULT, metavar="FRAMES", help="moving-average window (default: %(default)s)")
    d.add_argument("--min-bout-s", type=float, default=None,
                   help=f"shorter immobility is counted as mobile (default: the model card's fitted value, "
                        f"else {MIN_BOUT_S_DEFAULT:g} s; DBscorer uses 2)")
    d.add_argument("--test-duration-s", "--test-duration", type=float, default=TEST_DURATION_S_DEFAULT, dest="test_duration_s",
                   help="test length in seconds (default: %(default)s)")
    d.add_argument("--scoring-window-s", "--scoring-window", type=float, default=SCORING_WINDOW_S_DEFAULT, dest="scoring_window_s",
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
    o.add_argument("--metrics-addr", default=METRICS_ADDR_DEFAULT, help="address the metrics server listens on (default: %(default)s)")
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


def config_from_argv(argv: list[str] | None = None) -> RunConfig:
    """The run's configuration from the command line (and ``--config FILE``: flags typed win over it)."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    if args.config is None:
        return RunConfig.from_args(args)
    return RunConfig.from_args(args, base=read_toml(args.config), given=given_dests(parser, argv))


@cli_main("stream-run")
def main(argv: list[str] | None = None) -> int:
    config = config_from_argv(argv)
    verbose = config.outputs.verbose
    # warnings and errors only by default: a refused start must print ONE line on stderr
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if verbose < 2:
        quiet_opencv_logging()
    return run(config)


if __name__ == "__main__":
    sys.exit(main())
