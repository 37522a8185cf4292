"""Fine-tunes a clip-trained I3D card for the streaming engine's function (issue 22).

``python -m export.streaming_finetune --model trained_models/fst-side-64 --videos V1.mp4 ... --out DIR``

The streaming engine (``--engine streaming``) runs a card's weights as a causal stream that is not
the clip model (README, "Streaming engine"). This trains that very function: the parallel form
``stream.causal_i3d.causal_fused`` on windows of consecutive frames of labelled videos, each window
fed as a segment start is fed live (its first frame repeated ``PAST_FRAMES`` times before it, flow
zero) and followed by the ``FUTURE_FRAMES`` real frames of its last frames' look-ahead. The loss is
the clip training's, per frame: cross-entropy of the RGB logits plus that of the flow logits
(class-weighted by the training frames' inverse class frequency, as the clip training's balanced
sampler weighs them), on every labelled frame of the window. Batch norm stays in eval mode (its
statistics and those of the stream's columns are the clip model's), dropout is the card's; the
layers before ``--train-from`` are frozen (on 2 CPU cores their backward pass is most of the cost).
With ``--distill CLIP_MODEL_DIR`` the target of each frame is instead (or, with ``--distill-weight``
below 1, also) the clip model's probabilities: per stream, the KL divergence of the stream's softmax
from the clip model's softmax of the same stream, on the clip centred on that frame as the clip-wise
engine sees it (``export.dataset.ClipDataset.clip``, no augmentation). The clip model runs once per
frame before training (``--distill-every N``: on every N-th frame only, the others then carry the
label loss alone; a clip costs ~10 streaming steps, so on 2 cores every frame of a few minutes of
video takes longer than the fine-tune itself). This trains towards agreement with the clip model
rather than towards the truth.
With ``--cached-stem`` the frozen layers run once per video, the whole video as one segment (as
``stream-run`` sees it, without augmentation), and the trained layers on windows of their output that
start early enough for every output to have its real past (``stream.causal_i3d.receptive_frames``).

Data, labels and flow come from ``export-train``'s dataset (``export.train_data.dataset_from_args``:
label files beside the videos, ``export-synth``'s arenas files, the flow cache, the card's frame
rate, size and TV-L1 settings). The output is a model folder whose card says ``trained_for:
"streaming"`` and whose weights are ``stream.causal_i3d.streaming_state_dict`` of the trained model:
the streaming engine computes exactly the parallel form (checked on a window before the card is
written: ``training.check_max_prob_diff``); the clip-wise engines refuse it.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from export.dataset import flow_input
from export.train_config import flow_options_of
from export.train_data import dataset_from_args
from stream.causal_i3d import (SEGMENT_LEAD_FRAMES, causal_features, causal_fused, causal_logits, receptive_frames, segment_inputs,
                               segment_outputs, streaming_state_dict)
from stream.errors import UserError, cli_main
from stream.model import FEATURE_LAYERS, FusedI3D, fuse
from stream.modelfile import TRAINED_FOR_STREAMING, ModelCard, load_card, load_model, save_model, verify_weights
from stream.preprocess import FUTURE_FRAMES, rgb_clip

__all__ = ["FinetuneConfig", "FinetuneResult", "finetune", "main"]

log = logging.getLogger(__name__)

# A step's window: a stream output reads 59 frames back (stream.engine.base.STREAM_RECEPTIVE_FRAMES),
# so 96 frames give 37 of them their whole past and the rest a segment's start, which the stream also
# sees live; longer windows cost proportionally more per step.
DEFAULT_WINDOW_FRAMES = 96
DEFAULT_STEPS = 200
DEFAULT_LR = 1e-4  # a tenth of the bundled model's training rate: a fine-tune, not a new training
DEFAULT_TRAIN_FROM = "Mixed_3b"  # the stem (64/192 channels at 1/2..1/4 of the input) stays as trained
CHECK_FRAMES = 40  # frames of the after-training check: streaming engine vs parallel form
CHECK_ATOL = 1e-4  # FP32, the same weights summed in another order (measured ~1e-6)
LOG_EVERY_STEPS = 10
# clips per clip-model call when computing the distillation targets: a batch of 8 64 px clips runs at
# least as fast per clip as larger ones on 2 shared cores (measured 2.4 clips/s vs 1.3 at 32), with little memory
DISTILL_BATCH_CLIPS = 8


@dataclass(frozen=True)
class FinetuneConfig:
    steps: int = DEFAULT_STEPS  # optimiser steps (one window each)
    window_frames: int = DEFAULT_WINDOW_FRAMES  # labelled frames per window (+ FUTURE_FRAMES read after them)
    lr: float = DEFAULT_LR  # Adam, cosine to lr_floor
    lr_floor: float = 1e-5
    weight_decay: float = 1e-7  # the bundled model's
    train_from: str = DEFAULT_TRAIN_FROM  # first trained layer of FEATURE_LAYERS (the earlier ones frozen)
    augment: bool = True  # the clip training's flip / crop / brightness, drawn once per window
    # compute the frozen layers once per source (the whole video as one segment, no augmentation) and
    # train the rest on windows of their output: several times faster per step, every output with its real past
    cached_stem: bool = False
    seed: int = 0
    max_minutes: float | None = None  # stop early (and still write the model) after this long
    # with a clip model to distill from: the weight W of its KL term, loss = (1 - W) * CE(label) + W * KL
    distill_weight: float = 1.0
    distill_every: int = 1  # the clip model's targets on every N-th frame of each source (its cost / N)

    def __post_init__(self) -> None:
        if self.steps < 1 or self.window_frames < 1:
            raise UserError(f"--steps {self.steps}, --window-frames {self.window_frames}: both must be >= 1")
        if not 0 < self.lr_floor <= self.lr:
            raise UserError(f"--lr {self.lr}, --lr-floor {self.lr_floor}: need 0 < lr-floor <= lr")
        if self.train_from not in FEATURE_LAYERS:
            raise UserError(f"--train-from {self.train_from!r}: one of {', '.join(FEATURE_LAYERS)}")
        if not 0.0 <= self.distill_weight <= 1.0:
            raise UserError(f"--distill-weight {self.distill_weight}: must be between 0 (labels only) and 1 (clip model only)")
        if self.distill_every < 1:
            raise UserError(f"--distill-every {self.distill_every}: must be >= 1")


@dataclass(frozen=True)
class FinetuneResult:
    steps_run: int
    wall_s: float
    loss_first: float  # mean loss of the first LOG_EVERY_STEPS steps
    loss_last: float  # and of the last ones
    fused_acc_last: float  # per-frame fused accuracy on the last steps' windows (training data)
    distilled_frames: int = 0  # frames with the clip model's probabilities as a target


def _freeze(model: FusedI3D, train_from: str) -> int:
    """requires_grad off for the layers before ``train_from``; returns the trained parameter count."""
    frozen = FEATURE_LAYERS[: FEATURE_LAYERS.index(train_from)]
    count = 0
    for stream in (model.rgb, model.flow):
        for name, p in stream.named_parameters():
            p.requires_grad_(name.split(".")[0] not in frozen)
            count += p.numel() if p.requires_grad else 0
    return count


def _train_mode(model: FusedI3D) -> None:
    """Dropout on, batch norm in eval mode (its statistics stay the clip model's)."""
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()


class _Windows:
    """Windows of consecutive frames, each fed as a segment start; the whole network runs on each."""

    def __init__(self, dataset, config: FinetuneConfig) -> None:
        self.dataset, self.config = dataset, config
        sources, starts = [], []
        for s in range(len(dataset.sources)):
            n = dataset.num_frames(s) - (config.window_frames + FUTURE_FRAMES) + 1
            if n > 0 and (dataset.source_labels(s) >= 0).any():
                sources.append(s)
                starts.append(n)
        if not sources:
            raise UserError(f"no video has {config.window_frames + FUTURE_FRAMES} frames for a window; use a smaller --window-frames")
        self.sources, self.starts = np.asarray(sources), np.asarray(starts)
        self.labels = np.concatenate([dataset.source_labels(int(s)) for s in sources])

    def outputs(self, model: FusedI3D, rng: np.random.Generator) -> tuple | None:
        """(fused, rgb logits, flow logits) (W, K), labels (W,), and the window's source and first frame,
        of one random window; None if unlabelled."""
        k = int(rng.choice(len(self.sources), p=self.starts / self.starts.sum()))  # every window start equally likely
        s, a, w = int(self.sources[k]), int(rng.integers(0, self.starts[k])), self.config.window_frames
        y = torch.as_tensor(self.dataset.source_labels(s)[a : a + w])
        if not bool((y >= 0).any()):
            return None
        rgb, flow = self.dataset.window(s, a, a + w + FUTURE_FRAMES, rng if self.config.augment else None)
        flow[:, 0] = 0.0  # a segment's first frame has no flow (stream.ring)
        rgb_in, flow_in = segment_inputs(torch.from_numpy(rgb)[None], torch.from_numpy(flow)[None], end=False)
        outs = causal_fused(model, rgb_in, flow_in)
        return (*(o[0, SEGMENT_LEAD_FRAMES : SEGMENT_LEAD_FRAMES + w] for o in outs), y, s, a)


class _CachedStem:
    """The frozen layers' output for every source, computed once with the whole video as one segment
    (as stream-run sees it; no augmentation), and windows of it for the trained layers. Each window
    starts ``receptive_frames`` early (or at the segment's start), so every output has its real past."""

    def __init__(self, model: FusedI3D, dataset, config: FinetuneConfig) -> None:
        self.config = config
        self.start = FEATURE_LAYERS.index(config.train_from)
        self.margin = max(receptive_frames(model.rgb, start=self.start), receptive_frames(model.flow, start=self.start))
        self.features: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.step_labels: list[np.ndarray] = []  # per segment step: the label of the frame it emits (-1: none)
        began = time.perf_counter()
        for s in range(len(dataset.sources)):
            rgb, flow = dataset.window(s, 0, dataset.num_frames(s))
            flow[:, 0] = 0.0
            rgb_in, flow_in = segment_inputs(torch.from_numpy(rgb)[None], torch.from_numpy(flow)[None])
            with torch.no_grad():
                self.features.append((causal_features(model.rgb, rgb_in, stop=self.start),
                                      causal_features(model.flow, flow_in, stop=self.start)))
            labels = np.full(rgb_in.shape[2], -1, dtype=np.int64)
            labels[SEGMENT_LEAD_FRAMES:] = dataset.source_labels(s)
            self.step_labels.append(labels)
        log.info("stem up to %s cached for %d sources in %.0f s (%.0f MB)", config.train_from, len(self.features),
                 time.perf_counter() - began, sum(f.numel() * 4 for pair in self.features for f in pair) / 1e6)
        self.spans = np.asarray([len(labels) - SEGMENT_LEAD_FRAMES - config.window_frames + 1 for labels in self.step_labels])
        if (self.spans < 1).all():
            raise UserError(f"no video has {config.window_frames} frames for a window; use a smaller --window-frames")
        self.spans = np.maximum(self.spans, 0)
        self.labels = np.concatenate(self.step_labels)

    def outputs(self, model: FusedI3D, rng: np.random.Generator) -> tuple | None:
        k = int(rng.choice(len(self.spans), p=self.spans / self.spans.sum()))
        first = SEGMENT_LEAD_FRAMES + int(rng.integers(0, self.spans[k]))  # the window's first output step
        stop = first + self.config.window_frames
        y = torch.as_tensor(self.step_labels[k][first:stop])
        if not bool((y >= 0).any()):
            return None
        begin = max(0, first - self.margin)  # causal: outputs from `first` on are the whole segment's
        rgb_f, flow_f = (f[:, :, begin:stop] for f in self.features[k])
        rgb_logits = causal_logits(model.rgb, rgb_f, start=self.start)[0, first - begin :]
        flow_logits = causal_logits(model.flow, flow_f, start=self.start)[0, first - begin :]
        return fuse(rgb_logits, flow_logits, model.flow_weight), rgb_logits, flow_logits, y, k, first - SEGMENT_LEAD_FRAMES


class ClipTargets:
    """The clip model's per-stream probabilities for frames of every source of a dataset, computed once
    (every ``every``-th frame; NaN elsewhere) on the clip centred on each frame, as export-train and the
    clip-wise engine see it: ``ClipDataset.clip`` (edge frames repeated, their flow zero), no augmentation."""

    def __init__(self, clip_model_dir: Path, dataset, every: int = 1) -> None:
        from stream.engine import build_engine

        engine = build_engine("torch", clip_model_dir, device="cpu", optimize=False)
        if list(engine.classes) != list(dataset.classes):
            raise UserError(f"--distill {clip_model_dir}: classes {list(engine.classes)} differ from the fine-tuned model's "
                            f"{list(dataset.classes)}")
        began = time.perf_counter()
        self.rgb: list[np.ndarray] = []
        self.flow: list[np.ndarray] = []
        for s in range(len(dataset.sources)):
            n = dataset.num_frames(s)
            rgb_p = np.full((n, len(dataset.classes)), np.nan, dtype=np.float32)
            flow_p = rgb_p.copy()
            centres = np.arange(0, n, every)
            for i in range(0, len(centres), DISTILL_BATCH_CLIPS):
                batch = centres[i : i + DISTILL_BATCH_CLIPS]
                clips = [dataset.clip(s, int(c)) for c in batch]
                rgb = np.stack([rgb_clip(frames) for frames, _ in clips])
                flow = np.stack([flow_input(px) for _, px in clips])  # (B, 2, 16, S, S)
                pred = engine.predict_all(rgb, flow)
                rgb_p[batch], flow_p[batch] = pred.rgb, pred.flow
            self.rgb.append(rgb_p)
            self.flow.append(flow_p)
        engine.close()
        self.clips = sum(int(np.isfinite(p[:, 0]).sum()) for p in self.rgb)
        log.info("clip model's probabilities for %d frames of %d sources (every %d) in %.0f s", self.clips, len(self.rgb),
                 every, time.perf_counter() - began)

    def lookup(self, source: int, start: int, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(rgb, flow) probabilities (frames, K) of frames ``start ..``; rows of frames without a target are NaN."""
        return (torch.from_numpy(self.rgb[source][start : start + frames]),
                torch.from_numpy(self.flow[source][start : start + frames]))


def _kl(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over frames with a target (no NaN row) of KL(target || softmax(logits)); 0 without any."""
    has = torch.isfinite(target).all(-1)
    if not bool(has.any()):
        return logits.sum() * 0.0
    return F.kl_div(F.log_softmax(logits[has], -1), target[has], reduction="batchmean")


def window_loss(rgb_logits: torch.Tensor, flow_logits: torch.Tensor, y: torch.Tensor, weights: torch.Tensor,
                targets: tuple[torch.Tensor, torch.Tensor] | None = None, distill_weight: float = 0.0) -> torch.Tensor:
    """A window's loss: each stream's class-weighted CE to the labels, and with ``targets`` (the clip
    model's rgb / flow probabilities per frame) ``(1 - W) * CE + W * KL`` per stream."""
    ce = F.cross_entropy(rgb_logits, y, weight=weights, ignore_index=-1) + F.cross_entropy(flow_logits, y, weight=weights, ignore_index=-1)
    if targets is None:
        return ce
    kl = _kl(rgb_logits, targets[0]) + _kl(flow_logits, targets[1])
    if distill_weight >= 1.0:
        return kl  # no label term (CE of a window without labels would be NaN)
    return (1.0 - distill_weight) * ce + distill_weight * kl


def finetune(model: FusedI3D, dataset, config: FinetuneConfig, clip_model_dir: Path | None = None) -> FinetuneResult:
    """Train ``model`` in place on windows of ``dataset`` (a ``ClipDataset``) for the stream's function;
    with ``clip_model_dir`` towards that clip model's probabilities (``config.distill_weight``)."""
    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    start_time = time.perf_counter()  # the stem's cache and the clip model's targets included
    targets = ClipTargets(clip_model_dir, dataset, config.distill_every) if clip_model_dir is not None else None
    trained = _freeze(model, config.train_from)
    draw = _CachedStem(model, dataset, config) if config.cached_stem else _Windows(dataset, config)
    labels = draw.labels
    counts = np.bincount(labels[labels >= 0], minlength=len(dataset.classes)).astype(np.float64)
    weights = torch.as_tensor(np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / len(counts), 0.0), dtype=torch.float32)
    params = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    log.info("streaming fine-tune: %d trainable parameters (from %s), %d steps of %d-frame windows (%s), class weights %s",
             trained, config.train_from, config.steps, config.window_frames,
             "cached stem" if config.cached_stem else "whole network", np.round(weights.numpy(), 3).tolist())
    _train_mode(model)
    losses, correct, seen = [], [], []
    for step in range(1, config.steps + 1):
        lr = config.lr_floor + 0.5 * (config.lr - config.lr_floor) * (1 + math.cos(math.pi * (step - 1) / config.steps))
        for group in optimiser.param_groups:
            group["lr"] = lr
        outs = draw.outputs(model, rng)
        if outs is None:
            continue
        fused, rgb_logits, flow_logits, y, source, first = outs
        target = targets.lookup(source, first, len(y)) if targets is not None else None
        loss = window_loss(rgb_logits, flow_logits, y, weights, target, config.distill_weight)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
        labelled = y >= 0
        correct.append(int((fused.argmax(-1)[labelled] == y[labelled]).sum()))
        seen.append(int(labelled.sum()))
        if step % LOG_EVERY_STEPS == 0 or step == config.steps:
            recent = slice(-LOG_EVERY_STEPS, None)
            log.info("step %d/%d: loss %.3f, fused accuracy %.3f (last %d steps), lr %.2g, %.1f s/step",
                     step, config.steps, float(np.mean(losses[recent])), sum(correct[recent]) / max(sum(seen[recent]), 1),
                     len(losses[recent]), lr, (time.perf_counter() - start_time) / step)
        if config.max_minutes is not None and time.perf_counter() - start_time > 60 * config.max_minutes:
            log.warning("stopping after %d steps: --max-minutes %g reached", step, config.max_minutes)
            break
    model.eval()
    head, tail = slice(0, LOG_EVERY_STEPS), slice(-LOG_EVERY_STEPS, None)
    return FinetuneResult(
        steps_run=len(losses),
        wall_s=time.perf_counter() - start_time,
        loss_first=float(np.mean(losses[head])) if losses else float("nan"),
        loss_last=float(np.mean(losses[tail])) if losses else float("nan"),
        fused_acc_last=sum(correct[tail]) / max(sum(seen[tail]), 1),
        distilled_frames=targets.clips if targets is not None else 0,
    )


def streaming_model(model: FusedI3D) -> FusedI3D:
    """The I3D whose streaming engine computes ``model``'s parallel form exactly (``streaming_state_dict``)."""
    stored = FusedI3D(num_classes=model.num_classes, flow_weight=model.flow_weight,
                      dropout_keep_prob=1.0 - model.rgb.dropout.p)
    stored.load_state_dict(streaming_state_dict(model))
    return stored.eval()


def check_against_engine(model: FusedI3D, model_dir: Path, dataset) -> float:
    """Max fused-probability difference between the streaming engine on the written folder and the
    parallel form of ``model`` on the first ``CHECK_FRAMES`` frames of the first source."""
    from stream.engine.base import EngineConfig
    from stream.engine.streaming import StreamingEngine

    engine = StreamingEngine(model_dir, EngineConfig(kind="streaming", device="cpu"))
    rgb, flow = dataset.window(0, 0, min(CHECK_FRAMES, dataset.num_frames(0)))
    stream = engine.open_stream(1)
    preds = [stream.push(rgb[None, :, n], flow[None, :, n]) for n in range(rgb.shape[1])]
    got = np.concatenate([p.fused for p in preds if p is not None] + [p.fused for p in stream.flush()])
    with torch.no_grad():
        expected = segment_outputs(model, torch.from_numpy(rgb)[None], torch.from_numpy(flow)[None])[0][0].numpy()
    engine.close()
    return float(np.abs(got - expected).max())


def _flow_options(card: ModelCard) -> tuple[str, float]:
    """``dataset_from_args``' flow preset and texture sigma that give the card's TV-L1 settings (the cache keys on them)."""
    found = flow_options_of(card.flow)
    if found is not None:
        return found
    raise UserError("the card's TV-L1 settings are neither FlowConfig.fast() nor the default; export-train's data loading "
                    "offers only those, so the fine-tune cannot compute the flow the card was trained with")


@cli_main("streaming-finetune")
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m export.streaming_finetune", description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True, help="the clip-trained model folder to start from")
    p.add_argument("--videos", type=Path, nargs="+", required=True, help="labelled videos (labels and arenas files beside them)")
    p.add_argument("--out", type=Path, required=True, help="the model folder to write")
    p.add_argument("--name", default=None, help="card name (default: <model name>-streaming)")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    p.add_argument("--window-frames", type=int, default=DEFAULT_WINDOW_FRAMES)
    p.add_argument("--lr", type=float, default=DEFAULT_LR)
    p.add_argument("--lr-floor", type=float, default=1e-5)
    p.add_argument("--train-from", default=DEFAULT_TRAIN_FROM, help="first trained layer; the earlier ones stay frozen")
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--cached-stem", action="store_true",
                   help="compute the layers before --train-from once per video (no augmentation) and train on their output")
    p.add_argument("--max-minutes", type=float, default=None, help="stop after this long and write the model")
    p.add_argument("--distill", type=Path, default=None, metavar="CLIP_MODEL_DIR",
                   help="train towards this clip model's per-stream probabilities (its clip around each frame)")
    p.add_argument("--distill-weight", type=float, default=1.0,
                   help="W in (1 - W) * CE(label) + W * KL(clip model); 1 = the clip model only")
    p.add_argument("--distill-every", type=int, default=1,
                   help="the clip model's targets on every N-th frame only (its cost / N)")
    p.add_argument("--cache-dir", type=Path, default=Path("runs/cache"))
    p.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    config = FinetuneConfig(steps=args.steps, window_frames=args.window_frames, lr=args.lr, lr_floor=args.lr_floor,
                            train_from=args.train_from, augment=not args.no_augment, cached_stem=args.cached_stem, seed=args.seed, max_minutes=args.max_minutes,
                            distill_weight=args.distill_weight, distill_every=args.distill_every)
    model, card = load_model(args.model)
    if card.kind != "i3d":
        raise UserError(f"{args.model}: a {card.kind} model has no network to fine-tune")
    teacher = load_card(args.distill) if args.distill is not None else None  # a missing or broken folder: one line, before any work
    if teacher is not None:
        verify_weights(args.distill, teacher)
        if teacher.kind != "i3d" or teacher.trained_for == TRAINED_FOR_STREAMING:
            raise UserError(f"--distill {args.distill}: not a clip-trained I3D card (kind {teacher.kind!r}, trained_for "
                            f"{teacher.trained_for!r}); give the clip model to agree with, e.g. the one --model started from")
    data_args = argparse.Namespace(
        videos=args.videos, labels=None, arenas=None, jhuang=None, size_px=card.input_size_px, fps=card.fps,
        frame_step=1, cache_dir=args.cache_dir, device="cpu", crop=card.crop,
    )
    data_args.flow_preset, data_args.flow_texture_sigma = _flow_options(card)
    dataset, spec = dataset_from_args(data_args, card.classes)
    result = finetune(model, dataset, config, args.distill)
    base = {k: getattr(card, k) for k in ("name", "weights_sha256", "training", "metrics")}
    card = dataclasses.replace(
        card,
        name=args.name or f"{card.name}-streaming",
        init=f"fine-tuned for the streaming engine from {base['name']} (weights sha256 {base['weights_sha256'][:12]})"
             + (f", distilled from the clip model {teacher.name} (weights sha256 {teacher.weights_sha256[:12]})" if teacher else ""),
        trained_for=TRAINED_FOR_STREAMING,
        training={
            "step": "streaming fine-tune (export.streaming_finetune): the causal stream's function, stream/causal_i3d.py",
            "data": "SYNTHETIC simulator videos (export-synth), not real mice" if spec.synthetic else "annotated videos",
            "synthetic": spec.synthetic,
            "videos": [Path(v).name for v in spec.videos],
            "streams": "joint: loss = CE(rgb logits) + CE(flow logits) per frame, class-weighted; batch norm frozen"
                       + ("; distilled: (1 - W) * that + W * (KL(clip rgb probs || rgb) + KL(clip flow probs || flow))" if teacher else ""),
            "distill": None if teacher is None else {
                "clip_model": teacher.name, "clip_model_dir": str(args.distill), "clip_weights_sha256": teacher.weights_sha256,
                "weight": config.distill_weight, "every_frames": config.distill_every, "target_frames": result.distilled_frames},
            "config": dataclasses.asdict(config),
            "steps_run": result.steps_run,
            "train_time_s": round(result.wall_s, 1),
            "threads": args.threads,
            "base_model": base,
        },
        metrics={"train_loss_first": result.loss_first, "train_loss_last": result.loss_last,
                 "train_fused_acc_last": result.fused_acc_last,
                 "note": "training windows only; held-out figures: README, 'Streaming engine'"},
        weights_sha256="", created_utc="",
    )
    stored = streaming_model(model)
    save_model(stored, card, args.out)
    diff = check_against_engine(model, args.out, dataset)
    if diff > CHECK_ATOL:
        raise UserError(f"{args.out}: the streaming engine differs from the trained parallel form by {diff:.2g} "
                        f"(> {CHECK_ATOL}); the model folder is not usable for streaming")
    card.training["check_max_prob_diff"] = diff
    save_model(stored, card, args.out)  # the same weights again, the card with the check
    print(f"{args.out}: {result.steps_run} steps in {result.wall_s:.0f} s, loss {result.loss_first:.3f} -> {result.loss_last:.3f}, "
          f"streaming engine vs parallel form max |dp| {diff:.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
