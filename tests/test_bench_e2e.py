"""``stream-bench e2e`` runs the real pipeline for each arena count and reports consistent figures."""

from __future__ import annotations

import json

import pytest
import torch

import stream.engine as engine_mod
from stream.bench import main as bench_main

FPS = 15.0


@pytest.fixture(autouse=True)
def eager_engine(monkeypatch):
    """The frozen CPU engine costs ~10 s to build here; eager torch measures the same pipeline."""
    real = engine_mod.build_engine
    built = []

    def build(kind, model_dir, **kw):
        built.append(kw.get("batch_size"))
        return real("torch", model_dir, device="cpu", optimize=False, batch_size=kw.get("batch_size"))

    monkeypatch.setattr(engine_mod, "build_engine", build)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield built
    torch.set_num_threads(before)


@pytest.mark.slow
def test_bench_reports_throughput_and_latency_per_arena_count(tiny_model, tmp_path, capsys, eager_engine) -> None:
    out = tmp_path / "bench.json"
    code = bench_main(["e2e", "--model", str(tiny_model), "--arenas", "1,2", "--frames", "24",
                       "--latency-frames", "24", "--stride", "8", "--json", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    assert [r["arenas"] for r in report["results"]] == [1, 2]
    assert eager_engine == [1, 2]  # one batch holds all arenas
    for r in report["results"]:
        assert r["frames"] == 24
        assert r["frames_per_s"] > 0 and r["model_only_frames_per_s"] > 0
        assert r["x_realtime"] == pytest.approx(r["frames_per_s"] / FPS, rel=0.01)
        assert r["arena_frames_per_s"] == pytest.approx(r["frames_per_s"] * r["arenas"], rel=0.01)
        assert r["look_ahead_s"] == pytest.approx(7 / FPS, abs=1e-3)
        # paced like a camera: no decision can come before its 7 look-ahead frames were captured
        assert r["latency_p50_s"] >= r["look_ahead_s"] - 0.05
        assert r["latency_p95_s"] >= r["latency_p50_s"]
    printed = capsys.readouterr().out
    assert "frames/s" in printed and "look-ahead" in printed


def test_bench_throughput_only_quick(tiny_model, tmp_path, eager_engine) -> None:
    out = tmp_path / "bench.json"
    assert bench_main(["e2e", "--model", str(tiny_model), "--arenas", "2", "--frames", "24", "--latency-frames", "0",
                       "--stride", "16", "--json", str(out)]) == 0
    (r,) = json.loads(out.read_text())["results"]
    assert r["arenas"] == 2 and r["frames"] == 24 and r["frames_per_s"] > 0 and "latency_p50_s" not in r
    assert r["model_s_per_call"] > 0 and r["flow_s_per_frame"] > 0


def test_bench_refuses_bad_arguments(tiny_model, capsys) -> None:
    assert bench_main(["e2e", "--model", str(tiny_model), "--arenas", "one"]) == 2
    assert "--arenas" in capsys.readouterr().err
    assert bench_main(["e2e", "--model", str(tiny_model), "--frames", "5"]) == 2


def test_realtime_summary_takes_the_largest_count_in_real_time_per_engine() -> None:
    from stream.bench.e2e import realtime_summary

    rows = [{"engine": e, "device": "cpu", "stride": 1, "arenas": n, "x_realtime": x}
            for e, n, x in (("streaming-torch-cpu", 1, 3.1), ("streaming-torch-cpu", 2, 1.6), ("streaming-torch-cpu", 4, 0.9),
                            ("torch-cpu-frozen", 1, 0.6), ("torch-cpu-frozen", 2, 0.35))]
    got = {e["engine"]: e for e in realtime_summary(rows)}
    assert got["streaming-torch-cpu"]["largest_realtime_arenas"] == 2
    assert got["streaming-torch-cpu"]["realtime_capacity_arenas"] == pytest.approx(3.6)  # 0.9 x 4 arenas
    assert got["torch-cpu-frozen"]["largest_realtime_arenas"] == 0
    assert got["torch-cpu-frozen"]["realtime_capacity_arenas"] == pytest.approx(0.7)


@pytest.mark.slow
def test_streaming_and_clip_engines_in_one_run(tiny_model, tmp_path, capsys, monkeypatch) -> None:
    from stream.engine.factory import build_engine as factory_build

    kinds = []

    def build(kind, model_dir, **kw):
        kinds.append(kind)
        if kind == "streaming":
            return factory_build("streaming", model_dir, device="cpu")
        return factory_build("torch", model_dir, device="cpu", optimize=False, batch_size=kw.get("batch_size"))

    monkeypatch.setattr(engine_mod, "build_engine", build)
    out = tmp_path / "bench.json"
    code = bench_main(["e2e", "--model", str(tiny_model), "--arenas", "2", "--frames", "24", "--latency-frames", "0",
                       "--engine", "streaming,torch", "--json", str(out)])
    assert code == 0 and kinds == ["streaming", "torch"]
    report = json.loads(out.read_text())
    assert [r["engine"] for r in report["results"]] == ["streaming-torch-cpu", "torch-cpu-eager"]
    for r in report["results"]:
        assert r["frames"] == 24 and 0 < r["flow_share"] < 1 and 0 < r["model_share"] < 1
    assert [e["engine"] for e in report["realtime"]] == ["streaming-torch-cpu", "torch-cpu-eager"]
    assert "real time at stride 1: streaming-torch-cpu/cpu kept" in capsys.readouterr().out
