"""``RunConfig``: from stream-run's flags, from a TOML file, flags over the file, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from stream.errors import UserError
from stream.run import config_from_argv
from stream.run_config import RunConfig


def test_from_args_groups_every_flag() -> None:
    c = config_from_argv(["--video", "a.mp4", "b.mp4", "--roi", "0,0,10,10", "--roi", "10,0,10,10", "--stride", "3",
                          "--no-flow-warm-start", "--immobile-classes", "float, struggle", "--no-zmq", "--no-metrics",
                          "--zmq-state", "tcp://127.0.0.1:5599", "-q"])
    assert c.source.videos == ("a.mp4", "b.mp4") and c.arenas.rois == ("0,0,10,10", "10,0,10,10")
    assert c.model.stride == 3 and c.model.flow_warm_start is False
    assert c.decisions.immobile_classes == ("float", "struggle")
    assert c.outputs.zmq is None and c.outputs.metrics_port == 0 and c.outputs.quiet
    assert c.trials.mode == "now" and c.trials.control == "tcp://127.0.0.1:5599"  # the old name still works
    assert config_from_argv(["--camera", "0", "--trials", "control"]).trials.control == "tcp://127.0.0.1:5556"
    assert config_from_argv(["--camera", "0", "--control", "none"]).trials.control is None
    with pytest.raises(AttributeError):
        c.model.stride = 1  # type: ignore[misc]  # frozen


def test_from_toml_and_flags_typed_win(tmp_path: Path) -> None:
    folder = tmp_path / "rig config"  # a space in the path: no shell ever splits it
    folder.mkdir()
    rig = folder / "rig.toml"
    rig.write_text('[source]\nvideos = ["my videos/cam 0.mp4"]\n[arenas]\nrois = ["0,0,320,480", "320,0,320,480"]\n'
                   '[model]\nstride = 4\n[decisions]\nmin_bout_s = 2\n[outputs]\nout = "/var/lib/swim stream/run 1"\n'
                   'metrics_port = 0\nzmq = "tcp://127.0.0.1:5560"\n')
    c = RunConfig.from_toml(rig)
    assert c.source.videos == (str(folder / "my videos/cam 0.mp4"),)  # relative to the file's folder
    assert c.model.stride == 4 and c.decisions.min_bout_s == 2.0
    assert c.outputs.out == Path("/var/lib/swim stream/run 1") and c.outputs.metrics_port == 0
    assert c.arenas.rois == ("0,0,320,480", "320,0,320,480")
    # flags typed on the command line win; the file's other values stay, defaults of untyped flags do not win
    c2 = config_from_argv(["--config", str(rig), "--stride", "2", "--out", str(tmp_path / "o")])
    assert c2.model.stride == 2 and c2.outputs.out == tmp_path / "o"
    assert c2.decisions.min_bout_s == 2.0 and c2.outputs.zmq == "tcp://127.0.0.1:5560" and c2.outputs.metrics_port == 0
    assert config_from_argv(["--config", str(rig), "--no-zmq"]).outputs.zmq is None
    # relative paths in a file are the file's folder's
    (folder / "sched.toml").write_text('[source]\nvideos = ["v.mp4"]\n[trials]\nschedule = "s chedule.csv"\n')
    c3 = RunConfig.from_toml(folder / "sched.toml")
    assert c3.trials.schedule == folder / "s chedule.csv" and c3.trials.mode == "schedule"
    assert c.to_json()["version"] == 1 and c.to_json()["outputs"]["out"] == "/var/lib/swim stream/run 1"


@pytest.mark.parametrize("text, mention", [
    ("[model]\nstride = 0\n[source]\ncamera = 0\n", "--stride 0"),
    ('[model]\nstride = "4"\n[source]\ncamera = 0\n', "[model] stride = '4': expected int"),
    ("[source]\ncamera = true\n", "[source] camera = True: expected int"),
    ("[source]\ncamra = 0\n", "[source] camra: unknown key"),
    ("[sauce]\ncamera = 0\n", "unknown table [sauce]"),
    ('[source]\ncamera = 0\n[decisions]\nsmoothing = "median"\n', "[decisions] smoothing = 'median'"),
    ("[source]\ncamera = 0\nurl = \"rtsp://x\"\n", "exactly one of"),
    ("[source\ncamera = 0\n", "not valid TOML"),
])
def test_bad_toml_value_is_one_line(tmp_path: Path, text: str, mention: str) -> None:
    rig = tmp_path / "rig.toml"
    rig.write_text(text)
    with pytest.raises(UserError) as info:
        RunConfig.from_toml(rig)
    assert mention in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_bad_toml_through_stream_run_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from stream.run import main

    rig = tmp_path / "rig.toml"
    rig.write_text("[model]\nstride = -1\n[source]\ncamera = 0\n")
    assert main(["--config", str(rig)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["stream-run: error: --stride -1: must be >= 1"], err
    assert main(["--config", str(tmp_path / "missing.toml")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_issue_24_settings_travel_too(tmp_path: Path) -> None:
    c = config_from_argv(["--camera", "0", "--stride", "2", "--max-stride", "8", "--gap-bridge-s", "0"])
    assert c.model.max_stride == 8 and c.decisions.gap_bridge_s == 0.0
    with pytest.raises(UserError, match="--max-stride 1: must be >= --stride"):
        config_from_argv(["--camera", "0", "--stride", "2", "--max-stride", "1"])
    rig = tmp_path / "rig.toml"
    rig.write_text("[source]\ncamera = 0\n[decisions]\ngap_bridge_s = 2\n")
    assert RunConfig.from_toml(rig).decisions.gap_bridge_s == 2.0


def test_make_is_checked_like_the_command_line() -> None:
    c = RunConfig.make(source={"videos": ("x.mp4",)}, model={"dir": Path("m"), "stride": 2}, trials={"mode": None})
    assert c.model.dir == Path("m") and c.trials.mode == "now"
    with pytest.raises(UserError, match="--resume works with --video only"):
        RunConfig.make(source={"camera": 0}, outputs={"resume": True})
