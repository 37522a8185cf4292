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

``export-model`` writes an unsigned manifest (sha256 only) beside ``model.onnx``, which is meant
to travel with the model; it catches a truncated or altered copy.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from stream.engine.base import first_line
from stream.errors import UserError
from stream.modelfile import sha256_file
from stream.atomic import atomic_write

__all__ = [
    "CACHE_ENV",
    "MANIFEST_SUFFIX",
    "cache_root",
    "load_or_build_cached",
    "manifest_path",
    "manifest_problem",
    "write_manifest",
]

log = logging.getLogger("stream.engine")

CACHE_ENV = "SWIM_STREAM_CACHE"  # overrides where caches and the manifest key live
MANIFEST_SUFFIX = ".manifest.json"
MANIFEST_FORMAT = 1
KEY_FILENAME = "manifest.key"  # the per-user HMAC secret, inside cache_root()
KEY_BYTES = 32  # 256-bit secret, the HMAC-SHA256 block-size-safe choice


def cache_root() -> Path:
    """``$SWIM_STREAM_CACHE``, else ``$XDG_CACHE_HOME/swim-stream``, else ``~/.cache/swim-stream``."""
    root = os.environ.get(CACHE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "swim-stream"
    )
    return Path(root)


def manifest_path(artifact: Path) -> Path:
    return artifact.with_name(artifact.name + MANIFEST_SUFFIX)


def _local_key() -> bytes:
    """The per-user secret, created on first use with O_EXCL (two starts at once agree on one)."""
    path = cache_root() / KEY_FILENAME
    try:
        return _read_key(path)
    except FileNotFoundError:
        pass
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
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
    key = path.read_bytes()
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
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{path.parent}: cannot create the {what} cache ({exc.strerror})") from None
    _local_key()  # fail before minutes of building if no manifest can be signed
    tmp = path.with_name(path.stem + ".partial" + path.suffix)
    log.info("building %s %s (first start for this model, device and input shape; this takes a while)", what, path)
    try:
        build(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    write_manifest(path, facts)
