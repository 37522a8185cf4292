"""The control token file: created private, refused when others can read it; required beyond loopback.

No test binds anything but loopback: the refusal of a control endpoint beyond loopback is checked
on ``stream-run``'s settings step, which runs before any port is opened.
"""

from __future__ import annotations

import logging
import os
import stat

import pytest

from stream.control_token import (MIN_TOKEN_CHARS, check_token, control_token_for, load_or_create_token,
                                  read_token)
from stream.errors import UserError


def test_a_missing_token_file_is_created_0600_whatever_the_umask(tmp_path) -> None:
    path = tmp_path / "control.token"
    old = os.umask(0)
    try:
        token = load_or_create_token(path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(token) >= MIN_TOKEN_CHARS and token == read_token(path)
    assert load_or_create_token(path) == token  # kept, not replaced


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o606])
def test_a_token_file_others_can_read_is_refused(tmp_path, mode: int) -> None:
    path = tmp_path / "control.token"
    path.write_text("t" * 43 + "\n")
    path.chmod(mode)
    with pytest.raises(UserError, match="readable by others"):
        load_or_create_token(path)


def test_a_symlinked_short_or_empty_token_is_refused(tmp_path) -> None:
    real = tmp_path / "real.token"
    real.write_text("t" * 43)
    real.chmod(0o600)
    link = tmp_path / "link.token"
    link.symlink_to(real)
    with pytest.raises(UserError, match="symlink"):
        read_token(link)
    for text in ("", "short", "two words " + "t" * 20):
        real.write_text(text)
        with pytest.raises(UserError, match="at least"):
            read_token(real)


def test_tokens_compare_exactly() -> None:
    assert check_token("t" * 43, "t" * 43)
    for given in (None, "", "t" * 42, "t" * 44, "T" * 43, 43, ["t" * 43], "\udcff" * 43):
        assert not check_token(given, "t" * 43)


def test_beyond_loopback_needs_a_token_file_or_allow_remote_control(tmp_path, caplog) -> None:
    assert control_token_for("tcp://127.0.0.1:5556", None, False) is None
    for endpoint in ("tcp://0.0.0.0:5556", "tcp://*:5556", "tcp://192.168.1.10:5556"):
        with pytest.raises(UserError, match="--control-token-file") as info:
            control_token_for(endpoint, None, False)
        assert "\n" not in str(info.value)
    with caplog.at_level(logging.WARNING):
        assert control_token_for("tcp://0.0.0.0:5556", None, True) is None
    assert "without a token" in caplog.text or "no token" in caplog.text
    token = control_token_for("tcp://0.0.0.0:5556", tmp_path / "t", False)
    assert token == read_token(tmp_path / "t")
    assert control_token_for("tcp://127.0.0.1:5556", tmp_path / "t", False) == token  # loopback too, when given


def _settings(*argv: str):
    from stream.run import config_from_argv
    from stream.runner import Runner

    run = Runner(config_from_argv(["--camera", "0", *argv]))
    run._trial_settings()  # the step that resolves --control; it opens no port
    return run


def test_stream_run_refuses_a_control_endpoint_beyond_loopback_without_a_token(tmp_path) -> None:
    with pytest.raises(UserError, match="--allow-remote-control"):
        _settings("--trials", "control", "--control", "tcp://0.0.0.0:5556")
    with pytest.raises(UserError, match="--allow-remote-control"):
        _settings("--zmq-state", "tcp://*:5556")
    assert _settings("--control", "tcp://0.0.0.0:5556", "--allow-remote-control").control_token is None
    run = _settings("--control", "tcp://0.0.0.0:5556", "--control-token-file", str(tmp_path / "tok"))
    assert run.control_token == read_token(tmp_path / "tok")
    assert _settings("--trials", "control").control_token is None  # loopback default: no token needed
    with pytest.raises(UserError, match="needs a control endpoint"):
        _settings("--control-token-file", str(tmp_path / "tok"))
