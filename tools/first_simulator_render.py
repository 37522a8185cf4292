"""Videos from the project's first simulator, the renderer of ``demo/synth_side.mp4``.

The bundled models' held-out families are drawn by today's simulator, so they test transfer to
unseen looks of one renderer only. The first simulator (commit ``FIRST_SIMULATOR``, before domain
randomization: one fixed look, a dark mouse drawn large, 160 px per cylinder) is another renderer
that no bundled model was trained on, and the demo video is one minute of it. This renders more
of it, with labels, from the repository's own history (no copy of the old code is kept)::

    python tools/first_simulator_render.py --out runs/first --seeds 11 12 13 14
    export-validate --model trained_models/fst-side-64 --videos runs/first/first_s*.mp4 \\
        --labels runs/first/first_s*.boris.csv --stride 4 --out runs/first/validate

``--seeds 0 --seconds 60 --arenas 1`` renders the demo's labels exactly (the video's bytes may
differ with the x264 build).
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import subprocess
import sys
import tempfile
from pathlib import Path

from stream.errors import UserError, cli_main

log = logging.getLogger("tools.first_simulator_render")

ROOT = Path(__file__).resolve().parents[1]
FIRST_SIMULATOR = "29aa54d"  # "FST video simulator ...": export/synth.py as the demo was rendered
SOURCE = "export/synth.py"


def first_simulator_source(root: Path = ROOT, commit: str = FIRST_SIMULATOR) -> str:
    """The first simulator's code from git history; a one-line error where there is none (an
    archive without ``.git``, a shallow clone)."""
    try:
        out = subprocess.run(["git", "-C", str(root), "show", f"{commit}:{SOURCE}"], capture_output=True, text=True,
                             check=False)
    except FileNotFoundError as exc:
        raise UserError("git is not installed: the first simulator is read from the repository's history") from exc
    if out.returncode != 0:
        raise UserError(f"{root}: commit {commit} ({SOURCE}) not found ({out.stderr.strip() or 'git show failed'}); "
                        "a full clone of the repository is needed (git fetch --unshallow)")
    return out.stdout


def render(out: Path, seeds: list[int], seconds: float, arenas: int, view: str = "side", root: Path = ROOT) -> list[Path]:
    """Render one video per seed into ``out`` as ``first_<view>_s<seed>.mp4`` (side: ``first_s<seed>``)
    with its labels, BORIS export and arenas file; returns the videos."""
    source = first_simulator_source(root)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "first_simulator.py"
        path.write_text(source)
        spec = importlib.util.spec_from_file_location("first_simulator", path)
        module = importlib.util.module_from_spec(spec)
        assert spec.loader is not None
        sys.modules[spec.name] = module  # its dataclasses look their module up while it loads
        try:
            spec.loader.exec_module(module)
        finally:
            sys.modules.pop(spec.name, None)
        videos = []
        for seed in seeds:
            name = f"first_s{seed}" if view == "side" else f"first_{view}_s{seed}"
            code = module.main(["--view", view, "--seconds", f"{seconds:g}", "--arenas", str(arenas),
                                "--seed", str(seed), "--name", name, "--out", str(out)])
            if code:
                raise UserError(f"the first simulator failed on seed {seed} (exit {code})")
            videos.append(out / f"{name}.mp4")
    return videos


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="folder for the videos and their labels")
    p.add_argument("--view", choices=("side", "top"), default="side", help="camera view (default: side)")
    p.add_argument("--seeds", type=int, nargs="+", default=[11, 12, 13, 14], help="one video per seed (default: 11-14)")
    p.add_argument("--seconds", type=float, default=40.0, help="length of each video (default: 40)")
    p.add_argument("--arenas", type=int, default=2, help="cylinders side by side (default: 2)")
    return p


@cli_main("first_simulator_render")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.seconds <= 0 or not 1 <= args.arenas <= 8:
        raise UserError("--seconds must be > 0 and --arenas 1-8")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for video in render(args.out, args.seeds, args.seconds, args.arenas, args.view):
        log.info("%s", video)
    return 0


if __name__ == "__main__":
    sys.exit(main())
