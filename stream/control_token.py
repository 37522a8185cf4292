"""The control endpoint's shared secret: a token file (mode 0600) that every request carries.

A control endpoint bound beyond loopback can be reached by anyone on the network; from another
address ``stream-ctl start`` once started a trial. So ``stream-run`` refuses such an endpoint
unless it is given ``--control-token-file FILE`` (or says ``--allow-remote-control``). The file
holds one random token; ``stream-run`` creates it when it is missing (mode 0600, whatever the
umask) and refuses one that others may read or that belongs to someone else, since a token
others can read protects nothing. ``stream-ctl --control-token-file FILE`` sends it with each
request (``{"cmd": ..., "token": ...}``); the endpoint compares it in constant time
(``hmac.compare_digest``) and answers a wrong or missing token ``ok: false``, changing nothing.
Copy the file to the machine that runs ``stream-ctl`` over a channel you trust (scp), keep it 0600.
"""

from __future__ import annotations

import errno
import hmac
import logging
import os
import secrets
import stat
from pathlib import Path

from stream.errors import UserError
from stream.network import is_loopback_endpoint

__all__ = ["MIN_TOKEN_CHARS", "TOKEN_BYTES", "check_token", "control_token_for", "load_or_create_token", "read_token"]

log = logging.getLogger(__name__)

TOKEN_BYTES = 32  # 256 random bits: guessing over the network is hopeless
# A hand-written token shorter than this is guessable; a generated one has 43 characters.
MIN_TOKEN_CHARS = 16
PRIVATE_MODE = 0o600
_OTHERS_BITS = stat.S_IRWXG | stat.S_IRWXO  # any permission for group or others


def _check_private(path: Path, st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"control token file {path}: not a regular file")
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise UserError(f"control token file {path} belongs to another user (uid {st.st_uid}); use your own")
    if st.st_mode & _OTHERS_BITS:
        raise UserError(f"control token file {path} is readable by others (mode {stat.S_IMODE(st.st_mode):04o}); "
                        f"chmod 600 {path}")


def read_token(path: str | Path) -> str:
    """The token in ``path``: a private file (owner only) with one line of at least ``MIN_TOKEN_CHARS``."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        raise UserError(f"control token file {path}: no such file") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UserError(f"control token file {path} is a symlink; give the file itself") from None
        raise UserError(f"control token file {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as fh:
        _check_private(path, os.fstat(fh.fileno()))
        data = fh.read(4096)
    try:
        token = data.decode("ascii").strip()
    except UnicodeDecodeError:
        raise UserError(f"control token file {path}: not a token (use printable ASCII)") from None
    if len(token) < MIN_TOKEN_CHARS or not token.isprintable() or any(ch.isspace() for ch in token):
        raise UserError(f"control token file {path}: the token must be one word of at least {MIN_TOKEN_CHARS} "
                        "printable characters; delete the file and stream-run makes a new one")
    return token


def load_or_create_token(path: str | Path) -> str:
    """``read_token(path)``; a missing file is created first, mode 0600, with a new random token."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), PRIVATE_MODE)
    except FileExistsError:
        return read_token(path)
    except OSError as exc:
        raise UserError(f"cannot create control token file {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "wb") as fh:
        os.fchmod(fh.fileno(), PRIVATE_MODE)  # the umask may have taken bits off; never added any
        fh.write(secrets.token_urlsafe(TOKEN_BYTES).encode() + b"\n")
        fh.flush()
        os.fsync(fh.fileno())
    log.warning("created control token file %s (mode 0600): copy it to where stream-ctl runs and pass "
                "--control-token-file", path)
    return read_token(path)


def check_token(given: object, expected: str) -> bool:
    """Whether a request's ``token`` is ``expected``, compared in constant time."""
    if not isinstance(given, str):
        return False
    return hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode("utf-8"))


def control_token_for(endpoint: str, token_file: Path | None, allow_remote: bool) -> str | None:
    """The token ``endpoint`` will require (None: none), or a one-line refusal to open it at all.

    Beyond loopback a token file or ``--allow-remote-control`` is required; a token file given for
    a loopback endpoint is required all the same (other users of a shared PC).
    """
    if token_file is not None:
        return load_or_create_token(token_file)
    if is_loopback_endpoint(endpoint):
        return None
    if not allow_remote:
        raise UserError(f"--control {endpoint} listens beyond this machine: give --control-token-file FILE (each "
                        "stream-ctl request must carry its token) or --allow-remote-control")
    log.warning("--allow-remote-control: anyone who can reach %s can start and stop trials (no token)", endpoint)
    return None
