"""Train both streams of a two-stream I3D on annotated clips (CLI ``export-train``).

Read it top to bottom: one epoch -> the training loop (train, validate, log, checkpoint, early
stop) -> the command line. The pieces around the loop have a module each: ``export.train_config``
(``TrainConfig``, the recipe, the options), ``export.train_model`` (initialisation, frozen blocks,
device), ``export.train_data`` (dataset, split, loaders), ``export.train_checkpoint`` (checkpoints
and logs), ``export.train_predict`` (per-stream predictions), ``export.train_card`` (the card).
Every name they hold is re-exported here, so ``from export.train import X`` keeps working.

The recipe is the paper's two-step transfer learning. Step 1 fine-tunes on a source dataset (the
Jhuang clipped database), step 2 on the lab's own annotated videos; each step starts from the
previous weights and replaces the classifier, because the class lists differ. Defaults follow the
paper: momentum SGD 0.9, learning rate 1e-3 decaying (cosine, per batch) to a floor, dropout keep
probability 0.36, 16-frame clips. (``--optimizer adam`` exists for training from random
initialisation on a small budget, where plain SGD needs far more steps than a CPU can afford.)

The two streams are trained JOINTLY, in one loop over one data loader: every batch goes through the
RGB I3D and the flow I3D and the loss is the sum of each stream's own cross-entropy. The two
networks share no parameter, so each stream's gradient comes from its own loss only -- exactly what
training them separately gives -- while every clip (and its cached flow) is read from disk once.
The fusion weight is not learned here; ``export-evaluate`` picks it by a sweep on held-out folds.

Interruptions are expected (a CPU run takes hours): after every epoch the run directory gets an
atomically written ``checkpoint.safetensors`` with the model, optimizer, scheduler, AMP scaler,
epoch, RNG states (of every rank), history and the configuration; ``--resume`` continues from it
and ends bit-identical to an uninterrupted run on CPU. Checkpoints hold tensors and JSON only
(``export.checkpoint``): loading one never unpickles, so a handed checkpoint cannot run code.

Data-parallel training (``torchrun --nproc_per_node N export-train ...``, see ``export.distributed``):
``--batch-size`` stays the GLOBAL batch. Every rank draws the same epoch (the draw a single process
makes), takes its share of each batch, and BatchNorm statistics are computed over the global
batch, so N processes train what one process trains, up to floating-point summation order. Rank 0
writes checkpoints, logs and models; losses and accuracies are summed over ranks; validation and
``predict_streams`` are sharded and gathered.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import logging
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from export import checkpoint as ckpt_io
from export import distributed
from export.train_card import INPUT_STATS_CLIPS, make_card, training_input_stats
from export.train_checkpoint import (BEST_NAME, CHECKPOINT_FORMAT, CHECKPOINT_NAME, LOG_CSV_NAME, LOG_JSONL_NAME,
                                     TrainResult, _check_model_state, _load_checkpoint, _load_state_file, _prefixed,
                                     _save_checkpoint, _unprefixed, _write_logs, load_checkpoint)
from export.train_config import (DEFAULT_FPS, FINETUNE_RECIPE, TrainConfig, _data_defaults_from_card, add_data_arguments,
                                 add_training_arguments, config_from_args, parse_with_recipe)
from export.train_data import (ARENAS_SUFFIX, LABEL_SUFFIXES, RANK_SEED_STRIDE, SAMPLER_SEED_STRIDE, VAL_FOLD_INDEX,
                               DataSpec, _class_counts, _epoch_batches, _eval_loader, _made_by_synth, _pair_up,
                               _rank_loader, _seed_worker, _sibling, _split_names, _train_loader, _video_fps,
                               classes_from_args, dataset_from_args, dataset_labels, split_validation)
from export.train_model import (FREEZABLE_BLOCKS, INIT_HELP, _require_file, _set_dropout, build_model,
                                check_init_source, freeze_blocks, resolve_device, seed_everything)
from export.train_predict import StreamPredictions, predict_streams
from stream.adabn import reestimate_batchnorm
from stream.errors import UserError, cli_main
from stream.modelfile import nonfinite_problem
from stream.version import add_version_argument

__all__ = [
    "TrainConfig",
    "EpochStats",
    "TrainResult",
    "StreamPredictions",
    "INIT_HELP",
    "build_model",
    "check_init_source",
    "freeze_blocks",
    "FREEZABLE_BLOCKS",
    "FINETUNE_RECIPE",
    "parse_with_recipe",
    "seed_everything",
    "resolve_device",
    "dataset_labels",
    "train",
    "predict_streams",
    "training_input_stats",
    "main",
]
# re-exported for the tools and tests that import them from here (they live in the modules above)
_REEXPORTED = (INPUT_STATS_CLIPS, ARENAS_SUFFIX, BEST_NAME, CHECKPOINT_FORMAT, CHECKPOINT_NAME, DEFAULT_FPS, LABEL_SUFFIXES, LOG_JSONL_NAME,
               SAMPLER_SEED_STRIDE, VAL_FOLD_INDEX, DataSpec, _class_counts, _data_defaults_from_card, _eval_loader,
               _made_by_synth, _pair_up, _require_file, _seed_worker, _sibling, _split_names, _video_fps, add_data_arguments,
               add_training_arguments, classes_from_args, config_from_args, load_checkpoint, split_validation)

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# one epoch


@dataclass
class EpochStats:
    """Mean loss (sum of both streams' cross-entropy) and accuracy of each stream and of the fusion."""

    loss: float = 0.0
    rgb_loss: float = 0.0
    flow_loss: float = 0.0
    rgb_acc: float = 0.0
    flow_acc: float = 0.0
    fused_acc: float = 0.0
    clips: int = 0


class _Meter:
    """Running sums that become an ``EpochStats``."""

    def __init__(self) -> None:
        self.sums = dict(rgb_loss=0.0, flow_loss=0.0, rgb_acc=0.0, flow_acc=0.0, fused_acc=0.0)
        self.clips = 0

    def add(self, rgb_loss: torch.Tensor, flow_loss: torch.Tensor, fused: torch.Tensor, rgb_logits: torch.Tensor, flow_logits: torch.Tensor, labels: torch.Tensor, loss_clips: float | None = None) -> None:
        """``loss_clips``: how many clips the batch's mean loss counts for (default: the batch's clips;
        in a job, this rank's part of the global batch, so that the sum over ranks is the global mean x clips)."""
        n = int(labels.numel())
        w = n if loss_clips is None else loss_clips
        self.sums["rgb_loss"] += float(rgb_loss) * w
        self.sums["flow_loss"] += float(flow_loss) * w
        self.sums["rgb_acc"] += float((rgb_logits.argmax(1) == labels).sum())
        self.sums["flow_acc"] += float((flow_logits.argmax(1) == labels).sum())
        self.sums["fused_acc"] += float((fused.argmax(1) == labels).sum())
        self.clips += n

    def reduce(self) -> "_Meter":
        """Sums over all ranks of a job (this meter itself outside a job)."""
        if distributed.current().active:
            keys = list(self.sums)
            total = distributed.all_reduce_sum(torch.tensor([*(self.sums[k] for k in keys), float(self.clips)], dtype=torch.float64))
            self.sums = dict(zip(keys, total[:-1].tolist()))
            self.clips = int(round(float(total[-1])))
        return self

    def stats(self) -> EpochStats:
        n = max(self.clips, 1)
        mean = {k: v / n for k, v in self.sums.items()}
        return EpochStats(loss=mean["rgb_loss"] + mean["flow_loss"], clips=self.clips, **mean)


def _forward_losses(model: torch.nn.Module, rgb: torch.Tensor, flow: torch.Tensor, labels: torch.Tensor, class_weights: torch.Tensor | None):
    fused, rgb_logits, flow_logits = model(rgb, flow)  # (B, K) each
    rgb_loss = F.cross_entropy(rgb_logits.float(), labels, weight=class_weights)
    flow_loss = F.cross_entropy(flow_logits.float(), labels, weight=class_weights)
    return fused, rgb_logits, flow_logits, rgb_loss, flow_loss


def _train_one_epoch(model, loader, optimizer, scheduler, scaler, class_weights, device, amp: bool, progress: bool, desc: str, loss_factors: Sequence[float] | None = None, global_sizes: Sequence[int] = (), frozen: Sequence[torch.nn.Module] = ()) -> EpochStats:
    """One pass over ``loader``. In a job, ``loss_factors[b]`` scales this rank's loss of batch b
    (see ``_rank_loader``) and ``global_sizes[b]`` is the global batch's clip count."""
    world_size = distributed.current().world_size
    model.train()
    for block in frozen:  # frozen blocks keep their BatchNorm running statistics (see freeze_blocks)
        block.eval()
    meter = _Meter()
    for b, (rgb, flow, labels) in enumerate(tqdm(loader, desc=desc, leave=False, disable=not progress, unit="batch")):
        rgb, flow, labels = rgb.to(device, non_blocking=True), flow.to(device, non_blocking=True), labels.to(device).long()
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp):
            fused, rgb_logits, flow_logits, rgb_loss, flow_loss = _forward_losses(model, rgb, flow, labels, class_weights)
        optimizer.zero_grad(set_to_none=True)
        loss = rgb_loss + flow_loss
        if world_size == 1 and not bool(torch.isfinite(loss.detach())):
            # before the step: one NaN gradient makes every weight NaN. In a job the ranks stop
            # together at the epoch's end, where the summed losses show it on every rank.
            raise UserError(_diverged(f"{desc}, batch {b + 1}: the training loss is {float(loss.detach()):g}"))
        factor = 1.0 if loss_factors is None else loss_factors[b]
        if factor != 1.0:
            loss = loss * factor
        scaler.scale(loss).backward()  # each stream gets the gradient of its own loss only
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        meter.add(rgb_loss.detach(), flow_loss.detach(), fused.detach(), rgb_logits.detach(), flow_logits.detach(), labels, None if loss_factors is None else factor * global_sizes[b] / world_size)
    return meter.reduce().stats()


@torch.no_grad()
def _validate(model, loader, class_weights, device, amp: bool, progress: bool) -> EpochStats:
    model.eval()
    meter = _Meter()
    for rgb, flow, labels in tqdm(loader, desc="validate", leave=False, disable=not progress, unit="batch"):
        rgb, flow, labels = rgb.to(device), flow.to(device), labels.to(device).long()
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp):
            fused, rgb_logits, flow_logits, rgb_loss, flow_loss = _forward_losses(model, rgb, flow, labels, class_weights)
        meter.add(rgb_loss, flow_loss, fused, rgb_logits, flow_logits, labels)
    return meter.reduce().stats()

# --------------------------------------------------------------------------------------------
# the training loop


def train(
    model: torch.nn.Module,
    train_set: Dataset,
    val_set: Dataset | None,
    config: TrainConfig,
    run_dir: Path | str,
    *,
    num_classes: int,
    resume: bool = False,
    progress: bool | None = None,
) -> TrainResult:
    """Train ``model`` (a ``FusedI3D``) in place; at the end it holds the best validation epoch's weights.

    Without a validation set every epoch runs and the last weights are kept. ``run_dir`` receives
    the checkpoint, the best weights and the per-epoch log (from rank 0 only, in a torchrun job;
    every rank returns the same result and the same weights).
    """
    here = distributed.current()
    run_dir = Path(run_dir)
    if here.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    progress = (sys.stderr.isatty() if progress is None else progress) and here.is_main
    if len(train_set) == 0:
        raise UserError("training set is empty: check the label files and the class names")
    device = resolve_device(config.device)
    amp = config.amp and device.type == "cuda"
    seed_everything(config.seed)
    model.to(device)
    _set_dropout(model, config.dropout_keep_prob)
    frozen = freeze_blocks(model, config.freeze_until, config.rgb_freeze_until)
    batch_norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    model_bn_momentum = [m.momentum for m in batch_norms]
    for m in batch_norms:
        m.momentum = config.bn_momentum

    labels = dataset_labels(train_set)
    class_weights, item_weights = _class_weights(labels, num_classes, config, device, warn=here.is_main)
    optimizer, scheduler, scaler = _optimizer(model, train_set, labels, num_classes, config, device, amp)
    val_loader = _val_loader(val_set, config)
    ckpt_path = run_dir / CHECKPOINT_NAME
    result, start_epoch, since_best = _resume_or_start(ckpt_path, model, optimizer, scheduler, scaler, config, resume)
    net = _parallel(model, device) if here.active else model

    epochs = tqdm(range(start_epoch, config.epochs), desc="epochs", disable=not progress, unit="epoch", initial=start_epoch, total=config.epochs)
    with distributed.synced_batchnorm(model):
        for epoch in epochs:
            if result.stopped_early:
                break
            t0 = time.monotonic()
            loader, factors, sizes = _epoch_loader(train_set, labels, item_weights, num_classes, config, epoch)
            train_stats = _train_one_epoch(net, loader, optimizer, scheduler, scaler, class_weights, device, amp, progress, f"epoch {epoch + 1}", factors, sizes, frozen)
            val_stats = _validate(model, val_loader, class_weights, device, amp, progress) if val_loader is not None else None  # "is not None": a rank may hold no validation clip, yet must join the sums

            _stop_if_diverged(epoch + 1, train_stats, val_stats, model)  # before anything of this epoch is saved
            row = _history_row(epoch + 1, optimizer, train_stats, val_stats, time.monotonic() - t0)
            result.history.append(row)
            result.epochs_run = epoch + 1
            since_best = _keep_if_best(model, run_dir, result, val_stats, epoch + 1, since_best, config)

            rngs = distributed.all_gather_plain(ckpt_io.rng_state())  # every rank's generators, for an exact resume
            if here.is_main:
                _write_logs(run_dir, result.history)
                _save_checkpoint(ckpt_path, model, optimizer, scheduler, scaler, config, num_classes, epoch + 1, since_best, result, rngs)
            epochs.set_postfix(loss=f"{train_stats.loss:.3f}", val=("-" if val_stats is None else f"{val_stats.loss:.3f}"), acc=f"{train_stats.fused_acc:.2f}")
            log.info("epoch %d: %s", epoch + 1, {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()})

    _restore_best(model, run_dir, result)
    if config.bn_recalibration_clips:
        if here.is_main:
            recalibrate_batchnorm(model, train_set, config, device, progress)
        buffers = [b for m in batch_norms for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None]
        distributed.broadcast_tensors(buffers)  # rank 0 recalibrated alone: exactly what a single process computes
    for m, momentum in zip(batch_norms, model_bn_momentum):
        m.momentum = momentum
    for block in frozen:
        block.requires_grad_(True)
    return result


def _class_weights(labels: np.ndarray, num_classes: int, config: TrainConfig, device: torch.device, *,
                   warn: bool) -> tuple[torch.Tensor | None, np.ndarray]:
    """(loss weight per class or None, sampling weight per clip): ``--balance loss`` weighs rare classes up."""
    counts = _class_counts(labels, num_classes)
    missing = [k for k in range(num_classes) if counts[k] == 0]
    if missing and warn:
        log.warning("classes %s have no training clip", missing)
    class_weights = None
    item_weights = np.ones(len(labels))
    if config.balance == "loss":
        w = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / num_classes, 0.0)
        class_weights = torch.as_tensor(w, dtype=torch.float32, device=device)
        item_weights = w[labels]
    return class_weights, item_weights


def _optimizer(model: torch.nn.Module, train_set: Dataset, labels: np.ndarray, num_classes: int, config: TrainConfig,
               device: torch.device, amp: bool) -> tuple[torch.optim.Optimizer, Any, torch.amp.GradScaler]:
    """Optimizer of the trainable weights, a per-batch cosine schedule over every epoch, the AMP scaler."""
    if distributed.current().active:
        steps_per_epoch = len(_epoch_batches(train_set, labels, num_classes, config, 0))
    else:
        steps_per_epoch = len(_train_loader(train_set, labels, num_classes, config, 0))
    trainable = _param_groups(model, config)
    if config.optimizer == "sgd":
        optimizer = torch.optim.SGD(trainable, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    else:
        optimizer = torch.optim.Adam(trainable, lr=config.lr, betas=(config.momentum, 0.999), weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(config.epochs * steps_per_epoch, 1), eta_min=config.lr_floor)
    return optimizer, scheduler, torch.amp.GradScaler(device.type, enabled=amp)


def _param_groups(model: torch.nn.Module, config: TrainConfig) -> list[dict[str, Any]]:
    """The trainable weights; with ``rgb_lr`` the RGB stream is a group of its own at that rate."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    if config.rgb_lr is None:
        return [{"params": trainable}]
    rgb = {id(p) for p in model.rgb.parameters()}
    return [g for g in ({"params": [p for p in trainable if id(p) not in rgb]},
                        {"params": [p for p in trainable if id(p) in rgb], "lr": config.rgb_lr}) if g["params"]]  # fmt: skip


def _val_loader(val_set: Dataset | None, config: TrainConfig) -> DataLoader | None:
    """The validation clips (this rank's share in a torchrun job); None without a validation set."""
    if val_set is None or not len(val_set):
        return None
    shard = Subset(val_set, distributed.shard_batches(len(val_set), config.batch_size).tolist()) \
        if distributed.current().active else val_set
    return _eval_loader(shard, config.batch_size, config.num_workers)


def _resume_or_start(ckpt_path: Path, model: torch.nn.Module, optimizer, scheduler, scaler, config: TrainConfig,
                     resume: bool) -> tuple[TrainResult, int, int]:
    """(result so far, epochs done, epochs since the best): from the checkpoint with ``resume``, else fresh."""
    here = distributed.current()
    run_dir = ckpt_path.parent
    if resume:
        ckpt_io.refuse_legacy_checkpoints(run_dir)
    if not (resume and ckpt_path.is_file()):
        if resume:
            log.info("no checkpoint in %s: starting from epoch 1", run_dir)
        if here.rank > 0:  # rank 0 draws what a single process draws; the others draw their own dropout/augmentation
            seed_everything(config.seed + here.rank * RANK_SEED_STRIDE)
        return TrainResult(), 0, 0
    ckpt = _load_checkpoint(ckpt_path, config)
    _check_model_state(ckpt_path, ckpt["model"], model)
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    scaler.load_state_dict(ckpt["scaler"])
    start_epoch = ckpt["epoch"]
    rngs = ckpt["rng"]
    if len(rngs) == here.world_size:
        ckpt_io.set_rng_state(rngs[here.rank])
    else:  # another process count: the weights resume exactly, dropout/augmentation draws do not
        log.warning("%s was written by %d process(es), this run has %d: random draws restart from the seed", ckpt_path, len(rngs), here.world_size)
        seed_everything(config.seed + start_epoch + here.rank * RANK_SEED_STRIDE)
    log.info("resumed %s after epoch %d of %d", ckpt_path, start_epoch, config.epochs)
    return TrainResult(**ckpt["result"]), start_epoch, ckpt["since_best"]


def _parallel(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The model wrapped for data-parallel training (torchrun)."""
    from torch.nn.parallel import DistributedDataParallel

    # Wrapping sends rank 0's weights and buffers to every rank. After that, buffers need no
    # per-forward broadcast: BatchNorm statistics are global, so every rank updates them alike
    # (newer PyTorch names the switch forward_sync_buffers, older broadcast_buffers).
    no_buffer_sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters else {"broadcast_buffers": False}
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None, **no_buffer_sync)


def _epoch_loader(train_set: Dataset, labels: np.ndarray, item_weights: np.ndarray, num_classes: int, config: TrainConfig,
                  epoch: int) -> tuple[DataLoader, list[float] | None, list[int]]:
    """(this epoch's loader, per-batch loss factors, global batch sizes): a torchrun rank's share of the draw."""
    here = distributed.current()
    if not here.active:
        return _train_loader(train_set, labels, num_classes, config, epoch), None, []
    batches = _epoch_batches(train_set, labels, num_classes, config, epoch)
    loader, factors = _rank_loader(train_set, batches, item_weights, config, epoch, here)
    return loader, factors, [len(b) for b in batches]


def _history_row(epoch: int, optimizer: torch.optim.Optimizer, train_stats: EpochStats, val_stats: EpochStats | None,
                 seconds: float) -> dict[str, Any]:
    """One epoch's line of log.jsonl / log.csv."""
    row: dict[str, Any] = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"]}
    if len(optimizer.param_groups) > 1:  # --rgb-lr: the RGB stream's own rate
        row["rgb_lr"] = optimizer.param_groups[-1]["lr"]
    row.update({f"train_{k}": v for k, v in asdict(train_stats).items()})
    if val_stats is not None:
        row.update({f"val_{k}": v for k, v in asdict(val_stats).items()})
    row["time_s"] = round(seconds, 3)
    return row


def _keep_if_best(model: torch.nn.Module, run_dir: Path, result: TrainResult, val_stats: EpochStats | None, epoch: int,
                  since_best: int, config: TrainConfig) -> int:
    """Save the weights when validation improved (or there is none); mark an early stop; epochs since the best."""
    improved = val_stats is None or result.best_val_loss is None or val_stats.loss < result.best_val_loss
    if improved:
        result.best_epoch = epoch
        result.best_val_loss = None if val_stats is None else val_stats.loss
        since_best = 0
        if distributed.current().is_main:
            ckpt_io.save_checkpoint(run_dir / BEST_NAME, _prefixed("model", model.state_dict()), {"format": CHECKPOINT_FORMAT, "epoch": epoch})
    else:
        since_best += 1
    if val_stats is not None and config.patience_epochs and since_best >= config.patience_epochs:
        result.stopped_early = True
        log.info("early stop after epoch %d: no lower validation loss for %d epochs", epoch, since_best)
    return since_best


def _restore_best(model: torch.nn.Module, run_dir: Path, result: TrainResult) -> None:
    """Load the best epoch's weights when later epochs ran after it."""
    if result.best_epoch and result.best_epoch != result.epochs_run:
        distributed.barrier()  # rank 0 wrote best.safetensors before the later epochs; every rank reads it
        tensors, _ = _load_state_file(run_dir / BEST_NAME)
        best = _unprefixed("model", tensors)
        _check_model_state(run_dir / BEST_NAME, best, model)
        model.load_state_dict(best)


@torch.no_grad()
def recalibrate_batchnorm(model: torch.nn.Module, dataset: Dataset, config: TrainConfig, device: torch.device, progress: bool) -> float:
    """Replace BatchNorm running statistics by their average over training clips under the final weights.

    During training the running averages trail weights that keep changing; evaluation uses them,
    so a short run evaluates with statistics of weights it no longer has. The clips are a fixed,
    seeded draw (the one ``stream.adabn.pick_clips`` makes for ``stream-run --adapt``), averaged by
    ``stream.adabn.reestimate_batchnorm``, whose measure of how far the variances moved it returns.
    """
    if len(dataset) == 0:
        return 0.0
    generator = torch.Generator().manual_seed(config.seed)
    picks = torch.randperm(len(dataset), generator=generator)[: config.bn_recalibration_clips].tolist()
    loader = DataLoader(Subset(dataset, picks), batch_size=config.batch_size, shuffle=False, num_workers=config.num_workers)
    batches = ((rgb, flow) for rgb, flow, _ in tqdm(loader, desc="BatchNorm statistics", leave=False, disable=not progress, unit="batch"))
    return reestimate_batchnorm(model, batches, device)


def _diverged(what: str) -> str:
    return f"{what} (not finite): training stopped, no model written; lower --lr, or check the data and the --init weights"


def _stop_if_diverged(epoch: int, train_stats: EpochStats, val_stats: EpochStats | None, model: torch.nn.Module) -> None:
    """After each epoch (every rank alike: the losses are summed over ranks and the weights agree)."""
    for name, stats in (("training", train_stats), ("validation", val_stats)):
        if stats is not None and not math.isfinite(stats.loss):
            raise UserError(_diverged(f"epoch {epoch}: the mean {name} loss is {stats.loss:g}"))
    problem = nonfinite_problem(model.state_dict())
    if problem:
        raise UserError(_diverged(f"epoch {epoch}: {problem}"))


# --------------------------------------------------------------------------------------------
# the command


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="export-train",
        description="Train the RGB and flow I3D streams of a swim-stream model (step 1 on Jhuang clips, step 2 on annotated videos).",
        epilog="Example: export-train --videos demo/synth_side.mp4 --out models/my-side --init random --epochs 10",
    )
    add_version_argument(p)
    p.add_argument("--out", type=Path, help="model directory to write (model.safetensors + card.json + training log); required unless --cache-only")
    p.add_argument("--cache-only", action="store_true", help="decode the videos and cache their TV-L1 flow in --cache-dir (on every GPU with --device cuda), then stop")
    p.add_argument("--work-dir", type=Path, help="checkpoints for --resume (default: runs/train-<out name>)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --work-dir")
    p.add_argument("--name", help="model name in the card (default: --out folder name)")
    p.add_argument("--flow-weight", type=_flow_weight_arg, default=0.5, metavar="W|auto",
                   help="fusion weight stored in the card; auto: the best of 0, 0.1, ..., 1 after training on a validation split of whole "
                        "recordings (videos; arenas if there is one video; needs --val-folds and 2 of them; ties keep the weight nearest "
                        "--init model:DIR's, or 0.5); "
                        "export-evaluate sweeps it per fold "
                        "(default: 0.5; with --recipe finetune the model's)")
    p.add_argument("--half", action="store_true", help="store float16 weights (half the size)")
    p.add_argument("--recipe", choices=("none", "finetune"), default="none",
                   help="finetune: defaults for adapting a trained model (--init model:DIR) from a few labelled minutes: "
                        + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in FINETUNE_RECIPE.items())
                        + "; with --init model:DIR also that model's size, fps, TV-L1 preset and classes; options you give win (default: none)")
    p.add_argument("-v", "--verbose", action="store_true", help="log every epoch")
    add_data_arguments(p)
    add_training_arguments(p)
    return p


FLOW_WEIGHT_AUTO = "auto"


def _flow_weight_arg(text: str) -> float | str:
    if text.strip().lower() == FLOW_WEIGHT_AUTO:
        return FLOW_WEIGHT_AUTO
    try:
        weight = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number in [0, 1] or 'auto'") from None
    if not 0.0 <= weight <= 1.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text!r}: must be in [0, 1] (or 'auto')")
    return weight


def _prior_flow_weight(init: str) -> float:
    """The weight ``--flow-weight auto`` keeps on a tie: the started-from model's, else both streams equally."""
    from stream.modelfile import load_card

    kind, _, model_dir = str(init).partition(":")
    return float(load_card(Path(model_dir)).flow_weight) if kind == "model" else 0.5


@cli_main("export-train")
def main(argv: list[str] | None = None) -> int:
    from stream.modelfile import save_model

    from export.report import TRAINING_PLOT, plot_training_curves

    args = parse_with_recipe(build_parser(), argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.flow_weight != FLOW_WEIGHT_AUTO and not 0.0 <= args.flow_weight <= 1.0:
        raise UserError(f"--flow-weight {args.flow_weight}: must be in [0, 1]")
    if args.out is None and not args.cache_only:
        raise UserError("--out: required (the model directory to write), unless --cache-only")
    config = config_from_args(args)
    if not args.cache_only:
        check_init_source(args.init)
    classes, immobile = classes_from_args(args)
    t_cache = time.monotonic()
    ds, spec = dataset_from_args(args, classes)
    if args.cache_only:
        if distributed.current().is_main:
            print(f"export-train: cached {len(ds.sources)} source(s), {len(ds)} clips at {spec.size_px} px in {args.cache_dir} ({time.monotonic() - t_cache:.0f} s)")
        return 0
    choose_weight = args.flow_weight == FLOW_WEIGHT_AUTO
    train_idx, val_idx = split_validation(ds, np.arange(len(ds)), args.val_folds, by_recording=choose_weight)
    train_set = Subset(ds.with_augment(not args.no_augment), train_idx)
    val_set = Subset(ds, val_idx) if val_idx.size else None
    if choose_weight and val_set is None:
        raise UserError("--flow-weight auto chooses the weight on the validation split, and there is none: give --val-folds N "
                        "(e.g. 5: one video in 5 is then not trained on), or a weight")  # fmt: skip
    here = distributed.current()
    if here.is_main:
        print(f"export-train: {len(train_set)} training clips, {0 if val_set is None else len(val_set)} validation clips, "
              f"classes {classes}, {spec.size_px} px at {spec.fps:g} fps" + (f", {here.world_size} processes" if here.active else ""))  # fmt: skip

    seed_everything(config.seed)  # model init draws from the seeded RNG
    model, init_text = build_model(args.init, num_classes=len(classes), dropout_keep_prob=config.dropout_keep_prob, classes=classes)
    model.flow_weight = _prior_flow_weight(args.init) if choose_weight else args.flow_weight  # the validation's fused accuracy uses it
    work_dir = args.work_dir or Path("runs") / f"train-{args.out.name}"
    t0 = time.monotonic()
    result = train(model, train_set, val_set, config, work_dir, num_classes=len(classes), resume=args.resume)
    elapsed = time.monotonic() - t0
    chosen: dict[str, Any] = {}
    if choose_weight:  # every rank predicts its shard of the validation split
        from export.flow_weight import choose_flow_weight, weight_sweep

        pred = predict_streams(model, val_set, batch_size=config.batch_size, device=config.device, progress=False)
        sweep = weight_sweep(pred.rgb_probs, pred.flow_probs, pred.labels)
        prior = float(model.flow_weight)
        model.flow_weight = choose_flow_weight(sweep, prior)
        chosen = {"flow_weight_choice": {"chosen_on": "the validation split: whole recordings (videos, or arenas of one video) not trained on", "clips": len(val_set), "tie_prior": prior,
                                         "accuracy_by_flow_weight": sweep}}  # fmt: skip
        if here.is_main:
            print(f"export-train: flow weight {model.flow_weight:.1f} chosen on {len(val_set)} validation clips "
                  f"(fused accuracy {sweep[f'{model.flow_weight:.1f}']:.3f}; at {prior:.1f}: {sweep[f'{prior:.1f}']:.3f}; "
                  f"RGB alone {sweep['0.0']:.3f}, flow alone {sweep['1.0']:.3f})")  # fmt: skip
    if not here.is_main:
        return 0  # rank 0 writes the model, the log and the plot

    step = "source (Jhuang clips)" if args.jhuang else "target (annotated videos)"
    card = make_card(
        name=args.name or args.out.name, view=args.view, spec=spec, immobile=immobile, flow_config=dataclasses.asdict(ds.flow_config),
        init_text=init_text, config=config, result=result, flow_weight=float(model.flow_weight), step=step,
        extra={"train_clips": len(train_set), "val_clips": 0 if val_set is None else len(val_set), "train_time_s": round(elapsed, 1), "processes": here.world_size,
               **chosen},
        input_stats=training_input_stats(ds, train_idx),
    )  # fmt: skip
    model.to("cpu")
    save_model(model, card, args.out, half=args.half)
    (args.out / LOG_CSV_NAME).write_bytes((work_dir / LOG_CSV_NAME).read_bytes())
    plot_training_curves(result.history, args.out / TRAINING_PLOT, title=f"{card.name}: training")
    last = result.history[result.best_epoch - 1]
    print(f"export-train: wrote {args.out} ({result.epochs_run} epochs, kept epoch {result.best_epoch}, "
          f"train fused acc {last['train_fused_acc']:.3f}" + (f", val fused acc {last['val_fused_acc']:.3f}" if "val_fused_acc" in last else "")
          + f", {elapsed:.0f} s)")  # fmt: skip
    return 0

