"""``stream.recording_time``: the recording's start from a video file's container metadata, or None."""

from __future__ import annotations

import av
import numpy as np

from stream.recording_time import recording_start_utc


def _video_with(path, creation_time: str | None):
    container = av.open(str(path), "w")
    if creation_time is not None:
        container.metadata["creation_time"] = creation_time
    stream = container.add_stream("mpeg4", rate=15)
    stream.width = stream.height = 32
    stream.pix_fmt = "yuv420p"
    for _ in range(3):
        for packet in stream.encode(av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return path


def test_creation_time_is_read_as_utc(tmp_path) -> None:
    video = _video_with(tmp_path / "cam.mp4", "2026-05-01T09:30:07.000000Z")  # MP4 keeps whole seconds
    assert recording_start_utc(video) == "2026-05-01T09:30:07.000+00:00"


def test_no_metadata_an_epoch_date_or_no_video_is_none(tmp_path) -> None:
    assert recording_start_utc(_video_with(tmp_path / "plain.mp4", None)) is None
    assert recording_start_utc(_video_with(tmp_path / "epoch.mp4", "1970-01-01T00:00:00.000000Z")) is None
    (tmp_path / "junk.mp4").write_bytes(b"not a video")
    assert recording_start_utc(tmp_path / "junk.mp4") is None


def test_stream_run_writes_the_recordings_time_into_results(tmp_path, tiny_model) -> None:
    import csv

    from stream.run import main

    container = av.open(str(tmp_path / "cam.mp4"), "w")
    container.metadata["creation_time"] = "2026-05-01T09:30:07.000000Z"
    stream = container.add_stream("mpeg4", rate=15)
    stream.width = stream.height = 64
    stream.pix_fmt = "yuv420p"
    for i in range(30):
        image = np.full((64, 64, 3), 40, np.uint8)
        image[20:30, 2 * i : 2 * i + 10] = 220
        for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    assert main(["--video", str(tmp_path / "cam.mp4"), "--model", str(tiny_model), "--out", str(tmp_path / "out"),
                 "--no-zmq", "--no-metrics", "-q", "--engine", "torch", "--device", "cpu"]) == 0
    (row,) = list(csv.DictReader(open(tmp_path / "out" / "results.csv")))
    assert row["recording_start_utc"] == "2026-05-01T09:30:07.000+00:00"
    assert row["video_start_s"] == "0.000" and row["video_end_s"] == row["duration_s"]
