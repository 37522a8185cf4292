"""Files the engines build once and reuse, each with a manifest beside it that is checked before use.

Why: a TensorRT engine (``tensorrt/*.ep`` in a model folder) is read with ``torch.export.load``,
which falls back to pickle, and a model folder is something a lab gets handed. A cached ONNX
graph cannot run code, but a truncated or swapped one gives wrong numbers. So every cached file
gets ``<file>.manifest.json`` beside it::

    {"format": 1, "file": ..., "sha256": ..., "size_bytes": ...,          the file itself
     "weights_sha256": ..., "input_size_px": ..., "batch": ..., ...,        what it was built from
     "created_utc": ..., "hmac": ...}                                       who wrote it

The ``hmac`` (HMAC-SHA256 over the rest) is keyed by a random per-user secret in the cache
folder (``$SWIM_STREAM_CACHE``, else ``$XDG_CACHE_HOME/swim-stream``, mode 0600), so a manifest
that came with a copied model folder, however well forged, does not verify: only files this
user's swim-stream built are loaded. A file whose manifest is missing, does not verify or does
not match what is asked for is never opened: it is rebuilt, with a log line saying why.
``export-model`` signs the manifest of the ``model.onnx`` it writes beside the weights the same way.

The secret is only as good as its file: a key file that is not the user's own, or that others
may read or write, is refused (delete it: a new one is made and cached files are rebuilt), and
the cache folders are created mode 0700 whatever the umask. A cache file is always named after
the weights' sha256 (``with_weights_digest``), never after a card that records none.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import logging
import os
import secrets
import stat
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from stream.engine.base import first_line
from stream.errors import UserError
from stream.modelfile import ModelCard, sha256_file
from stream.atomic import atomic_path, atomic_write

__all__ = [
    "CACHE_ENV",
    "MANIFEST_SUFFIX",
    "cache_root",
    "load_or_build_cached",
    "make_private_dir",
    "manifest_path",
    "manifest_problem",
    "with_weights_digest",
    "write_manifest",
]

log = logging.getLogger("stream.engine")

CACHE_ENV = "SWIM_STREAM_CACHE"  # overrides where caches and the manifest key live
MANIFEST_SUFFIX = ".manifest.json"
MANIFEST_FORMAT = 1
KEY_FILENAME = "manifest.key"  # the per-user HMAC secret, inside cache_root()
KEY_BYTES = 32  # 256-bit secret, the HMAC-SHA256 block-size-safe choice
PRIVATE_DIR_MODE = 0o700  # cache folders: the key and the files it vouches for are the user's alone
KEY_FORBIDDEN_BITS = 0o077  # any group/other access to the key file: others could read (forge) or replace it


def cache_root() -> Path:
    """``$SWIM_STREAM_CACHE``, else ``$XDG_CACHE_HOME/swim-stream``, else ``~/.cache/swim-stream``."""
    root = os.environ.get(CACHE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "swim-stream"
    )
    return Path(root)


def manifest_path(artifact: Path) -> Path:
    return artifact.with_name(artifact.name + MANIFEST_SUFFIX)


def make_private_dir(path: Path) -> None:
    """Create ``path`` and its missing parents mode 0700, whatever the umask (mkdir's mode is masked
    by it, so the mode is set again). A folder that exists already is left as it is. Raises OSError."""
    missing = []
    while not path.is_dir():
        missing.append(path)
        if path.parent == path:
            break
        path = path.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=PRIVATE_DIR_MODE)
        except FileExistsError:
            continue  # made meanwhile by another start: its mode is that start's business
        os.chmod(folder, PRIVATE_DIR_MODE)


def with_weights_digest(model_dir: str | Path, card: ModelCard) -> ModelCard:
    """``card`` with ``weights_sha256`` filled from the weights file when the card records none:
    cache files are keyed by that digest, and a name-only key would let another model's weights
    (with an equally empty digest) pick up this model's cached graph."""
    if card.weights_sha256:
        return card
    return dataclasses.replace(card, weights_sha256=sha256_file(Path(model_dir) / card.weights_file))


def _local_key() -> bytes:
    """The per-user secret, created on first use with O_EXCL (two starts at once agree on one)."""
    path = cache_root() / KEY_FILENAME
    try:
        return _read_key(path)
    except FileNotFoundError:
        pass
    try:
        make_private_dir(path.parent)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_key(path)  # another process made it meanwhile
    except OSError as exc:
        raise UserError(f"{path}: cannot create the cache key ({exc.strerror}); set {CACHE_ENV} to a writable folder") from None
    with os.fdopen(fd, "wb") as fh:
        fh.write(secrets.token_bytes(KEY_BYTES))
        fh.flush()
        os.fsync(fh.fileno())
    return _read_key(path)


def _read_key(path: Path) -> bytes:
    """The key's bytes; a key file that is not the user's own or that others may access is refused."""
    fix = "delete it (a new key is made, and cached engines are rebuilt)"
    try:
        with open(path, "rb") as fh:
            info = os.fstat(fh.fileno())
            key = fh.read(KEY_BYTES + 1)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise UserError(f"{path}: cannot read the cache key ({exc.strerror}); {fix}") from None
    if info.st_uid != os.geteuid():
        raise UserError(f"{path}: refused: the cache key belongs to user id {info.st_uid}, not to you; {fix}")
    if info.st_mode & KEY_FORBIDDEN_BITS:
        raise UserError(f"{path}: refused: the cache key has mode {stat.S_IMODE(info.st_mode):04o}, so others may read "
                        f"or replace it (it must be 0600); {fix}")
    if len(key) != KEY_BYTES:
        raise UserError(f"{path}: not a swim-stream cache key ({len(key)} bytes); delete it (cached engines are then rebuilt)")
    return key


def _signature(body: Mapping[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return hmac.new(_local_key(), canonical, hashlib.sha256).hexdigest()




def write_manifest(artifact: Path, facts: Mapping[str, Any] | None = None, *, signed: bool = True) -> Path:
    """Record ``artifact``'s sha256 and the ``facts`` it was built from (signed: see the module doc)."""
    body: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "file": artifact.name,
        "sha256": sha256_file(artifact),
        "size_bytes": artifact.stat().st_size,
        **dict(facts or {}),
        "created_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if signed:
        body["hmac"] = _signature(body)
    path = manifest_path(artifact)
    atomic_write(path, json.dumps(body, indent=2) + "\n")
    return path


def manifest_problem(artifact: Path, facts: Mapping[str, Any] | None = None, *, signed: bool = True) -> str | None:
    """Why ``artifact`` must not be used (a short phrase), or None when its manifest vouches for it.

    Reads the manifest and hashes the file; never opens the file in any other way.
    """
    path = manifest_path(artifact)
    try:
        body = json.loads(path.read_text())
    except FileNotFoundError:
        return f"no manifest {path.name} beside it"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return f"unreadable manifest {path.name} ({first_line(exc)})"
    if not isinstance(body, dict):
        return f"manifest {path.name} is not a JSON object"
    if signed:
        claimed = body.pop("hmac", None)
        if not isinstance(claimed, str) or not hmac.compare_digest(claimed, _signature(body)):
            return f"manifest {path.name} was not written by this user's swim-stream (signature does not verify)"
    if body.get("format") != MANIFEST_FORMAT or body.get("file") != artifact.name:
        return f"manifest {path.name} describes another file"
    for key, want in (facts or {}).items():
        if body.get(key) != want:
            return f"built for {key} {body.get(key)!r}, not {want!r}"
    if body.get("size_bytes") != artifact.stat().st_size or body.get("sha256") != sha256_file(artifact):
        return "sha256 differs from its manifest (changed, truncated or replaced since it was built)"
    return None


def load_or_build_cached(
    path: Path,
    build: Callable[[Path], None],
    load: Callable[[Path], Any],
    *,
    facts: Mapping[str, Any] | None = None,
    what: str = "TensorRT engine",
) -> Any:
    """Load ``path`` if its signed manifest vouches for it, else (re)build it first.

    ``build(tmp)`` writes the file under a temporary name, which is then renamed (atomic) and
    given its manifest. A file that verifies but does not load (a TensorRT upgrade the key did
    not capture, say) is rebuilt once; a fresh build that does not load is an error.
    """
    if path.is_file():
        problem = manifest_problem(path, facts)
        if problem is None:
            try:
                return load(path)
            except Exception as exc:  # backends raise their own types
                log.warning("%s: cached %s does not load (%s); rebuilding it", path, what, first_line(exc))
        else:
            log.warning("%s: cached %s refused, not loaded: %s; rebuilding it", path, what, problem)
    _build(path, build, facts, what)
    try:
        return load(path)
    except Exception as exc:
        raise UserError(f"{path}: corrupt {what} ({first_line(exc)}); delete the file and it is rebuilt on the next start") from None


def _build(path: Path, build: Callable[[Path], None], facts: Mapping[str, Any] | None, what: str) -> None:
    try:
        make_private_dir(path.parent)
    except OSError as exc:
        raise UserError(f"{path.parent}: cannot create the {what} cache ({exc.strerror})") from None
    _local_key()  # fail before minutes of building if no manifest can be signed
    log.info("building %s %s (first start for this model, device and input shape; this takes a while)", what, path)
    with atomic_path(path, suffix=path.suffix) as tmp:  # its own name: two first starts may build side by side
        build(tmp)
    write_manifest(path, facts)
