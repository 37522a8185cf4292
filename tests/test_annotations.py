"""Every annotation reader: a valid file, each bad case, and a round trip of export-synth's outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from export.annotations import (
    JHUANG_CLASSES,
    SIDE_CLASSES,
    Annotation,
    AnnotationError,
    bouts,
    read_annotations,
    read_boris_aggregated,
    read_boris_tabular,
    read_deepethogram,
    read_frame_csv,
    read_jhuang_clips,
    write_boris_aggregated,
    write_boris_tabular,
    write_deepethogram,
    write_frame_csv,
)
from export.synth import SynthConfig, render_video
from stream.errors import UserError

FPS = 10.0


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _ann(labels, classes=SIDE_CLASSES, subject=None, source=Path("x")) -> Annotation:
    return Annotation(list(classes), np.array(labels), source, subject, FPS)


# ---------------------------------------------------------------- per-frame CSV


def test_frame_csv_label_column_with_gaps(tmp_path):
    p = _write(tmp_path / "a.csv", "frame,label\n0,swim\n1,swim\n2,\n3,float\n5,struggle\n")
    [a] = read_annotations(p)
    assert a.classes == SIDE_CLASSES
    assert a.labels.tolist() == [0, 0, -1, 2, -1, 1]


def test_frame_csv_one_hot_and_num_frames(tmp_path):
    p = _write(tmp_path / "a.csv", "frame,mobile,immobile\n0,1,0\n1,0,1\n2,0,0\n")
    [a] = read_frame_csv(p, num_frames=5)
    assert a.classes == ["mobile", "immobile"]
    assert a.labels.tolist() == [0, 1, -1, -1, -1]


def test_frame_csv_arenas(tmp_path):
    p = _write(tmp_path / "a.csv", "frame,arena,label\n0,arena1,swim\n1,arena1,float\n0,arena2,struggle\n1,arena2,swim\n")
    anns = read_annotations(p)
    assert [a.subject for a in anns] == ["arena1", "arena2"]
    assert anns[1].labels.tolist() == [1, 0]


@pytest.mark.parametrize(
    "text, fragment, line",
    [
        ("frame,label\n0,swim\n1,fly\n", "unknown label 'fly'", 3),
        ("frame,label\n0,swim\n0,float\n", "labelled twice", 3),
        ("frame,label\n0,swim\n12,float\n", "past the end", 3),
        ("frame,label\nx,swim\n", "not an integer", 2),
        ("frame,swim,float\n0,1,1\n", "several labels", 2),
    ],
)
def test_frame_csv_errors_name_file_and_line(tmp_path, text, fragment, line):
    p = _write(tmp_path / "bad.csv", text)
    with pytest.raises(AnnotationError) as exc:
        read_annotations(p, num_frames=10, classes=SIDE_CLASSES)
    assert fragment in str(exc.value) and f"bad.csv:{line}" in str(exc.value)
    assert isinstance(exc.value, UserError)


def test_unknown_format_and_missing_file(tmp_path):
    with pytest.raises(AnnotationError, match="unrecognised"):
        read_annotations(_write(tmp_path / "x.csv", "a,b\n1,2\n"))
    with pytest.raises(AnnotationError, match="not found"):
        read_annotations(tmp_path / "nope.csv")


# ---------------------------------------------------------------- BORIS tabular

BORIS8_HEADER = ("Observation id,Observation date,Description,Observation type,Source,Time offset (s),"
                 "Media duration (s),FPS,Subject,Behavior,Behavioral category,Modifiers,Behavior type,Time,"
                 "Media file name,Image index,Image file path,Comment\n")  # fmt: skip


def _b8(subject: str, behavior: str, kind: str, t: float, fps: float = FPS, duration: float = 2.0) -> str:
    return f"o,2026-01-01,,Media file(s),player #1:v.mp4,0,{duration},{fps},{subject},{behavior},,,{kind},{t},v.mp4,{int(t * fps)},NA,\n"


def test_boris8_tabular_subjects_points_and_gaps(tmp_path):
    text = BORIS8_HEADER + "".join([
        _b8("arena1", "swim", "START", 0.0), _b8("arena1", "swim", "STOP", 0.5),
        _b8("arena1", "float", "START", 0.8), _b8("arena1", "float", "STOP", 1.2),
        _b8("arena1", "struggle", "POINT", 1.5),
        _b8("arena2", "struggle", "START", 0.0), _b8("arena2", "struggle", "STOP", 2.0),
    ])  # fmt: skip
    anns = read_annotations(_write(tmp_path / "b.csv", text), fps=FPS)
    assert [a.subject for a in anns] == ["arena1", "arena2"]
    a1, a2 = anns
    assert a1.num_frames == 20 and a1.fps == FPS and a1.media_file == "v.mp4"
    expected = [0] * 5 + [-1] * 3 + [2] * 4 + [-1] * 3 + [1] + [-1] * 4
    assert a1.labels.tolist() == expected
    assert a2.labels.tolist() == [1] * 20


def test_boris7_tabular_tsv_with_metadata_block(tmp_path):
    text = (
        "Observation id\tobs1\n\nMedia file(s)\n\nPlayer #1\tv.mp4\n\n"
        "Time\tMedia file path\tTotal length\tFPS\tSubject\tBehavior\tBehavioral category\tComment\tStatus\n"
        "0.000\tv.mp4\t3.0\t10.0\t\tswim\t\t\tSTART\n"
        "1.000\tv.mp4\t3.0\t10.0\t\tswim\t\t\tSTOP\n"
        "1.000\tv.mp4\t3.0\t10.0\t\tfloat\t\t\tSTART\n"
        "3.000\tv.mp4\t3.0\t10.0\t\tfloat\t\t\tSTOP\n"
    )
    [a] = read_annotations(_write(tmp_path / "b.tsv", text))
    assert a.subject is None and a.num_frames == 30
    assert a.labels.tolist() == [0] * 10 + [2] * 20


@pytest.mark.parametrize(
    "rows, kwargs, fragment, line",
    [
        ([("a", "swim", "START", 0.0), ("a", "float", "START", 0.5), ("a", "float", "STOP", 1.0),
          ("a", "swim", "STOP", 1.0)], {}, "overlaps", 3),  # fmt: skip
        ([("a", "swim", "START", 0.0), ("a", "swim", "STOP", 5.0)], {}, "past the end", 2),
        ([("a", "dive", "START", 0.0), ("a", "dive", "STOP", 1.0)], {}, "unknown label 'dive'", 2),
        ([("a", "swim", "START", 0.0), ("a", "swim", "STOP", 1.0)], {"fps": 25.0}, "FPS 10", 2),
        ([("a", "swim", "START", 0.0)], {}, "never stops", 2),
        ([("a", "swim", "STOP", 1.0)], {}, "without a START", 2),
        ([("a", "swim", "BEGIN", 1.0)], {}, "expected START, STOP or POINT", 2),
    ],
)
def test_boris_tabular_errors(tmp_path, rows, kwargs, fragment, line):
    text = BORIS8_HEADER + "".join(_b8(*r) for r in rows)
    p = _write(tmp_path / "bad.csv", text)
    with pytest.raises(AnnotationError) as exc:
        read_boris_tabular(p, classes=SIDE_CLASSES, **kwargs)
    assert fragment in str(exc.value) and f"bad.csv:{line}" in str(exc.value)


def test_boris_without_fps_needs_fps(tmp_path):
    text = "Time,Subject,Behavior,Status\n0.0,,swim,START\n1.0,,swim,STOP\n"
    p = _write(tmp_path / "b.csv", text)
    with pytest.raises(AnnotationError, match="no frame rate"):
        read_annotations(p)
    [a] = read_annotations(p, fps=4.0, num_frames=6)
    assert a.labels.tolist() == [0, 0, 0, 0, -1, -1]


# ---------------------------------------------------------------- BORIS aggregated

AGG_HEADER = "Observation id,FPS,Media duration (s),Subject,Behavior,Behavior type,Start (s),Stop (s),Duration (s)\n"


def test_boris_aggregated(tmp_path):
    text = AGG_HEADER + "o,10,2,arena1,swim,STATE,0.0,0.5,0.5\no,10,2,arena1,float,STATE,1.0,2.0,1.0\n"
    [a] = read_annotations(_write(tmp_path / "agg.csv", text))
    assert a.subject == "arena1"
    assert a.labels.tolist() == [0] * 5 + [-1] * 5 + [2] * 10


@pytest.mark.parametrize(
    "rows, fragment, line",
    [
        ("o,10,2,,swim,STATE,0.0,1.0,1\no,10,2,,float,STATE,0.5,1.5,1\n", "overlaps", 3),
        ("o,10,2,,swim,STATE,0.0,3.0,3\n", "past the end", 2),
        ("o,10,2,,hop,STATE,0.0,1.0,1\n", "unknown label", 2),
        ("o,10,2,,swim,STATE,1.0,0.5,-0.5\n", "before it starts", 2),
    ],
)
def test_boris_aggregated_errors(tmp_path, rows, fragment, line):
    p = _write(tmp_path / "agg.csv", AGG_HEADER + rows)
    with pytest.raises(AnnotationError) as exc:
        read_boris_aggregated(p, classes=SIDE_CLASSES)
    assert fragment in str(exc.value) and f"agg.csv:{line}" in str(exc.value)


def test_boris_aggregated_fps_mismatch(tmp_path):
    p = _write(tmp_path / "agg.csv", AGG_HEADER + "o,10,2,,swim,STATE,0.0,1.0,1\n")
    with pytest.raises(AnnotationError, match="FPS 10 but the video runs at 30"):
        read_annotations(p, fps=30.0)


# ---------------------------------------------------------------- DeepEthogram


def test_deepethogram(tmp_path):
    text = ",background,swim,struggle,float\n0,0,1,0,0\n1,0,0,0,1\n2,-1,-1,-1,-1\n3,1,0,0,0\n4,0,0,1,0\n"
    [a] = read_annotations(_write(tmp_path / "deg_labels.csv", text))
    assert a.classes == SIDE_CLASSES
    assert a.labels.tolist() == [0, 2, -1, -1, 1]  # background-only frame 3 stays unlabelled
    [b] = read_deepethogram(tmp_path / "deg_labels.csv", classes=["background", *SIDE_CLASSES])
    assert b.labels.tolist() == [1, 3, -1, 0, 2]


@pytest.mark.parametrize(
    "rows, kwargs, fragment, line",
    [
        ("0,0,1,0,1\n", {}, "several behaviours", 2),
        ("0,0,2,0,0\n", {}, "expected 1, 0 or -1", 2),
        ("0,0,1,0,0\n1,0,1,0,0\n2,0,1,0,0\n", {"num_frames": 2}, "video has 2 frames", 4),
    ],
)
def test_deepethogram_errors(tmp_path, rows, kwargs, fragment, line):
    p = _write(tmp_path / "deg.csv", ",background,swim,struggle,float\n" + rows)
    with pytest.raises(AnnotationError) as exc:
        read_annotations(p, **kwargs)
    assert fragment in str(exc.value) and f"deg.csv:{line}" in str(exc.value)


# ---------------------------------------------------------------- Jhuang clips


def _clip(path: Path, frames: int) -> Path:
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="mpeg") as c:
        s = c.add_stream("mpeg1video", rate=25)
        s.width, s.height, s.pix_fmt = 32, 32, "yuv420p"
        for i in range(frames):
            img = np.full((32, 32, 3), 10 * i, np.uint8)
            for pkt in s.encode(av.VideoFrame.from_ndarray(img, format="bgr24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    return path


def test_jhuang_tokens_and_folders(tmp_path):
    _clip(tmp_path / "clips" / "m1_d_0001.mpg", 3)
    _clip(tmp_path / "clips" / "m1_rs_0002.mpg", 4)
    _clip(tmp_path / "clips" / "walk" / "anything_07.mpg", 2)
    anns = read_annotations(tmp_path / "clips")
    got = {a.source.name: (a.classes[int(a.labels[0])], a.num_frames, set(a.labels.tolist())) for a in anns}
    assert got["m1_d_0001.mpg"][0] == "drink" and got["m1_rs_0002.mpg"][0] == "rest"
    assert got["anything_07.mpg"][0] == "walk"
    assert all(len(v[2]) == 1 for v in got.values())
    assert got["m1_rs_0002.mpg"][1] >= 3  # frame count comes from the clip itself
    assert anns[0].classes == JHUANG_CLASSES


def test_jhuang_errors(tmp_path):
    (tmp_path / "c").mkdir()
    with pytest.raises(AnnotationError, match="no video clips"):
        read_jhuang_clips(tmp_path / "c")
    (tmp_path / "c" / "mouse_x_1.mpg").write_bytes(b"")
    with pytest.raises(AnnotationError, match="no behaviour token"):
        read_jhuang_clips(tmp_path / "c", count_frames=False)
    (tmp_path / "c" / "mouse_x_1.mpg").rename(tmp_path / "c" / "d_w_1.mpg")
    with pytest.raises(AnnotationError, match="several behaviour tokens"):
        read_jhuang_clips(tmp_path / "c", count_frames=False)


# ---------------------------------------------------------------- writers and round trips


def test_writers_round_trip_random_labels(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat(rng.integers(-1, 3, 12), rng.integers(1, 6, 12))
    a = _ann(labels)
    for write, name in [(write_boris_tabular, "t.csv"), (write_boris_aggregated, "g.csv")]:
        [b] = read_annotations(write(tmp_path / name, [a], media_file="v.mp4"), classes=SIDE_CLASSES)
        assert np.array_equal(b.labels, a.labels), name
    [c] = read_annotations(write_deepethogram(tmp_path / "deg.csv", a), classes=SIDE_CLASSES)
    assert np.array_equal(c.labels, a.labels)
    [d] = read_annotations(write_frame_csv(tmp_path / "f.csv", [a]), classes=SIDE_CLASSES, num_frames=labels.size)
    assert np.array_equal(d.labels, a.labels)
    assert sum(e - s for _, s, e in bouts(labels)) == labels.size


def test_synth_outputs_read_back_identically_through_every_reader(tmp_path):
    cfg = SynthConfig(view="side", duration_s=20.0, fps=15.0, arenas=2, arena_size_px=48, seed=5)
    r = render_video(cfg, tmp_path)
    n = r.num_frames
    readers = {
        "labels csv": read_annotations(r.labels_csv, num_frames=n),
        "boris tabular": read_annotations(r.boris_csv, fps=r.fps, num_frames=n),
    }
    anns = r.annotations()
    readers["boris aggregated"] = read_annotations(
        write_boris_aggregated(tmp_path / "agg.csv", anns, media_file=r.video_path.name), fps=r.fps
    )
    readers["deepethogram"] = [
        read_annotations(write_deepethogram(tmp_path / f"deg{i}.csv", a), num_frames=n)[0] for i, a in enumerate(anns)
    ]
    assert len({int(x) for lab in r.labels for x in np.unique(lab)}) == 3  # every class occurs
    for name, got in readers.items():
        assert len(got) == 2, name
        for a, expected in zip(got, r.labels):
            assert a.classes == SIDE_CLASSES, name
            assert np.array_equal(a.labels, expected), name
    assert [a.subject for a in readers["boris tabular"]] == ["arena0", "arena1"]
