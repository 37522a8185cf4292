"""Where decisions go: per-frame CSV and summary JSON, ZeroMQ messages, Prometheus metrics."""

from stream.outputs.csv_log import ArenaCsvLog
from stream.outputs.metrics import Metrics
from stream.outputs.publisher import SCHEMA_VERSION, Publisher
from stream.trial_files import read_frames_csv, replay_frames

__all__ = ["SCHEMA_VERSION", "ArenaCsvLog", "Metrics", "Publisher", "read_frames_csv", "replay_frames"]
