"""Arenas: --roi parsing, arena files (JSON, YAML, the simulator's sidecar), checks against the frame."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stream.arenas import (DEFAULT_ARENA_ID, Arena, arenas_from_rois, check_arenas_fit, load_arena_file,
                           resolve_arenas, sidecar_arena_file)
from stream.errors import UserError
from stream.preprocess import Roi


def test_rois_become_numbered_arenas() -> None:
    arenas = arenas_from_rois(["0,0,64,48", " 64, 0, 64, 48"])
    assert arenas == [Arena("arena0", Roi(0, 0, 64, 48)), Arena("arena1", Roi(64, 0, 64, 48))]


@pytest.mark.parametrize("text", ["1,2,3", "a,b,c,d", "0,0,-4,4", "0,0,4,4"])
def test_bad_roi_is_a_user_error(text: str) -> None:
    with pytest.raises(UserError, match="roi"):
        arenas_from_rois([text])


def test_json_file_in_the_simulator_format(tmp_path: Path) -> None:
    path = tmp_path / "clip.arenas.json"
    path.write_text(json.dumps({"arenas": [{"id": "A1", "roi": [0, 0, 100, 80]}, {"id": "A2", "roi": "100,0,100,80"}]}))
    assert load_arena_file(path) == [Arena("A1", Roi(0, 0, 100, 80)), Arena("A2", Roi(100, 0, 100, 80))]


def test_export_synth_sidecar_names_arenas_with_name(tmp_path: Path) -> None:
    path = tmp_path / "synth_side.arenas.json"
    path.write_text(json.dumps({"video": "synth_side.mp4", "width": 640, "fps": 15,
                                "arenas": [{"name": "arena1", "roi": [0, 0, 320, 480]},
                                           {"name": "arena2", "roi": [320, 0, 320, 480]}]}))
    assert [a.id for a in load_arena_file(path)] == ["arena1", "arena2"]


def test_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "arenas.yaml"
    path.write_text("arenas:\n  - id: left\n    roi: [0, 0, 50, 50]\n  - roi: [50, 0, 50, 50]\n")
    assert [a.id for a in load_arena_file(path)] == ["left", "arena1"]


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"cylinders": []}), "expected"),
        (json.dumps({"arenas": [{"id": "A1"}]}), "roi"),
        (json.dumps({"arenas": [{"id": "A1", "roi": [0, 0, 10]}]}), "four integers"),
        # issue 14.10: JSON true is not the pixel 1
        (json.dumps({"arenas": [{"id": "A1", "roi": [True, 0, 10, 10]}]}), "four integers"),
        (json.dumps({"arenas": [{"id": "A1", "roi": [0, 0, 10, "10"]}]}), "four integers"),
        (json.dumps({"arenas": [{"id": "A", "roi": [0, 0, 10, 10]}, {"id": "A", "roi": [10, 0, 10, 10]}]}), "duplicate"),
        (json.dumps({"arenas": [{"id": "../etc", "roi": [0, 0, 10, 10]}]}), "arena id"),
    ],
)
def test_bad_arena_files_name_the_file(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(UserError, match=message):
        load_arena_file(path)


def test_missing_arena_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="nope.json"):
        load_arena_file(tmp_path / "nope.json")


def test_resolution_order(tmp_path: Path) -> None:
    video = tmp_path / "test1.mp4"
    video.write_bytes(b"")
    assert resolve_arenas(video=video) == [Arena(DEFAULT_ARENA_ID, None)]
    sidecar = tmp_path / "test1.arenas.json"
    sidecar.write_text(json.dumps({"arenas": [{"id": "A1", "roi": [0, 0, 20, 20]}]}))
    assert sidecar_arena_file(video) == sidecar
    assert [a.id for a in resolve_arenas(video=video)] == ["A1"]
    assert [a.id for a in resolve_arenas(rois=["0,0,10,10"], video=video)] == ["arena0"]
    with pytest.raises(UserError, match="not both"):
        resolve_arenas(rois=["0,0,10,10"], arena_file=sidecar)


def test_arenas_must_fit_the_frame() -> None:
    arenas = arenas_from_rois(["0,0,64,48", "64,0,64,48"])
    check_arenas_fit(arenas, 128, 48, "cam")
    with pytest.raises(UserError, match="arena1.*100x48"):
        check_arenas_fit(arenas, 100, 48, "cam")
    check_arenas_fit([Arena(DEFAULT_ARENA_ID, None)], 7, 5, "cam")
