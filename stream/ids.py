"""Animal, group and trial IDs: what a lab may type, checked once where they come in.

IDs arrive from outside (a ``stream-ctl start`` request, a schedule row) and end up in file names
(``<arena>-t001-<animal>.frames.csv``), results tables, JSON and log lines. A 300-character animal
ID was once accepted by the control endpoint and only failed later, in the pipeline thread, on
"File name too long", stopping the service with another arena's trial unfinished. So every ID is
checked by this one function before anything is replied or scheduled: a bounded length and a small
set of characters that every filesystem, spreadsheet cell and terminal shows as typed.

IDs that start with ``=``, ``+``, ``-`` or ``@`` are allowed (``-`` and ``+`` appear in genotypes
such as ``KO+/-``); the CSV writers escape them (``stream.spreadsheet``).
"""

from __future__ import annotations

import re

from stream.errors import UserError

__all__ = ["ID_PUNCTUATION", "MAX_ARENA_ID_CHARS", "MAX_ID_CHARS", "MAX_TRIAL_ID_CHARS", "check_arena_id_length",
           "check_id", "check_trial_id", "safe_token"]

# Lab IDs are short ("M17", "C57BL6-cage12-m3", "saline 10 mg/kg"); 64 characters is four times a
# typical one, and keeps a trial's file name (arena + "-t001-" + animal + ".summary.json")
# far below the 255-byte name limit of every common filesystem.
MAX_ID_CHARS = 64
# Arena ids name files and ZeroMQ topics; with the trial number and the animal they make a trial id.
MAX_ARENA_ID_CHARS = 64
# arena (64) + "-t" + a trial number + "-" + animal token (64), with room for 6-digit trial numbers;
# plus the longest suffix (".summary.json", 13) it stays below 255 bytes.
MAX_TRIAL_ID_CHARS = 140
# Besides letters and digits (any script): what IDs, genotypes and doses are written with ("/" for
# "mg/kg": file names take the ID through safe_token). No quotes, backslashes, shell metacharacters
# or control characters (tab, CR, LF, NUL).
ID_PUNCTUATION = frozenset(" _-.+=@#/:,()")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")  # what a file-name token may not hold


def safe_token(text: str) -> str:
    """``text`` as a file-name token: runs of other characters become ``_``."""
    return _UNSAFE.sub("_", text).strip("_.") or "x"


def _allowed(ch: str) -> bool:
    return ch.isalnum() or ch in ID_PUNCTUATION


def check_id(kind: str, value: object) -> str:
    """``value`` if it is a usable animal or group ID ("" means not given); else a one-line UserError.

    ``kind`` names the field in the message ("animal", "group").
    """
    if not isinstance(value, str):
        raise UserError(f"{kind} ID must be a string, got {type(value).__name__}")
    if len(value) > MAX_ID_CHARS:
        raise UserError(f"{kind} ID is {len(value)} characters long; at most {MAX_ID_CHARS}")
    bad = sorted({ch for ch in value if not _allowed(ch)})
    if bad:
        shown = " ".join(repr(ch) for ch in bad[:5])
        raise UserError(f"{kind} ID {value[:MAX_ID_CHARS]!r} has characters that are not allowed ({shown}); use "
                        f"letters, digits and {''.join(sorted(ID_PUNCTUATION - {' '}))} or spaces")
    if value != value.strip():
        raise UserError(f"{kind} ID {value!r} starts or ends with a space")
    return value


def check_trial_id(trial_id: str) -> str:
    """A trial id names the trial's files: letters, digits, ``_.-``, at most ``MAX_TRIAL_ID_CHARS``."""
    if not isinstance(trial_id, str) or not trial_id or safe_token(trial_id) != trial_id:
        raise UserError(f"trial id {trial_id!r}: use letters, digits, '_', '.', '-'")
    if len(trial_id) > MAX_TRIAL_ID_CHARS:
        raise UserError(f"trial id is {len(trial_id)} characters long; at most {MAX_TRIAL_ID_CHARS}")
    return trial_id


def check_arena_id_length(arena_id: str) -> str:
    """An arena id short enough that its trials' ids fit ``MAX_TRIAL_ID_CHARS``."""
    if len(arena_id) > MAX_ARENA_ID_CHARS:
        raise UserError(f"arena id {arena_id[:20]!r}... is {len(arena_id)} characters long; at most "
                        f"{MAX_ARENA_ID_CHARS}")
    return arena_id
