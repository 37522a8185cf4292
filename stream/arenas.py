"""Arenas: the regions of interest of one frame, each holding one mouse (one swim cylinder).

Every arena gets its own ring buffer, decisions and output files, so its id ends up in file
names and ZeroMQ topics and must be a plain token.

Arena file format (JSON, or the same structure in YAML); the simulator writes
``<video stem>.arenas.json`` next to each video it renders::

    {"arenas": [{"id": "A1", "roi": [x, y, w, h]}, {"id": "A2", "roi": [x, y, w, h]}]}

``roi`` may also be the string ``"x,y,w,h"``; ``"name"`` is accepted for ``"id"`` (export-synth
writes ``name``), and other top-level keys (video size, fps, classes) are ignored. Without any ROI
the whole frame is one arena, ``arena0``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from stream.errors import UserError
from stream.preprocess import Roi

__all__ = ["Arena", "DEFAULT_ARENA_ID", "ARENA_FILE_SUFFIX", "arenas_from_data", "arenas_from_rois", "load_arena_file",
           "sidecar_arena_file", "resolve_arenas", "check_arenas_fit"]

DEFAULT_ARENA_ID = "arena0"
ARENA_FILE_SUFFIX = ".arenas.json"  # what the simulator writes next to <name>.mp4
ARENA_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # safe in file names and ZeroMQ topics
MIN_ROI_SIZE_PX = 8  # smaller crops carry no usable mouse; almost certainly a typo


@dataclass(frozen=True)
class Arena:
    id: str
    roi: Roi | None  # None: the whole frame

    def __post_init__(self) -> None:
        if not ARENA_ID_PATTERN.match(self.id):
            raise UserError(f"arena id {self.id!r}: use letters, digits, '_', '.', '-' (max 64 characters)")


def _check_unique(arenas: list[Arena], where: str) -> list[Arena]:
    ids = [a.id for a in arenas]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise UserError(f"{where}: duplicate arena id(s) {', '.join(dupes)}")
    for a in arenas:
        if a.roi is not None and (a.roi.w < MIN_ROI_SIZE_PX or a.roi.h < MIN_ROI_SIZE_PX):
            raise UserError(f"{where}: arena {a.id} roi {a.roi.w}x{a.roi.h} px is smaller than {MIN_ROI_SIZE_PX} px")
    return arenas


def arenas_from_rois(rois: Sequence[str]) -> list[Arena]:
    """``--roi x,y,w,h`` given N times -> arenas ``arena0`` .. ``arena{N-1}`` in that order."""
    arenas = []
    for i, text in enumerate(rois):
        try:
            roi = Roi.parse(text)
        except ValueError as exc:
            raise UserError(f"--roi {text}: {exc}") from exc
        arenas.append(Arena(f"arena{i}", roi))
    return _check_unique(arenas, "--roi")


def _is_whole_number(value: object) -> bool:
    """4 and 4.0 are pixels; ``true`` is not (JSON and YAML booleans are ints in Python)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return math.isfinite(value) and float(value) == int(value)


def load_arena_file(path: str | Path) -> list[Arena]:
    """Read a JSON (or YAML, by extension) arena file; one-line UserError on any problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"arena file {path}: cannot be read ({exc.strerror or exc})") from exc
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # noqa: BLE001 - any parse error is the user's file
        raise UserError(f"arena file {path}: not valid {'YAML' if path.suffix.lower() in ('.yaml', '.yml') else 'JSON'} "
                        f"({str(exc).splitlines()[0]})") from exc
    return arenas_from_data(data, f"arena file {path}")


def arenas_from_data(data: object, where: str) -> list[Arena]:
    """The arenas of an arena file's parsed content (``{"arenas": [...]}``); one-line UserError naming ``where``.

    Also what the web page's arena editor sends (``stream.web``): one validation for both.
    """
    entries = data.get("arenas") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise UserError(f'{where}: expected {{"arenas": [{{"id": "A1", "roi": [x, y, w, h]}}, ...]}}')
    arenas = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "roi" not in entry:
            raise UserError(f"{where}: entry {i} needs a \"roi\": [x, y, w, h]")
        raw = entry["roi"]
        try:
            if isinstance(raw, str):
                roi = Roi.parse(raw)
            elif isinstance(raw, (list, tuple)) and len(raw) == 4 and all(_is_whole_number(v) for v in raw):
                roi = Roi(*(int(v) for v in raw))
            else:
                raise ValueError(f"roi {raw!r}: expected four integers [x, y, w, h]")
        except (ValueError, TypeError) as exc:
            raise UserError(f"{where}: entry {i}: {exc}") from exc
        arenas.append(Arena(str(entry.get("id", entry.get("name", f"arena{i}"))), roi))
    return _check_unique(arenas, where)


def sidecar_arena_file(video: str | Path) -> Path | None:
    """The simulator's ``<stem>.arenas.json`` next to a video, if there is one."""
    video = Path(video)
    candidate = video.with_name(video.stem + ARENA_FILE_SUFFIX)
    return candidate if candidate.is_file() else None


def resolve_arenas(*, rois: Sequence[str] = (), arena_file: str | Path | None = None,
                   video: str | Path | None = None) -> list[Arena]:
    """Explicit ``--roi``s, else ``--arenas FILE``, else the video's sidecar file, else the whole frame."""
    if rois and arena_file:
        raise UserError("give either --roi (repeatable) or --arenas FILE, not both")
    if rois:
        return arenas_from_rois(rois)
    if arena_file:
        return load_arena_file(arena_file)
    if video is not None:
        sidecar = sidecar_arena_file(video)
        if sidecar is not None:
            return load_arena_file(sidecar)
    return [Arena(DEFAULT_ARENA_ID, None)]


def check_arenas_fit(arenas: Sequence[Arena], width: int, height: int, source: str) -> None:
    """Every ROI must lie inside the frame; checked once the first frame's size is known."""
    for a in arenas:
        if a.roi is not None and not a.roi.fits(width, height):
            r = a.roi
            raise UserError(f"arena {a.id} roi {r.x},{r.y},{r.w},{r.h} does not fit the {width}x{height} frames of {source}")
