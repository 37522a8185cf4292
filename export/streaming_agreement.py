"""How close the streaming engine comes to the clip-wise model on real videos (issue 22).

``python -m export.streaming_agreement VIDEO... [--model DIR]`` decodes each video at the model's
frame rate, crops its arenas (the ``.arenas.json`` sidecar), computes RGB and TV-L1 flow once per
frame in the pipeline's ``ClipRing``, and feeds the same frames to both engines: the clip model
(``torch``, eager FP32) on the clip around every frame, and the streaming engine one frame at a
time. It reports, per video and over all: the largest fused probability difference, per-frame
label agreement (argmax, and after stream-run's default smoothing, a centred 5-frame average),
immobile time of each (smoothed labels in the card's immobile classes) and, where the simulator's
``.labels.csv`` is beside the video, each engine's accuracy against the true labels.

For a card trained for streaming (``export.streaming_finetune``), ``--clip-model`` names the clip
model to compare with (the bundled one it started from), and ``--parallel`` also checks the
streaming engine against the card's parallel form (``stream.causal_i3d``) on the same frames.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from stream.arenas import load_arena_file, sidecar_arena_file
from stream.engine import KIND_STREAMING, KIND_STREAMING_TORCH, build_engine
from stream.errors import UserError, cli_main
from stream.flow import TVL1, FlowConfig
from stream.modelfile import load_card
from stream.preprocess import FUTURE_FRAMES, crop_resize
from stream.ring import ClipRing

__all__ = ["VideoAgreement", "compare_video", "main"]

log = logging.getLogger(__name__)

SMOOTHING_WINDOW_FRAMES = 5  # stream-run's default --smoothing average --smoothing-window


@dataclass(frozen=True)
class VideoAgreement:
    video: str
    arena_frames: int
    max_prob_diff: float
    label_agreement: float  # argmax of the fused probabilities
    smoothed_agreement: float  # after the centred moving average stream-run applies by default
    immobile_s_clip: float
    immobile_s_stream: float
    accuracy_clip: float | None  # against the simulator's true labels, where present
    accuracy_stream: float | None


def _smooth(probs: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average over frames (axis 0), shrinking at the ends, as stream.decisions does."""
    half = (window - 1) // 2
    out = np.empty_like(probs)
    for t in range(len(probs)):
        out[t] = probs[max(0, t - half) : t + window - half].mean(axis=0)
    return out


def _true_labels(video: Path, arena_ids: list[str], classes: list[str]) -> np.ndarray | None:
    path = video.with_name(video.stem + ".labels.csv")
    if not path.is_file():
        return None
    rows = list(csv.DictReader(path.open()))
    if "arena" not in rows[0]:
        return np.array([[classes.index(r["label"])] for r in rows])
    by = {(int(r["frame"]), r["arena"]): classes.index(r["label"]) for r in rows}
    frames = max(f for f, _ in by) + 1
    return np.array([[by[(f, a)] for a in arena_ids] for f in range(frames)])


def compare_video(video: Path, model_dir: Path, max_frames: int | None = None,
                  streamed_layers: int | None = None, clip_model_dir: Path | None = None,
                  parallel: bool = False) -> tuple[VideoAgreement, dict]:
    """``clip_model_dir``: the clip-wise reference's model (default ``model_dir``; a card trained for
    streaming needs another). ``parallel``: also the streaming card's parallel form
    (``stream.causal_i3d.segment_outputs``) on the same frames, as ``extra["parallel"]``."""
    card = load_card(model_dir)
    arenas = load_arena_file(sidecar_arena_file(video) or video.with_suffix(".arenas.json"))
    clip_engine = build_engine("torch", clip_model_dir or model_dir, device="cpu", optimize=False)
    # a partly streamed module replaces the engine's torch step, so that step must be the one that runs
    stream_kind = KIND_STREAMING if streamed_layers is None else KIND_STREAMING_TORCH
    stream_engine = build_engine(stream_kind, model_dir, device="cpu")
    if streamed_layers is not None:
        from stream.engine.streaming import _FusedStreaming

        stream_engine.module = _FusedStreaming(clip_engine._module.model, card.clip_frames,
                                               streamed_layers=streamed_layers).eval()
    size = card.input_size_px
    ring = ClipRing(len(arenas), size, TVL1(FlowConfig(**card.flow)))
    stream = stream_engine.open_stream(len(arenas))
    cap = cv2.VideoCapture(str(video))
    if not cap.isOpened():
        raise UserError(f"{video}: cannot open")
    step = max(1, round(cap.get(cv2.CAP_PROP_FPS) / card.fps))  # the model's rate, as stream-run resamples
    clip_p: list[np.ndarray] = []
    stream_p: dict[int, np.ndarray] = {}
    pushed: list[tuple[np.ndarray, np.ndarray]] = []  # (rgb, flow) of every frame, for the parallel form
    index = raw = 0
    while max_frames is None or index < max_frames:
        ok, image = cap.read()
        if not ok:
            break
        raw += 1
        if (raw - 1) % step:
            continue
        ring.push(np.stack([crop_resize(image, a.roi, size) for a in arenas]), index)
        pred = stream.push(*ring.frame(index))
        if parallel:
            pushed.append(tuple(torch.as_tensor(x).float().numpy().copy() for x in ring.frame(index)))  # the ring reuses its slots
        if pred is not None:
            stream_p[index - FUTURE_FRAMES] = pred.fused
        if index >= FUTURE_FRAMES:
            clip_p.append(clip_engine.predict(*ring.clip(index - FUTURE_FRAMES)))
        index += 1
    last = index - 1
    for i, pred in enumerate(tail := stream.flush()):
        stream_p[last - len(tail) + 1 + i] = pred.fused
    for center in range(max(0, last - FUTURE_FRAMES + 1), last + 1):
        clip_p.append(clip_engine.predict(*ring.clip(center, last)))
    clip_a = np.stack(clip_p)  # (frames, arenas, K)
    stream_a = np.stack([stream_p[t] for t in range(index)])
    immobile = [card.classes.index(c) for c in card.immobile_classes]
    sm_clip = _smooth(clip_a, SMOOTHING_WINDOW_FRAMES).argmax(-1)
    sm_stream = _smooth(stream_a, SMOOTHING_WINDOW_FRAMES).argmax(-1)
    truth = _true_labels(video, [a.id for a in arenas], list(card.classes))
    acc_clip = acc_stream = None
    if truth is not None:
        n = min(len(truth), index)
        acc_clip = float((sm_clip[:n] == truth[:n]).mean())
        acc_stream = float((sm_stream[:n] == truth[:n]).mean())
    result = VideoAgreement(
        video=video.name,
        arena_frames=int(clip_a.shape[0] * clip_a.shape[1]),
        max_prob_diff=float(np.abs(clip_a - stream_a).max()),
        label_agreement=float((clip_a.argmax(-1) == stream_a.argmax(-1)).mean()),
        smoothed_agreement=float((sm_clip == sm_stream).mean()),
        immobile_s_clip=float(np.isin(sm_clip, immobile).sum() / card.fps),
        immobile_s_stream=float(np.isin(sm_stream, immobile).sum() / card.fps),
        accuracy_clip=acc_clip,
        accuracy_stream=acc_stream,
    )
    extra = {"clip": clip_a, "stream": stream_a}
    if parallel:
        extra["parallel"] = _parallel_form(model_dir, pushed)  # (frames, arenas, K)
    return result, extra


def _parallel_form(model_dir: Path, pushed: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """The parallel form's fused probabilities of one segment of frames, (frames, arenas, K)."""
    from stream.causal_i3d import segment_outputs
    from stream.modelfile import load_model

    model, _ = load_model(model_dir)
    rgb = torch.from_numpy(np.stack([r for r, _ in pushed], axis=2))  # (arenas, 3, frames, S, S)
    flow = torch.from_numpy(np.stack([f for _, f in pushed], axis=2))
    with torch.no_grad():
        return segment_outputs(model, rgb, flow)[0].transpose(0, 1).numpy()


@cli_main("streaming-agreement")
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m export.streaming_agreement", description=__doc__.splitlines()[0])
    p.add_argument("videos", nargs="+", type=Path)
    p.add_argument("--model", type=Path, default=Path("trained_models/fst-side-64"))
    p.add_argument("--max-frames", type=int, default=None, help="only the first N frames of each video")
    p.add_argument("--streamed-layers", type=int, default=None, help="stream only the first N body layers (experiment)")
    p.add_argument("--clip-model", type=Path, default=None,
                   help="the clip-wise reference's model (default --model; needed for a card trained for streaming)")
    p.add_argument("--parallel", action="store_true",
                   help="also compare the streaming engine with the model's parallel form (stream/causal_i3d.py)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    rows = []
    for video in args.videos:
        r, extra = compare_video(video, args.model, args.max_frames, args.streamed_layers, args.clip_model, args.parallel)
        rows.append(r)
        if args.parallel:
            par, st = extra["parallel"], extra["stream"]
            print(f"{r.video}: streaming engine vs parallel form: labels agree {100 * float((par.argmax(-1) == st.argmax(-1)).mean()):.2f} %, "
                  f"max |dp| {float(np.abs(par - st).max()):.1e}", flush=True)
        print(f"{r.video}: {r.arena_frames} arena-frames, max |dp| {r.max_prob_diff:.3f}, labels agree "
              f"{100 * r.label_agreement:.2f} % (smoothed {100 * r.smoothed_agreement:.2f} %), immobile "
              f"{r.immobile_s_clip:.1f} s clip vs {r.immobile_s_stream:.1f} s stream"
              + (f", accuracy vs truth {100 * r.accuracy_clip:.1f} % clip, {100 * r.accuracy_stream:.1f} % stream"
                 if r.accuracy_clip is not None else ""), flush=True)
    frames = sum(r.arena_frames for r in rows)
    mean = lambda f: sum(getattr(r, f) * r.arena_frames for r in rows) / frames  # noqa: E731
    ic, is_ = sum(r.immobile_s_clip for r in rows), sum(r.immobile_s_stream for r in rows)
    print(f"all: {frames} arena-frames, max |dp| {max(r.max_prob_diff for r in rows):.3f}, labels agree "
          f"{100 * mean('label_agreement'):.2f} % (smoothed {100 * mean('smoothed_agreement'):.2f} %), immobile "
          f"{ic:.1f} s clip vs {is_:.1f} s stream ({100 * (is_ - ic) / max(ic, 1e-9):+.2f} %)")
    if args.json is not None:
        from dataclasses import asdict

        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
