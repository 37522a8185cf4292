"""A run's output folder: earlier results are never overwritten; ``--resume`` only continues the same video.

Why: a second ``stream-run --out X`` into a folder that held a run used to truncate its CSVs with a
warning and exit 0; for a live test that cannot be undone. And ``--resume`` with another video
appended its rows to the first video's CSVs. So, before the engine is even built:

* a folder that holds results of an arena this run would write (``<arena>.frames.csv`` or
  ``<arena>.summary.json``) is refused with one line naming the choices, unless ``--resume``;
* every file run records what it scores in ``source.json`` (absolute path, size in bytes, sha256
  of the first decoded frame) before its first row, and ``--resume`` refuses a folder whose record
  is missing or names another video.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from stream.atomic import atomic_write
from stream.errors import UserError, output_error

__all__ = ["SOURCE_FILE", "check_no_results", "check_same_source", "frame_sha256", "source_identity",
           "write_source_identity"]

SOURCE_FILE = "source.json"  # what a file run scored: checked by --resume
RESULT_SUFFIXES = (".frames.csv", ".summary.json")  # per arena: the files a run writes


def frame_sha256(image: np.ndarray) -> str:
    """A fingerprint of a decoded frame (shape and pixels): the same video decodes to the same bytes."""
    digest = hashlib.sha256(repr((image.shape, str(image.dtype))).encode())
    digest.update(np.ascontiguousarray(image).tobytes())
    return digest.hexdigest()


def source_identity(video: str | Path, first_frame: np.ndarray) -> dict:
    path = Path(video).resolve()
    return {"path": str(path), "size_bytes": path.stat().st_size, "first_frame_sha256": frame_sha256(first_frame)}


def check_no_results(out_dir: Path, arena_ids: Sequence[str], *, resume: bool, live: bool) -> None:
    """Refuse a folder that already holds results this run would write (unless resuming)."""
    if resume:
        return
    found = [name for a in arena_ids for name in (f"{a}{s}" for s in RESULT_SUFFIXES) if (out_dir / name).exists()]
    if found:
        more = "" if live else ", or --resume to complete that run from the same video"
        raise UserError(f"output folder {out_dir} already holds results ({', '.join(found[:3])}"
                        f"{', ...' if len(found) > 3 else ''}): they are never overwritten; give a new --out "
                        f"(or none: a new runs/<UTC time> folder){more}")


def check_same_source(out_dir: Path, identity: dict) -> None:
    """``--resume``: the folder's recorded source must be this video (path, size, first frame)."""
    record = out_dir / SOURCE_FILE
    if not any(out_dir.glob("*.frames.csv")):
        return  # nothing to continue: a fresh run
    try:
        earlier = json.loads(record.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"--resume: {out_dir} has no {SOURCE_FILE}, so nothing shows which video its rows came from; "
                        "run without --resume into a new --out") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"--resume: {record} cannot be read ({exc}); run without --resume into a new --out") from exc
    if not isinstance(earlier, dict):
        raise UserError(f"--resume: {record} is not a source record; run without --resume into a new --out")
    labels = {"path": "path", "size_bytes": "size", "first_frame_sha256": "first frame"}
    differ = [label for key, label in labels.items() if earlier.get(key) != identity[key]]
    if differ:
        raise UserError(f"--resume: {identity['path']} is not the video {out_dir} was scoring ({earlier.get('path')}): "
                        f"{' and '.join(differ)} differ; rows of two videos must never be mixed")


def write_source_identity(out_dir: Path, identity: dict) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(out_dir / SOURCE_FILE, json.dumps(identity, indent=2) + "\n")
    except OSError as exc:
        raise output_error(out_dir / SOURCE_FILE, exc) from exc


