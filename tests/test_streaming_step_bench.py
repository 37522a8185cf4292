"""export.streaming_step_bench: every variant times the same step and reports its ratio to the PyTorch step."""

from __future__ import annotations

from export.streaming_step_bench import VARIANTS, main, time_steps


def test_every_variant_is_timed_against_the_torch_step(tiny_model) -> None:
    rows = time_steps(tiny_model, arenas=[1, 2], threads=[1], steps=2)
    assert [(r["arenas"], r["variant"]) for r in rows] == [(n, v) for n in (1, 2) for v in VARIANTS]
    assert all(r["ms_per_step"] > 0 for r in rows)
    assert [r["speedup_vs_torch"] for r in rows if r["variant"] == "torch"] == [1.0, 1.0]


def test_cli_prints_the_table_and_refuses_a_bad_list(tiny_model, capsys) -> None:
    assert main(["--model", str(tiny_model), "--arenas", "1", "--threads", "1", "--steps", "1",
                 "--variants", "torch,onnxruntime-iobind"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["threads", "arenas", "variant"] and len(lines) == 3
    assert main(["--model", str(tiny_model), "--variants", "onnxruntime"]) == 2  # the reference is needed
    assert "torch (the reference) is needed" in capsys.readouterr().err
