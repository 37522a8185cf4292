"""The terminal side of a run: progress bar, live counters line, systemd's STATUS=, the summary table.

An ``Output`` like the others, so the pipeline does not know a terminal exists. The live line goes
to systemd (``STATUS=``) even when the terminal is quiet: ``systemctl status`` is where a service's
operator looks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from stream.decisions import Decision
from stream.outputs.base import FrameEvent, Output, Status
from stream.trial_summary import TrialSummary, as_summary

__all__ = ["ConsoleOutput", "summary_table"]


class ConsoleOutput(Output):
    """Progress bar (``total_frames`` known: a file), one status line a second, systemd status."""

    def __init__(self, *, quiet: bool, bar_total: int | None = None, bar_desc: str = "",
                 show_bar: bool = False, systemd_status: Callable[[str], None] | None = None) -> None:
        from stream.pipeline import format_status  # the line format lives with the status it formats

        self._format = format_status
        self.quiet = quiet
        self.systemd_status = systemd_status
        self.last_behaviour: dict[str, str] = {}
        self.ended: dict[str, TrialSummary] = {}  # trial id -> summary of the trials ended (for the summary table)
        self.bar: Any = None
        if show_bar and not quiet:
            from tqdm import tqdm

            self.bar = tqdm(total=bar_total or None, unit="frame", desc=bar_desc, dynamic_ncols=True, disable=None,
                            leave=False)

    def on_frame(self, frame: FrameEvent) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def on_decision(self, arena_id: str, decision: Decision, latency_s: float | None) -> None:
        self.last_behaviour[arena_id] = decision.behaviour

    def on_trial_end(self, trial, summary: TrialSummary) -> None:
        self.ended[trial.trial_id] = summary

    def on_status(self, status: Status) -> None:
        if status.final:
            return  # the summary table follows
        line = self._format(status, self.last_behaviour)
        if self.systemd_status is not None:
            self.systemd_status(line)
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _fmt_s(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f} s"


def summary_table(summaries: Mapping[str, TrialSummary | Mapping[str, Any]], classes: list[str], source: str,
                  out_dir: Path, run: Mapping[str, Any] | None = None) -> str:
    """The end-of-run table printed to the terminal (one row per trial); ``run``: the run's info."""
    typed = {key: as_summary(s) for key, s in summaries.items()}
    shown = [c for c in classes if c != "immobile"]  # the top view's class is the immobile s column already
    head = ["arena", "frames", *[f"{c} s" for c in shown], "immobile s", "bouts", "1st bout s",
            "window immobile s", "window bouts", "gaps"]
    rows = []
    for arena_id, s in typed.items():
        c = s.counters
        w = c.scoring_window
        first = c.latency_to_first_bout_s
        rows.append([arena_id, str(c.frames_classified), *[f"{c.behaviour_s.get(k, 0.0):.1f}" for k in shown],
                     f"{c.immobile_s:.1f}", str(c.immobility_bouts), "-" if first is None else f"{first:.1f}",
                     f"{w.immobile_s:.1f}", str(w.immobility_bouts), str(c.gaps.count)])
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    fmt = "  ".join("{:<%d}" % w if i == 0 else "{:>%d}" % w for i, w in enumerate(widths))
    if run is None:
        run = (next(iter(typed.values())).run or {}) if typed else {}
    capture = run.get("capture") or {}
    truncated = (f" (TRUNCATED recording: {capture.get('source_frames')} of the {capture.get('source_frames_declared')} "
                 "frames its container declares)") if run.get("truncated_recording") else ""
    lines = [f"summary of {source} -> {out_dir}",
             f"  ended: {run.get('end_reason', '?')}{truncated}; {run.get('frames_processed', 0)} frames at {run.get('fps', 0):.1f} fps; "
             f"look-ahead {run.get('look_ahead_s', 0):.2f} s; capture-to-decision p50 "
             f"{_fmt_s((run.get('capture_to_decision_s') or {}).get('p50'))}",
             fmt.format(*head)]
    lines += [fmt.format(*r) for r in rows]
    return "\n".join(lines)
