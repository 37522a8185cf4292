"""Per-frame behaviour labels from the annotation files labs already have.

Every reader returns the same in-memory type, :class:`Annotation`: one integer label per video
frame (``-1`` = not labelled) plus the class names the integers index. Sparse labelling is
first-class: a frame nobody labelled stays ``-1`` and is never trained or scored on.

Formats (``read_annotations`` detects which from the header):

* per-frame CSV: ``frame,label`` (optionally ``frame,arena,label`` for several arenas in one
  video, and an ignored ``time_s`` column) or one-hot ``frame,<class1>,<class2>,...``;
* BORIS tabular events export (one row per event; ``Behavior type`` / ``Status`` = START, STOP
  or POINT at ``Time`` seconds; BORIS 7 and 8 column names; CSV or TSV; ``Subject`` = arena);
* BORIS aggregated events export (one row per bout: ``Start (s)``, ``Stop (s)``, ``Duration (s)``);
* DeepEthogram label CSV (one row per frame, one column per behaviour, 1/0, -1 = unlabelled, and
  a ``background`` column);
* the Jhuang et al. 2010 clipped database: a folder of ``.mpg`` clips, one behaviour per clip,
  named by a file-name token (``d``, ``e``, ``g``, ``ha``, ``he``, ``r``, ``rs``, ``w`` or the full
  word) or by the folder the clip sits in.

Bad input raises :class:`AnnotationError` naming the file and line; nothing is dropped silently.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stream.errors import UserError

__all__ = [
    "Annotation",
    "AnnotationError",
    "SIDE_CLASSES",
    "TOP_CLASSES",
    "JHUANG_CLASSES",
    "UNLABELLED",
    "read_annotations",
    "read_frame_csv",
    "read_boris_tabular",
    "read_boris_aggregated",
    "read_deepethogram",
    "read_jhuang_clips",
    "write_frame_csv",
    "write_boris_tabular",
    "write_boris_aggregated",
    "write_deepethogram",
    "bouts",
]

log = logging.getLogger(__name__)

UNLABELLED = -1
SIDE_CLASSES = ["swim", "struggle", "float"]
TOP_CLASSES = ["mobile", "immobile"]
# Jhuang et al. 2010 (Nature Communications 1:68) clipped database: the eight behaviours and the
# short tokens its clip names use.
JHUANG_CLASSES = ["drink", "eat", "groom", "hang", "micromovement", "rear", "rest", "walk"]
JHUANG_TOKENS = {
    "d": "drink", "drink": "drink",
    "e": "eat", "eat": "eat",
    "g": "groom", "groom": "groom",
    "ha": "hang", "hang": "hang",
    "he": "micromovement", "micromovement": "micromovement", "micro-movement": "micromovement",
    "head": "micromovement",
    "r": "rear", "rear": "rear",
    "rs": "rest", "rest": "rest",
    "w": "walk", "walk": "walk",
}  # fmt: skip
JHUANG_VIDEO_SUFFIXES = (".mpg", ".mpeg", ".avi", ".mp4")
# Two fps values closer than this are the same rate written with different rounding (29.97 vs
# 29.970029...); anything further apart means the labels were timed against another video.
FPS_TOLERANCE = 0.01
# BORIS writes times with 3 decimals; an event within this many frames past the end of the video
# is rounding, not a label past the end.
END_SLACK_FRAMES = 1
HEADER_SCAN_LINES = 40  # BORIS 7 puts a metadata block above the header row
KNOWN_TASKS = (SIDE_CLASSES, TOP_CLASSES)


class AnnotationError(UserError):
    """An annotation file that cannot be turned into per-frame labels (message names file:line)."""


@dataclass
class Annotation:
    """Per-frame labels of one video (or one arena of a video).

    ``labels[i]`` indexes ``classes`` for frame ``i``; ``-1`` means nobody labelled that frame.
    """

    classes: list[str]
    labels: np.ndarray  # (num_frames,) int64, -1 = unlabelled
    source: Path
    subject: str | None = None  # BORIS subject / arena name; None when the file has one animal
    fps: float | None = None
    media_file: str | None = None  # video the labels belong to, when the file says so
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if self.labels.ndim != 1:
            raise ValueError("labels must be one-dimensional")
        if self.labels.size and (self.labels.max() >= len(self.classes) or self.labels.min() < UNLABELLED):
            raise ValueError("labels out of range of classes")

    @property
    def num_frames(self) -> int:
        return int(self.labels.shape[0])

    def remap(self, classes: Sequence[str]) -> "Annotation":
        """The same labels indexing ``classes`` (a superset of the labels actually used)."""
        classes = list(classes)
        missing = sorted({self.classes[i] for i in np.unique(self.labels) if i >= 0} - set(classes))
        if missing:
            raise AnnotationError(f"{self.source}: labels {missing} are not among the classes {classes}")
        table = np.array([classes.index(c) if c in classes else UNLABELLED for c in self.classes] + [UNLABELLED])
        return Annotation(classes, table[self.labels], self.source, self.subject, self.fps, self.media_file, dict(self.extra))


# ----------------------------------------------------------------------------------------------
# helpers


def _err(path: Path, line: int | None, msg: str) -> AnnotationError:
    where = f"{path}:{line}" if line is not None else str(path)
    return AnnotationError(f"{where}: {msg}")


def _norm(name: str) -> str:
    return name.strip().strip("\ufeff").lower()


def _resolve_classes(path: Path, used: Sequence[str], classes: Sequence[str] | None) -> list[str]:
    """Classes given by the caller, else a known task's order, else order of first use."""
    if classes is not None:
        return list(classes)
    used_set = set(used)
    for task in KNOWN_TASKS:
        if used_set <= set(task):
            return list(task)
    seen: list[str] = []
    for u in used:
        if u not in seen:
            seen.append(u)
    return seen


def _class_index(path: Path, line: int, name: str, classes: Sequence[str]) -> int:
    if name in classes:
        return classes.index(name)
    lowered = [c.lower() for c in classes]
    if name.lower() in lowered:
        return lowered.index(name.lower())
    raise _err(path, line, f"unknown label {name!r}; expected one of {list(classes)} (pass classes= to rename)")


def _read_rows(path: Path) -> tuple[list[str], list[list[str]], int]:
    """Rows of a CSV or TSV file: (header, data rows, 1-based line number of the header).

    The header is the first line that looks like one (BORIS 7 writes metadata above it).
    """
    try:
        text = path.read_text(encoding="utf-8-sig", errors="strict")
    except UnicodeDecodeError:
        text = path.read_text(encoding="latin-1")
    except OSError as exc:
        raise AnnotationError(f"{path}: cannot read annotation file ({exc.strerror})") from exc
    lines = text.splitlines()
    if not lines:
        raise _err(path, None, "file is empty")
    delimiter = "\t" if lines[0].count("\t") > lines[0].count(",") else ","
    rows = list(csv.reader(io.StringIO(text), delimiter=delimiter))
    header_at = 0
    for i, row in enumerate(rows[:HEADER_SCAN_LINES]):
        names = {_norm(c) for c in row}
        if ("behavior" in names and ("time" in names or "start (s)" in names)) or "frame" in names:
            header_at = i
            break
    header = [c.strip().strip("\ufeff") for c in rows[header_at]]
    data = rows[header_at + 1 :]
    return header, data, header_at + 1


def _col(header: Sequence[str], *names: str) -> int | None:
    lowered = [_norm(h) for h in header]
    for n in names:
        if n.lower() in lowered:
            return lowered.index(n.lower())
    return None


def _float(path: Path, line: int, text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise _err(path, line, f"{what} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise _err(path, line, f"{what} {text!r} is not a finite number")
    return value


def _check_fps(path: Path, line: int, file_fps: float | None, fps: float | None) -> float:
    if file_fps is not None and file_fps > 0 and fps is not None and abs(file_fps - fps) > FPS_TOLERANCE:
        raise _err(path, line, f"the file says FPS {file_fps:g} but the video runs at {fps:g} fps; "
                   "were these labels made on another video?")  # fmt: skip
    chosen = fps if fps is not None else file_fps
    if chosen is None or chosen <= 0:
        raise _err(path, line, "no frame rate: the file has no FPS column, pass fps= (the video's frame rate)")
    return float(chosen)


def _to_frame(seconds: float, fps: float) -> int:
    # Event at time t covers the frame displayed at t; +1e-6 absorbs BORIS's 3-decimal rounding.
    return int(math.floor(seconds * fps + 1e-6 + 0.5)) if seconds > 0 else 0


def bouts(labels: np.ndarray) -> list[tuple[int, int, int]]:
    """Runs of equal labels as (label, start_frame, stop_frame_exclusive), unlabelled runs included."""
    labels = np.asarray(labels)
    if labels.size == 0:
        return []
    change = np.flatnonzero(np.diff(labels)) + 1
    starts = np.concatenate([[0], change])
    stops = np.concatenate([change, [labels.size]])
    return [(int(labels[s]), int(s), int(e)) for s, e in zip(starts, stops)]


# ----------------------------------------------------------------------------------------------
# per-frame CSV


def read_frame_csv(
    path: Path, *, num_frames: int | None = None, classes: Sequence[str] | None = None, fps: float | None = None
) -> list[Annotation]:
    """``frame,label`` / ``frame,arena,label`` / one-hot ``frame,<class>,...`` (empty label = unlabelled)."""
    path = Path(path)
    header, rows, header_line = _read_rows(path)
    fcol = _col(header, "frame")
    if fcol is None:
        raise _err(path, header_line, "no 'frame' column; expected 'frame,label' or one-hot 'frame,<class>,...'")
    lcol = _col(header, "label", "behavior", "behaviour")
    acol = _col(header, "arena", "subject")
    ignored = {fcol, acol, _col(header, "time_s"), _col(header, "time")} - {None}
    onehot_cols = [i for i in range(len(header)) if i not in ignored and i != lcol] if lcol is None else []
    if lcol is None and not onehot_cols:
        raise _err(path, header_line, "no 'label' column and no class columns")
    entries: dict[str | None, list[tuple[int, int, str]]] = {}
    for k, row in enumerate(rows):
        line = header_line + 1 + k
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) < len(header):
            raise _err(path, line, f"expected {len(header)} columns, found {len(row)}")
        try:
            frame = int(row[fcol])
        except ValueError:
            raise _err(path, line, f"frame {row[fcol]!r} is not an integer") from None
        if frame < 0:
            raise _err(path, line, f"negative frame {frame}")
        arena = row[acol].strip() if acol is not None else None
        if lcol is not None:
            name = row[lcol].strip()
        else:
            hot = []
            for c in onehot_cols:
                v = row[c].strip()
                if v not in ("", "0", "1", "-1", "0.0", "1.0"):
                    raise _err(path, line, f"column {header[c]!r}: expected 1/0, found {v!r}")
                if v in ("1", "1.0"):
                    hot.append(header[c])
            if len(hot) > 1:
                raise _err(path, line, f"frame {frame} has several labels {hot}; classes must be exclusive")
            name = hot[0] if hot else ""
        entries.setdefault(arena, []).append((line, frame, name))
    used = [n for e in entries.values() for (_, _, n) in e if n]
    if lcol is None and classes is None:
        used = [header[c] for c in onehot_cols]
    cls = _resolve_classes(path, used, classes)
    out = []
    for arena, items in entries.items():
        last = max((f for _, f, _ in items), default=-1)
        n = num_frames if num_frames is not None else last + 1
        labels = np.full(n, UNLABELLED, dtype=np.int64)
        seen = np.zeros(n, dtype=bool)
        for line, frame, name in items:
            if frame >= n:
                raise _err(path, line, f"frame {frame} is past the end of the video ({n} frames)")
            if seen[frame]:
                raise _err(path, line, f"frame {frame} is labelled twice" + (f" for arena {arena}" if arena else ""))
            seen[frame] = True
            if name:
                labels[frame] = _class_index(path, line, name, cls)
        out.append(Annotation(cls, labels, path, arena or None, fps))
    if not out:
        raise _err(path, None, "no rows")
    return out


def write_frame_csv(path: Path, annotations: Sequence[Annotation]) -> Path:
    """``frame,label`` for one annotation; ``frame,arena,label`` rows (arena-major) for several."""
    path = Path(path)
    several = len(annotations) > 1
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["frame", "arena", "label"] if several else ["frame", "label"])
        for i, a in enumerate(annotations):
            arena = a.subject or f"arena{i}"
            names = np.array(list(a.classes) + [""], dtype=object)[a.labels]
            for frame, name in enumerate(names):
                w.writerow([frame, arena, name] if several else [frame, name])
    return path


# ----------------------------------------------------------------------------------------------
# BORIS

BORIS_TABULAR_COLUMNS = [
    "Observation id", "Observation date", "Description", "Observation type", "Source",
    "Time offset (s)", "Media duration (s)", "FPS", "Subject", "Behavior", "Behavioral category",
    "Modifiers", "Behavior type", "Time", "Media file name", "Image index", "Image file path", "Comment",
]  # fmt: skip  (BORIS 8 "tabular events" export)
BORIS_AGGREGATED_COLUMNS = [
    "Observation id", "Observation date", "Description", "Observation type", "Source",
    "Time offset (s)", "Media duration (s)", "FPS", "Subject", "Observation duration by subject by observation",
    "Behavior", "Behavioral category", "Behavior type", "Start (s)", "Stop (s)", "Duration (s)",
    "Media file name", "Image index start", "Image index stop", "Comment start", "Comment stop",
]  # fmt: skip  (BORIS 8 "aggregated events" export)
NO_SUBJECT = {"", "no focal subject", "none"}


def _boris_common(path: Path, header: list[str], rows: list[list[str]], header_line: int, fps: float | None):
    """FPS, media length and media name columns shared by both BORIS exports."""
    fps_col = _col(header, "FPS", "FPS (frame/s)")
    len_col = _col(header, "Media duration (s)", "Total length", "Media duration")
    media_col = _col(header, "Media file name", "Media file", "Media file path", "Source")
    file_fps = None
    length_s = None
    media = None
    for k, row in enumerate(rows):
        line = header_line + 1 + k
        if fps_col is not None and fps_col < len(row) and row[fps_col].strip() not in ("", "NA"):
            # BORIS writes "25.0" or, with several media, "25.0;25.0"
            value = _float(path, line, row[fps_col].split(";")[0], "FPS")
            if file_fps is not None and abs(value - file_fps) > FPS_TOLERANCE:
                raise _err(path, line, f"FPS {value:g} differs from FPS {file_fps:g} on an earlier line")
            file_fps = value
            _check_fps(path, line, file_fps, fps)  # a mismatch names the first line that shows it
        if len_col is not None and len_col < len(row) and row[len_col].strip() not in ("", "NA"):
            length_s = _float(path, line, row[len_col].split(";")[0], "media duration")
        if media_col is not None and media_col < len(row) and row[media_col].strip():
            media = row[media_col].strip()
    chosen = _check_fps(path, header_line, file_fps, fps)
    return chosen, length_s, media


def _boris_finish(
    path: Path,
    spans: dict[str, list[tuple[int, float, float, str]]],  # subject -> (line, start_s, stop_s or start_s for POINT, behaviour)
    points: dict[str, list[tuple[int, float, str]]],
    fps: float,
    num_frames: int | None,
    length_s: float | None,
    media: str | None,
    classes: Sequence[str] | None,
) -> list[Annotation]:
    used = [b for v in spans.values() for (_, _, _, b) in v] + [b for v in points.values() for (_, _, b) in v]
    cls = _resolve_classes(path, used, classes)
    if num_frames is None:
        if length_s is not None and length_s > 0:
            num_frames = int(round(length_s * fps))
        else:
            last = max([_to_frame(s, fps) for v in spans.values() for (_, _, s, _) in v]
                       + [_to_frame(t, fps) + 1 for v in points.values() for (_, t, _) in v] + [0])  # fmt: skip
            num_frames = last
    out = []
    for subject in sorted(set(spans) | set(points), key=lambda s: (len(s), s)):
        labels = np.full(num_frames, UNLABELLED, dtype=np.int64)
        for line, start_s, stop_s, beh in sorted(spans.get(subject, []), key=lambda e: e[1]):
            c = _class_index(path, line, beh, cls)
            a, b = _to_frame(start_s, fps), _to_frame(stop_s, fps)
            if b > num_frames + END_SLACK_FRAMES:
                raise _err(path, line, f"{beh!r} ends at {stop_s:.3f} s (frame {b}), past the end of the video "
                           f"({num_frames} frames at {fps:g} fps)")  # fmt: skip
            b = min(b, num_frames)
            if np.any(labels[a:b] >= 0):
                other = cls[int(labels[a:b][labels[a:b] >= 0][0])]
                raise _err(path, line, f"{beh!r} at {start_s:.3f} s overlaps {other!r}" +
                           (f" for subject {subject!r}" if subject else "") + "; state events must not overlap")  # fmt: skip
            labels[a:b] = c
        for line, t, beh in points.get(subject, []):
            c = _class_index(path, line, beh, cls)
            f = _to_frame(t, fps)
            if f >= num_frames + END_SLACK_FRAMES:
                raise _err(path, line, f"point event {beh!r} at {t:.3f} s is past the end of the video")
            f = min(f, num_frames - 1)
            if labels[f] >= 0 and labels[f] != c:
                raise _err(path, line, f"point event {beh!r} at {t:.3f} s falls inside {cls[labels[f]]!r}")
            labels[f] = c
        out.append(Annotation(cls, labels, path, subject or None, fps, media))
    if not out:
        raise _err(path, None, "no events")
    return out


def _boris_events(path: Path, header: list[str], rows: list[list[str]], header_line: int, *needed: int):
    """Yield (line number, subject, row) for each non-blank event row of a BORIS export.

    Rows too short for the ``needed`` columns are refused naming the line; "No focal subject" and
    an empty Subject both become "" (a single-arena observation).
    """
    subj_col = _col(header, "Subject")
    for k, row in enumerate(rows):
        line = header_line + 1 + k
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) <= max(needed):
            raise _err(path, line, f"expected {len(header)} columns, found {len(row)}")
        subject = row[subj_col].strip() if subj_col is not None and subj_col < len(row) else ""
        yield line, ("" if subject.lower() in NO_SUBJECT else subject), row


def read_boris_tabular(
    path: Path, *, fps: float | None = None, num_frames: int | None = None, classes: Sequence[str] | None = None
) -> list[Annotation]:
    """BORIS "tabular events" export: START/STOP pairs become bouts, POINT events label one frame."""
    path = Path(path)
    header, rows, header_line = _read_rows(path)
    tcol = _col(header, "Time")
    bcol = _col(header, "Behavior")
    scol = _col(header, "Behavior type", "Status")
    if tcol is None or bcol is None or scol is None:
        raise _err(path, header_line, "not a BORIS tabular events export (needs Time, Behavior and "
                   "Behavior type/Status columns)")  # fmt: skip
    fps, length_s, media = _boris_common(path, header, rows, header_line, fps)
    open_: dict[tuple[str, str], tuple[int, float]] = {}
    spans: dict[str, list] = {}
    points: dict[str, list] = {}
    for line, subject, row in _boris_events(path, header, rows, header_line, tcol, bcol, scol):
        beh = row[bcol].strip()
        status = row[scol].strip().upper()
        t = _float(path, line, row[tcol], "Time")
        if t < 0:
            raise _err(path, line, f"negative time {t}")
        spans.setdefault(subject, [])
        if status == "START":
            if (subject, beh) in open_:
                raise _err(path, line, f"{beh!r} started twice without a STOP")
            open_[(subject, beh)] = (line, t)
        elif status == "STOP":
            if (subject, beh) not in open_:
                raise _err(path, line, f"STOP of {beh!r} without a START")
            sline, st = open_.pop((subject, beh))
            if t < st:
                raise _err(path, line, f"{beh!r} stops at {t} s before it starts at {st} s")
            spans[subject].append((sline, st, t, beh))
        elif status == "POINT":
            points.setdefault(subject, []).append((line, t, beh))
        else:
            raise _err(path, line, f"behavior type {status!r}: expected START, STOP or POINT")
    if open_:
        (subject, beh), (line, _) = next(iter(open_.items()))
        raise _err(path, line, f"{beh!r} starts but never stops")
    return _boris_finish(path, spans, points, fps, num_frames, length_s, media, classes)


def read_boris_aggregated(
    path: Path, *, fps: float | None = None, num_frames: int | None = None, classes: Sequence[str] | None = None
) -> list[Annotation]:
    """BORIS "aggregated events" export: one row per bout with Start (s) / Stop (s) / Duration (s)."""
    path = Path(path)
    header, rows, header_line = _read_rows(path)
    bcol = _col(header, "Behavior")
    start_col = _col(header, "Start (s)")
    stop_col = _col(header, "Stop (s)")
    type_col = _col(header, "Behavior type")
    if bcol is None or start_col is None or stop_col is None:
        raise _err(path, header_line, "not a BORIS aggregated events export (needs Behavior, Start (s), Stop (s))")
    fps, length_s, media = _boris_common(path, header, rows, header_line, fps)
    spans: dict[str, list] = {}
    points: dict[str, list] = {}
    for line, subject, row in _boris_events(path, header, rows, header_line, bcol, start_col, stop_col):
        beh = row[bcol].strip()
        start = _float(path, line, row[start_col], "Start (s)")
        kind = row[type_col].strip().upper() if type_col is not None else "STATE"
        stop_text = row[stop_col].strip()
        if kind == "POINT" or stop_text in ("", "NA"):
            points.setdefault(subject, []).append((line, start, beh))
            spans.setdefault(subject, [])
            continue
        stop = _float(path, line, stop_text, "Stop (s)")
        if stop < start:
            raise _err(path, line, f"{beh!r} stops at {stop} s before it starts at {start} s")
        spans.setdefault(subject, []).append((line, start, stop, beh))
    return _boris_finish(path, spans, points, fps, num_frames, length_s, media, classes)


def _boris_meta(a: Annotation, observation_id: str, media_file: str) -> dict[str, str]:
    fps = a.fps or 0.0
    return {
        "Observation id": observation_id,
        "Observation date": "2026-01-01 00:00:00",
        "Description": "swim-stream synthetic forced swim test",
        "Observation type": "Media file(s)",
        "Source": f"player #1:{media_file}",
        "Time offset (s)": "0.000",
        "Media duration (s)": f"{a.num_frames / fps:.3f}" if fps else "NA",
        "FPS": f"{fps:.3f}",
        "Subject": a.subject or "No focal subject",
        "Media file name": media_file,
    }


def _boris_bouts(annotations: Sequence[Annotation], observation_id: str,
                 media_file: str) -> Iterator[tuple[dict[str, str], Annotation, int, int, int]]:
    """(row metadata, annotation, label, start, stop) of every labelled bout, for both BORIS writers."""
    for a in annotations:
        if not a.fps:
            raise ValueError("writing BORIS needs Annotation.fps")
        meta = _boris_meta(a, observation_id, media_file)
        for label, start, stop in bouts(a.labels):
            if label >= 0:
                yield meta, a, label, start, stop


def write_boris_tabular(
    path: Path, annotations: Sequence[Annotation], *, media_file: str, observation_id: str = "obs1"
) -> Path:
    """BORIS 8 tabular events export (CSV): each labelled bout as a START and a STOP event.

    Times are frame_index / fps with 3 decimals, as BORIS writes them, and ``Image index`` is the
    frame index, so both read back to exactly the same frames.
    """
    path = Path(path)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=BORIS_TABULAR_COLUMNS)
        w.writeheader()
        for meta, a, label, start, stop in _boris_bouts(annotations, observation_id, media_file):
            for status, frame in (("START", start), ("STOP", stop)):
                w.writerow({**meta, "Behavior": a.classes[label], "Behavioral category": "",
                            "Modifiers": "", "Behavior type": status, "Time": f"{frame / a.fps:.3f}",
                            "Image index": str(frame), "Image file path": "NA", "Comment": ""})  # fmt: skip
    return path


def write_boris_aggregated(
    path: Path, annotations: Sequence[Annotation], *, media_file: str, observation_id: str = "obs1"
) -> Path:
    """BORIS 8 aggregated events export (CSV): one row per bout."""
    path = Path(path)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=BORIS_AGGREGATED_COLUMNS)
        w.writeheader()
        for meta, a, label, start, stop in _boris_bouts(annotations, observation_id, media_file):
            w.writerow({**meta, "Observation duration by subject by observation": meta["Media duration (s)"],
                        "Behavior": a.classes[label], "Behavioral category": "", "Behavior type": "STATE",
                        "Start (s)": f"{start / a.fps:.3f}", "Stop (s)": f"{stop / a.fps:.3f}",
                        "Duration (s)": f"{(stop - start) / a.fps:.3f}", "Image index start": str(start),
                        "Image index stop": str(stop), "Comment start": "", "Comment stop": ""})  # fmt: skip
    return path


# ----------------------------------------------------------------------------------------------
# DeepEthogram

DEG_BACKGROUND = "background"


def read_deepethogram(
    path: Path, *, num_frames: int | None = None, classes: Sequence[str] | None = None, fps: float | None = None
) -> list[Annotation]:
    """DeepEthogram label CSV: one row per frame, 1/0 per behaviour, -1 = unlabelled.

    A frame whose only 1 is ``background`` (none of the behaviours) is unlabelled for us unless
    ``background`` is one of ``classes``: our tasks have exhaustive classes, so "none of them"
    is an annotation gap, and training on it would teach a class nobody asked for.
    """
    path = Path(path)
    header, rows, header_line = _read_rows(path)
    lowered = [_norm(h) for h in header]
    if DEG_BACKGROUND not in lowered:
        raise _err(path, header_line, "not a DeepEthogram label file (no 'background' column)")
    first_is_index = lowered[0] in ("", "unnamed: 0", "frame", "index")
    beh_cols = [i for i in range(len(header)) if not (i == 0 and first_is_index)]
    names = [header[i].strip() for i in beh_cols]
    used = [n for n in names if _norm(n) != DEG_BACKGROUND]
    cls = _resolve_classes(path, used, classes)
    n_rows = sum(1 for r in rows if r and any(c.strip() for c in r))
    if num_frames is not None and n_rows > num_frames:
        raise _err(path, header_line + 1 + num_frames, f"{n_rows} label rows but the video has {num_frames} frames")
    n = num_frames if num_frames is not None else n_rows
    labels = np.full(n, UNLABELLED, dtype=np.int64)
    background_only = 0
    frame = 0
    for k, row in enumerate(rows):
        line = header_line + 1 + k
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) < len(header):
            raise _err(path, line, f"expected {len(header)} columns, found {len(row)}")
        hot = []
        for i, name in zip(beh_cols, names):
            v = row[i].strip()
            try:
                value = int(float(v))
            except ValueError:
                raise _err(path, line, f"column {name!r}: expected 1, 0 or -1, found {v!r}") from None
            if value not in (-1, 0, 1):
                raise _err(path, line, f"column {name!r}: expected 1, 0 or -1, found {v!r}")
            if value == 1:
                hot.append(name)
        behaviours = [h for h in hot if _norm(h) != DEG_BACKGROUND or DEG_BACKGROUND in [c.lower() for c in cls]]
        if len(behaviours) > 1:
            raise _err(path, line, f"frame {frame} has several behaviours {behaviours}; classes must be exclusive")
        if behaviours:
            labels[frame] = _class_index(path, line, behaviours[0], cls)
        elif hot:
            background_only += 1
        frame += 1
    if background_only:
        log.info("%s: %d background-only frames left unlabelled", path, background_only)
    return [Annotation(cls, labels, path, None, fps)]


def write_deepethogram(path: Path, annotation: Annotation) -> Path:
    """DeepEthogram label CSV (pandas-style unnamed index column, background column first)."""
    path = Path(path)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["", DEG_BACKGROUND, *annotation.classes])
        k = len(annotation.classes)
        for frame, lab in enumerate(annotation.labels):
            if lab < 0:
                w.writerow([frame, -1, *([-1] * k)])
            else:
                w.writerow([frame, 0, *[1 if c == lab else 0 for c in range(k)]])
    return path


# ----------------------------------------------------------------------------------------------
# Jhuang et al. 2010 clipped database


def _count_frames(path: Path) -> int:
    import cv2

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise _err(path, None, "cannot open video clip")
    n = 0
    while cap.grab():
        n += 1
    cap.release()
    return n


def _jhuang_label(path: Path, root: Path) -> str:
    for parent in path.relative_to(root).parents:
        name = parent.name.lower()
        if name in JHUANG_TOKENS:
            return JHUANG_TOKENS[name]
    tokens = [t for t in re.split(r"[_\-.\s]+", path.stem.lower()) if t]
    found = {JHUANG_TOKENS[t] for t in tokens if t in JHUANG_TOKENS}
    if len(found) != 1:
        what = "no behaviour token" if not found else f"several behaviour tokens {sorted(found)}"
        raise _err(path, None, f"{what} in the clip name; name clips like 'clip_<d|e|g|ha|he|r|rs|w>_01.mpg' "
                   "or put them in a folder per behaviour")  # fmt: skip
    return found.pop()


def read_jhuang_clips(
    root: Path, *, classes: Sequence[str] | None = None, fps: float | None = None, count_frames: bool = True
) -> list[Annotation]:
    """One :class:`Annotation` per clip, every frame labelled with the clip's behaviour."""
    root = Path(root)
    clips = sorted(p for p in root.rglob("*") if p.suffix.lower() in JHUANG_VIDEO_SUFFIXES and p.is_file())
    if not clips:
        raise _err(root, None, f"no video clips ({', '.join(JHUANG_VIDEO_SUFFIXES)}) in this folder")
    cls = list(classes) if classes is not None else list(JHUANG_CLASSES)
    out = []
    for clip in clips:
        name = _jhuang_label(clip, root)
        c = _class_index(clip, 1, name, cls) if name in cls or name.lower() in [x.lower() for x in cls] else None
        if c is None:
            raise _err(clip, None, f"behaviour {name!r} is not among the classes {cls}")
        n = _count_frames(clip) if count_frames else 1
        out.append(Annotation(cls, np.full(n, c, dtype=np.int64), clip, None, fps, clip.name))
    return out


# ----------------------------------------------------------------------------------------------
# auto-detection


def _detect(path: Path) -> str:
    if path.is_dir():
        return "jhuang"
    header, _, _ = _read_rows(path)
    names = {_norm(h) for h in header}
    if "start (s)" in names and "behavior" in names:
        return "boris_aggregated"
    if "behavior" in names and "time" in names:
        return "boris_tabular"
    if DEG_BACKGROUND in names:
        return "deepethogram"
    if "frame" in names:
        return "frame_csv"
    raise _err(path, 1, "unrecognised annotation format; expected a per-frame CSV (frame,label), a BORIS "
               "tabular or aggregated events export, a DeepEthogram label CSV or a folder of clips")  # fmt: skip


def read_annotations(
    path: Path | str,
    *,
    fps: float | None = None,
    num_frames: int | None = None,
    classes: Sequence[str] | None = None,
) -> list[Annotation]:
    """Read any supported annotation file (or clip folder); one Annotation per subject/arena/clip.

    ``fps`` is the video's frame rate (needed for BORIS files without an FPS column and checked
    against it when present); ``num_frames`` the video's length (labels past it are an error,
    frames after the last label stay unlabelled); ``classes`` fixes the class order.
    """
    path = Path(path)
    if not path.exists():
        raise AnnotationError(f"{path}: annotation file not found")
    kind = _detect(path)
    log.debug("%s: reading as %s", path, kind)
    if kind == "jhuang":
        return read_jhuang_clips(path, classes=classes, fps=fps)
    if kind == "boris_tabular":
        return read_boris_tabular(path, fps=fps, num_frames=num_frames, classes=classes)
    if kind == "boris_aggregated":
        return read_boris_aggregated(path, fps=fps, num_frames=num_frames, classes=classes)
    if kind == "deepethogram":
        return read_deepethogram(path, num_frames=num_frames, classes=classes, fps=fps)
    return read_frame_csv(path, num_frames=num_frames, classes=classes, fps=fps)
