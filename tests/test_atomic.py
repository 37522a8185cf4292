"""atomic_write / atomic_path: the old file survives a failed write; no temporary file is left."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from stream.atomic import atomic_path, atomic_write


def test_atomic_write_replaces_text_bytes_and_callable(tmp_path: Path) -> None:
    p = tmp_path / "a.txt"
    atomic_write(p, "one\n")
    assert p.read_text() == "one\n"
    atomic_write(p, b"two")
    assert p.read_bytes() == b"two"
    atomic_write(p, lambda f: f.write("three"))
    assert p.read_text() == "three"
    assert os.listdir(tmp_path) == ["a.txt"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    p = tmp_path / "a.txt"
    atomic_write(p, "old")

    def boom(f) -> None:
        f.write("half")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        atomic_write(p, boom)
    assert p.read_text() == "old"
    assert os.listdir(tmp_path) == ["a.txt"]


def test_atomic_path_keeps_the_suffix_a_writer_needs_and_sets_the_mode(tmp_path: Path) -> None:
    p = tmp_path / "x.npy"
    with atomic_path(p, suffix=".npy", mode=0o644) as tmp:
        assert tmp.name.endswith(".npy") and tmp.parent == tmp_path
        np.save(tmp, np.arange(3))
    assert np.load(p).tolist() == [0, 1, 2]
    assert (p.stat().st_mode & 0o777) == 0o644
    assert os.listdir(tmp_path) == ["x.npy"]


@pytest.fixture(params=[0o027, 0o022], ids=["umask0027", "umask0022"])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def test_new_files_follow_the_process_umask(tmp_path: Path, umask: int) -> None:
    """Issue 14.3: mkstemp made summaries 0600, so the lab group could not read them under UMask=0027."""
    expected = 0o666 & ~umask
    atomic_write(tmp_path / "summary.json", "{}")
    with atomic_path(tmp_path / "x.npy", suffix=".npy") as tmp:
        np.save(tmp, np.arange(3))
    with open(tmp_path / "plain.csv", "w") as f:  # what the per-frame CSV does
        f.write("frame\n")
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes == {"summary.json": expected, "x.npy": expected, "plain.csv": expected}
    atomic_write(tmp_path / "summary.json", "{}", mode=0o600)  # an explicit mode still wins
    assert (tmp_path / "summary.json").stat().st_mode & 0o777 == 0o600
