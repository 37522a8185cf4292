"""The weight average of models fine-tuned from one start (CLI ``export-soup``).

Why: on video from another renderer, models of one recipe that differ only in their seed land up
to 0.3 apart in accuracy, and neither the held-out families nor the validation split say which
seed will transfer (``trained_models/fst-side-112-texture/REGENERATE.md``). Averaging the weights
of such models -- a "model soup" (Wortsman et al. 2022, "Model soups: averaging weights of
multiple fine-tuned models improves accuracy without increasing inference time") -- gave a model
near the best seed on every test at once, at the cost of one model.

An average of weights only means something when the members lie in one basin of the loss: they
must be fine-tuned from the same pretrained weights (the same card ``init``), with the same
classes, input and flow. Models trained from random starts are refused, since two random starts
share no basin, and the members' validation accuracy is printed beside the soup's so that an
average that fell between basins shows.

BatchNorm running statistics do not average: the mean of each member's statistics is not the
statistics of the mean weights. They are estimated again on training clips (``--bn-recalibration-clips``),
as ``export-train`` does at the end of training. The flow weight is chosen on the validation split
of the training videos; with ``--test-videos`` the soup is scored on held-out videos exactly as
``export-evaluate`` scores a trained model, and the report and card carry those figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Subset

from export import evaluate as ev
from export import train as tr
from export.train_config import apply_threads
from export.train_data import card_data_args
from stream.errors import UserError, cli_main
from stream.model import FusedI3D
from stream.modelfile import ModelCard, load_model, save_model
from stream.version import add_version_argument

log = logging.getLogger(__name__)

__all__ = ["SOUP_METHOD", "average_weights", "check_members", "collapse_warning", "main"]

SOUP_METHOD = "uniform weight average (model soup, Wortsman et al. 2022)"
# The soup's validation accuracy this far below its best member's means the average fell between
# basins: the members were probably not fine-tuned from one start, or trained too far apart.
COLLAPSE_MARGIN = 0.10
# Card fields every member must share: what the runtime does with the weights (input, flow, classes)
# and where the weights came from (a common start is what makes an average meaningful).
SHARED_FIELDS = ("kind", "view", "classes", "immobile_classes", "input_size_px", "fps", "flow", "clip_frames", "crop", "trained_for", "init")


def check_members(cards: Sequence[ModelCard], states: Sequence[dict[str, torch.Tensor]], names: Sequence[str]) -> None:
    """Refuse, in one line, members whose average would not be a model: see the module docstring."""
    if len(cards) < 2:
        raise UserError(f"--models: a weight average needs at least 2 models, got {len(cards)}")
    seen: dict[str, str] = {}
    for name, card in zip(names, cards):
        if card.weights_sha256 in seen:
            raise UserError(f"--models: {name} has the same weights as {seen[card.weights_sha256]} (sha256 {card.weights_sha256[:12]}); give each model once")
        seen[card.weights_sha256] = name
    first = cards[0]
    if first.kind != "i3d":
        raise UserError(f"--models: {names[0]} is a {first.kind!r} model; only I3D models (kind 'i3d') have weights to average")
    if first.init.strip().lower() == "random":
        raise UserError(f"--models: {names[0]} was trained from a random start (card init 'random'); averaging needs models fine-tuned "
                        "from one pretrained start (export-train --init kinetics or a checkpoint), since independent random starts share no basin")  # fmt: skip
    for name, card in zip(names[1:], cards[1:]):
        differ = [f for f in SHARED_FIELDS if getattr(card, f) != getattr(first, f)]
        if differ:
            raise UserError(f"--models: {name} differs from {names[0]} in {', '.join(differ)}; members must share the start, classes, input and flow")
    keys = {k: tuple(v.shape) for k, v in states[0].items()}
    for name, state in zip(names[1:], states[1:]):
        other = {k: tuple(v.shape) for k, v in state.items()}
        if other != keys:
            diff = sorted(set(other.items()) ^ set(keys.items()))[:3]
            raise UserError(f"--models: {name} has other tensors than {names[0]} (first differences: {diff})")


def average_weights(states: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The mean of every floating-point tensor (in float64, returned as float32); integer buffers
    (BatchNorm's batch counters) are the first member's. BatchNorm statistics come out averaged
    too; they are meant to be estimated again afterwards."""
    out = {}
    for key, first in states[0].items():
        if first.is_floating_point():
            out[key] = torch.stack([s[key].double() for s in states]).mean(0).float()
        else:
            out[key] = first.clone()
    return out


def collapse_warning(member_accuracy: Sequence[float], soup_accuracy: float, margin: float = COLLAPSE_MARGIN) -> str | None:
    """A line to show when the soup scores far below its best member on the validation split."""
    best = max(member_accuracy)
    if soup_accuracy < best - margin:
        return (f"the weight average scores {soup_accuracy:.3f} on the validation split, against {best:.3f} for its best member: the "
                "members probably do not share one basin (other start, or trained too far apart); use the best member instead")  # fmt: skip
    return None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="export-soup",
        description="Average the weights of models fine-tuned from one start (a model soup), estimate BatchNorm statistics again on "
        "training clips, choose the flow weight on their validation split, and score it on held-out videos. Input size, fps, flow and "
        "crop come from the members' cards.",
        epilog="Example: export-soup --models runs/s0/model runs/s1/model runs/s2/model --videos train/*.mp4 --test-videos heldout/*.mp4 "
        "--frame-step 30 --out runs/soup --export-model models/my-side-soup --half",
    )
    add_version_argument(p)
    p.add_argument("--models", nargs="+", type=Path, required=True, metavar="DIR", help="model folders (card.json + weights) fine-tuned from one start")
    p.add_argument("--videos", nargs="+", type=Path, required=True, metavar="VIDEO",
                   help="annotated training videos: BatchNorm statistics on their training split, the flow weight on their validation split")  # fmt: skip
    p.add_argument("--labels", nargs="+", type=Path, metavar="FILE", help="label file per video, same order (default: next to the video)")
    p.add_argument("--arenas", nargs="+", type=Path, metavar="JSON", help="arenas file per video, same order (default: VIDEO stem + .arenas.json if present)")
    p.add_argument("--test-videos", nargs="+", type=Path, metavar="VIDEO", help="held-out annotated videos to score the soup on (report in --out, figures in the card)")
    p.add_argument("--test-labels", nargs="+", type=Path, metavar="FILE", help="label file per test video, same order")
    p.add_argument("--test-arenas", nargs="+", type=Path, metavar="JSON", help="arenas file per test video, same order")
    p.add_argument("--out", type=Path, required=True, help="folder for soup.json and, with --test-videos, the held-out report")
    p.add_argument("--export-model", type=Path, required=True, metavar="DIR", help="where the averaged model goes")
    p.add_argument("--name", help="model name for the card (default: --export-model folder name)")
    p.add_argument("--half", action="store_true", help="store float16 weights (half the size)")
    p.add_argument("--frame-step", type=int, default=1, help="centre a clip on every Nth labelled frame (default: 1)")
    p.add_argument("--cache-dir", type=Path, default=Path("runs/cache"), help="decoded crops and TV-L1 flow cache (default: runs/cache)")
    p.add_argument("--val-folds", type=int, default=5, help="the validation split is 1 of this many contiguous folds, as in training (default: 5)")
    p.add_argument("--bn-recalibration-clips", type=int, default=32, help="training clips for the new BatchNorm statistics; 0 keeps the averaged ones (default: 32)")
    p.add_argument("--batch-size", type=int, default=8, help="(default: 8)")
    p.add_argument("--seed", type=int, default=0, help="which training clips the BatchNorm statistics are drawn from (default: 0)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (default: cpu)")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress")
    return p


def _validation(model: FusedI3D, ds, val_idx: np.ndarray, args: argparse.Namespace) -> ev.HeldOut:
    return ev.validation_predictions(model, ds, val_idx, batch_size=args.batch_size, device=args.device)


def _accuracy(held: ev.HeldOut, flow_weight: float) -> float:
    return float(np.mean(held.fused(flow_weight).argmax(1) == held.labels))


@cli_main("export-soup")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    apply_threads(args.threads)
    if args.bn_recalibration_clips < 0 or args.batch_size < 1:
        raise UserError("--bn-recalibration-clips must be >= 0 and --batch-size >= 1")
    if args.val_folds < 2:
        raise UserError(f"--val-folds {args.val_folds}: the flow weight is chosen on the validation split; use at least 2")
    t0 = time.monotonic()
    names = [str(m) for m in args.models]
    loaded = [load_model(m) for m in args.models]  # each verifies its weights' sha256
    models, cards = [m for m, _ in loaded], [c for _, c in loaded]
    states = [m.state_dict() for m in models]
    check_members(cards, states, names)
    first = cards[0]
    name = args.name or args.export_model.name

    data = card_data_args(args, first, what="--models: the members'")
    classes, immobile = tr.classes_from_args(data)
    ds, spec = tr.dataset_from_args(data, classes)
    test_ds = test_spec = None
    if args.test_videos:  # built before any averaging: a bad test file fails in seconds
        test_ds, test_spec = tr.dataset_from_args(ev.test_namespace(data), classes)
    train_idx, val_idx = tr.split_validation(ds, np.arange(len(ds)), args.val_folds)
    if not val_idx.size:
        raise UserError("the training videos give no validation clips; give more (or longer) --videos or a smaller --frame-step")
    k = len(classes)
    member_acc = [_accuracy(_validation(m, ds, val_idx, args), c.flow_weight) for m, c in zip(models, cards)]

    soup = models[0]
    soup.load_state_dict(average_weights(states))
    del models[1:], states
    if args.bn_recalibration_clips:
        config = tr.TrainConfig(seed=args.seed, batch_size=args.batch_size, bn_recalibration_clips=args.bn_recalibration_clips, num_workers=0)
        tr.recalibrate_batchnorm(soup, Subset(ds, train_idx), config, tr.resolve_device(args.device), progress=args.verbose)
    else:
        log.warning("--bn-recalibration-clips 0: the BatchNorm statistics are the members' average, not those of the averaged weights")

    val = _validation(soup, ds, val_idx, args)
    rows = ev.sweep_flow_weight(val, k)
    weight = ev.best_flow_weight(rows)
    soup_acc = _accuracy(val, weight)
    warning = collapse_warning(member_acc, soup_acc)
    for n, c, a in zip(names, cards, member_acc):
        print(f"member {n}: validation accuracy {a:.3f} (its flow weight {c.flow_weight:.1f})")
    print(f"weight average of {len(cards)}: validation accuracy {soup_acc:.3f} (flow weight {weight:.1f}, chosen on the validation split)")
    if warning:
        print(f"WARNING: {warning}")

    soup_facts = {
        "method": SOUP_METHOD,
        "members": [{"model": c.name, "folder": n, "weights_sha256": c.weights_sha256, "flow_weight": c.flow_weight, "validation_accuracy": round(a, 4)}
                    for n, c, a in zip(names, cards, member_acc)],  # fmt: skip
        "batchnorm": f"estimated again on {args.bn_recalibration_clips} training clips (seed {args.seed})" if args.bn_recalibration_clips else "the members' average",
        "validation_accuracy": round(soup_acc, 4),
        "validation_clips": int(val_idx.size),
        "warning": warning or "",
    }
    summary = None
    if test_ds is not None:
        summary, held = ev.score_held_out(soup, data, ds, train_idx, val_idx, test_ds, test_spec, classes, immobile,
                                          batch_size=args.batch_size, device=args.device, validation=val)  # fmt: skip
        summary.update(name=name, data=("SYNTHETIC simulator videos: " if spec.synthetic and test_spec.synthetic else "")
                       + ", ".join(Path(v).name for v in spec.videos + test_spec.videos),
                       note="Trained and evaluated on synthetic simulator video, not real mice." if spec.synthetic and test_spec.synthetic else "",
                       facts={"model": f"{SOUP_METHOD} of {', '.join(c.name for c in cards)}", "init": first.init, "BatchNorm": soup_facts["batchnorm"]})  # fmt: skip
        ev.write_results(args.out, summary, held, title=f"{name}: fused accuracy on held-out videos vs flow weight (spread over {summary['folds']} groups)")
        ev.print_summary(summary)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "soup.json").write_text(json.dumps({**soup_facts, "flow_weight": weight, "accuracy_by_flow_weight": rows}, indent=1, default=float) + "\n")

    soup.flow_weight = weight
    metrics = ev.card_metrics(summary) if summary is not None else {"evaluation": "validation split of the training videos (no held-out test)", "fused_accuracy_mean": soup_acc}
    card = dataclasses.replace(
        first, name=name, flow_weight=weight, init=f"{SOUP_METHOD} of {len(cards)} models fine-tuned from: {first.init}",
        training={"step": "weight average", "data": first.training.get("data", ""), "synthetic": spec.synthetic, "videos": [Path(v).name for v in spec.videos],
                  "frame_step": args.frame_step, "soup": soup_facts, "members_training": [c.training for c in cards]},
        metrics=metrics, input_stats=tr.training_input_stats(ds, train_idx), weights_sha256="", created_utc="",
        decisions=first.decisions if all(c.decisions == first.decisions for c in cards) else {},
    )  # fmt: skip
    save_model(soup.cpu().eval(), card, args.export_model, half=args.half)
    print(f"export-soup: wrote model {args.export_model} (flow weight {weight:.1f}) and {args.out / 'soup.json'} in {time.monotonic() - t0:.0f} s")
    return 0
