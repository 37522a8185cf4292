"""export.trial_spans: a recording's trials for export-validate, and which labels belong to each."""

from __future__ import annotations

from export.trial_spans import TrialSpan, labels_of_trial, trials_of_schedule


def test_labels_named_like_the_animal_win_over_the_arenas():
    by_subject = {"A1": "arena labels", "M2": "M2's own labels"}
    assert labels_of_trial(by_subject, TrialSpan("A1", "M2", 6.0), "x") == "M2's own labels"
    assert labels_of_trial(by_subject, TrialSpan("A1", "M1", 1.0), "x") == "arena labels"
    assert labels_of_trial(by_subject, TrialSpan("A9", "M7", 1.0), "x") is None  # warned, not scored


def test_trials_of_a_schedule_are_its_rows_for_that_video(tmp_path):
    video = tmp_path / "Session.mp4"
    schedule = tmp_path / "s.csv"
    schedule.write_text("video,arena,animal,group,start_s\nsession.mp4,A1,M1,g,1\nother.mp4,A1,M5,g,1\n"
                        "session.mp4,A1,,g,7.5\n")
    spans = trials_of_schedule(schedule, video)
    assert spans == [TrialSpan("A1", "M1", 1.0), TrialSpan("A1", "A1@7.5s", 7.5)]
