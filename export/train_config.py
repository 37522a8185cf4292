"""What a training run is told: ``TrainConfig``, the fine-tuning recipe, and the command-line options that make them.

Split out of ``export/train.py`` (issue 23); ``export.train`` re-exports every name.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from export import distributed
from export.train_model import FREEZABLE_BLOCKS, INIT_HELP
from stream.errors import UserError
from stream.modelfile import CROP_ROI, CROPS
from stream.preprocess import DEFAULT_MODEL_FPS

if TYPE_CHECKING:
    from stream.flow import FlowConfig

__all__ = ["DEFAULT_FPS", "FINETUNE_RECIPE", "FLOW_PRESETS", "TrainConfig", "add_data_arguments", "add_training_arguments", "apply_threads", "config_from_args",
           "flow_config_for", "flow_options_of", "parse_with_recipe"]

log = logging.getLogger(__name__)


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
    # A per-stream recipe: a Kinetics-started RGB stream has to learn a new look (lighting, background)
    # that the frozen, slowly-tuned recipe keeps from it, while the flow stream is the part that
    # transfers and is best left as the recipe treats it (docs/learning_curve). None = as both streams.
    rgb_lr: float | None = None  # the RGB stream's initial rate (its cosine decays to the same lr_floor)
    rgb_freeze_until: str | None = None  # the RGB stream's frozen blocks; "" = train all of it

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
        if self.rgb_lr is not None and not (0 < self.lr_floor <= self.rgb_lr):
            problems.append("need 0 < lr floor <= RGB lr")
        if self.rgb_freeze_until and self.rgb_freeze_until not in FREEZABLE_BLOCKS:
            problems.append(f"rgb-freeze-until {self.rgb_freeze_until!r} is not an I3D block ({', '.join(FREEZABLE_BLOCKS)})")
        if problems:
            raise UserError("training configuration: " + "; ".join(problems))


DEFAULT_FPS = DEFAULT_MODEL_FPS  # the bundled models' frame rate
FLOW_PRESETS = ("default", "fast")  # --flow-preset: OpenCV's TV-L1 defaults, or FlowConfig.fast()


def flow_config_for(preset: str, texture_sigma: float = 0.0) -> FlowConfig:
    """The TV-L1 settings that ``--flow-preset`` and ``--flow-texture-sigma`` name."""
    from stream.flow import FlowConfig

    return FlowConfig.fast(texture_sigma=texture_sigma) if preset == "fast" else FlowConfig(texture_sigma=texture_sigma)


def flow_options_of(flow: dict[str, Any]) -> tuple[str, float] | None:
    """The (``--flow-preset``, ``--flow-texture-sigma``) that give a card's TV-L1 settings; None when no preset does."""
    sigma = flow.get("texture_sigma", 0.0)
    return next(((preset, sigma) for preset in FLOW_PRESETS if dataclasses.asdict(flow_config_for(preset, sigma)) == flow), None)


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
    g.add_argument("--flow-preset", choices=FLOW_PRESETS, default="default", help="TV-L1 settings: OpenCV defaults or FlowConfig.fast() (default: default)")
    g.add_argument("--flow-texture-sigma", type=float, default=0.0, metavar="PX",
                   help="TV-L1 on each frame's texture (the frame minus its Gaussian blur of this sigma, in px of the image the flow is computed on: the model input, twice it with --crop mouse): "
                        "flicker and uneven lighting stop looking like motion; the card keeps it, so live flow does the same (default: 0 = off)")
    g.add_argument("--no-augment", action="store_true", help="no flip/crop/brightness augmentation of training clips")
    g.add_argument("--crop", choices=CROPS, default=CROP_ROI,
                   help="input crop: roi = the whole arena at --size-px; mouse = the --size-px window around the mouse, cut from the "
                        "arena at twice that size (stream.mouse_crop; offline only: stream-run refuses such a model) (default: roi)")  # fmt: skip


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
    g.add_argument("--rgb-lr", type=float, default=None, metavar="LR",
                   help="the RGB stream's own initial learning rate, e.g. 1e-3 to let a fine-tuned RGB stream learn a new lighting (default: --lr)")
    g.add_argument("--rgb-freeze-until", default=None, metavar="BLOCK",
                   help="the RGB stream's own frozen blocks; '' trains all of it (default: --freeze-until)")


def apply_threads(threads: int | None) -> None:
    """``--threads``: torch's CPU threads for this process, set by the command only (None: torch's choice)."""
    if threads is not None:
        if threads < 1:
            raise UserError(f"--threads {threads}: must be >= 1")
        torch.set_num_threads(threads)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig the arguments describe (and the process-wide thread count, if asked for).

    Under ``torchrun`` this also joins the job (``export.distributed.init_from_env``): both
    commands that train call it before anything else, so every rank is in the job from the start.
    """
    apply_threads(args.threads)
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
        rgb_lr=args.rgb_lr,
        rgb_freeze_until=args.rgb_freeze_until,
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
    input crop, view and classes (and keeps its flow weight), unless the command line says otherwise."""
    from stream.modelfile import load_card

    card = load_card(model_dir)
    wanted = {"size_px": card.input_size_px, "fps": card.fps, "view": card.view, "classes": ",".join(card.classes),
              "immobile_classes": ",".join(card.immobile_classes), "flow_weight": card.flow_weight, "crop": card.crop}  # fmt: skip
    flow_options = flow_options_of(card.flow)
    if flow_options is not None:
        wanted["flow_preset"], wanted["flow_texture_sigma"] = flow_options
    if "flow_preset" not in wanted and "flow_preset" not in set_by_user:
        log.warning("%s: its TV-L1 settings are neither --flow-preset default nor fast; training uses %s", model_dir, args.flow_preset)
    for key, value in wanted.items():
        if key not in set_by_user and hasattr(args, key):
            setattr(args, key, value)
