"""``stream-bench model``: paired timing, the result table/JSON, and refusals. Tiny sizes only."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from stream.bench import model as bench_model
from stream.bench.model import REFERENCE, add_arguments, paired_times, run
from stream.errors import UserError


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="stream-bench model")
    add_arguments(parser)
    return parser.parse_args(argv)


def test_pairs_alternate_order_so_drift_hits_both_sides() -> None:
    calls: list[str] = []
    ref, cand = paired_times(lambda: calls.append("ref"), lambda: calls.append("cand"), 4)
    assert calls == ["ref", "cand", "cand", "ref", "ref", "cand", "cand", "ref"]
    assert len(ref) == len(cand) == 4 and all(t >= 0 for t in ref + cand)


def test_defaults_cover_the_issue_grid() -> None:
    args = parse([])
    assert args.batch == [1, 8] and args.size == [112, 224] and args.backends == "auto"
    with pytest.raises(SystemExit):
        parse(["--batch", "0"])


def test_unknown_backend_is_refused() -> None:
    with pytest.raises(UserError, match="unknown openvino"):
        run(parse(["--backends", "openvino", "--size", "32", "--batch", "1"]))


def test_reference_only_run_prints_and_writes_json(tmp_path, capsys) -> None:
    out_json = tmp_path / "bench.json"
    assert run(parse(["--size", "32", "--batch", "2", "--repeats", "2", "--backends", REFERENCE,
                      "--device", "cpu", "--json", str(out_json)])) == 0  # fmt: skip
    (row,) = json.loads(out_json.read_text())
    assert row["backend"] == REFERENCE and row["engine"] == "torch-cpu-eager" and row["ratio_to_eager"] == 1.0
    assert row["clips_per_s"] == pytest.approx(2 / row["median_ms"] * 1e3)
    assert "torch-cpu-eager" in capsys.readouterr().out


@pytest.mark.slow  # exports a 98 MB ONNX graph: ~30 s on 2 shared cores
@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="onnxruntime not installed")
def test_smoke_run_reports_every_backend_with_ratios(tmp_path, capsys) -> None:
    out_json = tmp_path / "bench.json"
    code = run(parse(["--size", "32", "--batch", "1,2", "--repeats", "1", "--backends", "onnxruntime",
                      "--device", "cpu", "--json", str(out_json)]))  # fmt: skip
    assert code == 0
    text = capsys.readouterr().out
    rows = json.loads(out_json.read_text())
    assert {(r["backend"], r["batch"]) for r in rows} == {(b, n) for b in (REFERENCE, "onnxruntime") for n in (1, 2)}
    for row in rows:
        assert row["size_px"] == 32 and row["median_ms"] > 0
        assert row["clips_per_s"] == pytest.approx(row["batch"] / row["median_ms"] * 1e3)
        assert row["ratio_to_eager"] > 0
        assert f"{row['engine']}" in text
    assert all(r["ratio_to_eager"] == 1.0 for r in rows if r["backend"] == REFERENCE)
    assert {r["engine"] for r in rows} == {"torch-cpu-eager", "onnxruntime-cpu"}


def test_a_backend_that_cannot_start_is_skipped_with_its_reason(monkeypatch, caplog) -> None:
    """tensorrt is not installed here (nor is CUDA); the run goes on with the others."""
    monkeypatch.setitem(sys.modules, "torch_tensorrt", None)
    opened = bench_model._open("tensorrt", Path("."), "cpu", None, 1)
    assert opened is None
    assert any("skipping tensorrt" in r.getMessage() for r in caplog.records)


def test_cli_errors_are_one_line_without_traceback(tmp_path, capsys) -> None:
    from stream.bench import main

    assert main(["model", "--backends", "openvino", "--size", "32"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("stream-bench: error: --backends openvino: unknown openvino") and err.count("\n") == 1
    assert main(["model", "--model", str(tmp_path / "missing"), "--size", "32"]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "missing") in err and "Traceback" not in err and err.count("\n") == 1
