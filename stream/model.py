"""Two-stream Inflated 3D ConvNet (I3D) for clip classification.

Carreira & Zisserman, "Quo Vadis, Action Recognition? A New Model and the Kinetics Dataset",
CVPR 2017. Inception-v1 (GoogLeNet, Szegedy et al. 2015) with every 2D kernel inflated to 3D.
Input ``(B, C, T, H, W)``: C = 3 for RGB in [-1, 1], C = 2 for TV-L1 flow (x, y) scaled to
[-1, 1]; T = 16 frames in swim-stream; H = W = 224 as in the paper, smaller sizes allowed.

Faithful to the released TensorFlow model where it matters for loading its weights:

* layer names match the widely used PyTorch port (``Conv3d_1a_7x7.conv3d.weight``,
  ``Mixed_3b.b1b.bn.running_mean``, ``logits.conv3d.bias``), so ``rgb_imagenet.pt`` /
  ``flow_imagenet.pt`` load without renaming;
* TensorFlow "SAME" padding (asymmetric when the total is odd, extra on the far side);
* batch norm eps 1e-3; no temporal striding in the first two max-pools;
* the original 2x7x7 average pool only fits 224 px input, so we average over the whole
  remaining spatial map instead (identical at 224 px, and any size runs and exports to ONNX);
  the 1x1x1 logits conv is applied per remaining time step and the logits averaged over time,
  as in the original.

Deviation by choice: dropout takes the *drop* probability in PyTorch; we keep the paper's
keep-probability (0.36 in the founding FST paper) as the argument and convert.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stream.errors import UserError

__all__ = [
    "I3D",
    "FusedI3D",
    "fuse",
    "inflate_from_2d",
    "cross_modality_kernel",
    "load_i3d_checkpoint",
    "CheckpointError",
    "FEATURE_CHANNELS",
    "FEATURE_LAYERS",
    "same_padding",
    "DROPOUT_KEEP_PROB",
    "BN_EPS",
]

log = logging.getLogger(__name__)

FEATURE_CHANNELS = 1024  # Mixed_5c output channels of Inception-v1
DROPOUT_KEEP_PROB = 0.36  # founding FST paper's classifier keep-probability
BN_EPS = 1e-3  # TensorFlow's batch-norm epsilon in the released I3D
BN_MOMENTUM = 0.01  # PyTorch convention (1 - TF decay 0.99); slow enough for small fine-tuning batches

# (name, in_channels, [b0, b1a, b1b, b2a, b2b, b3b]) as published for Inception-v1.
INCEPTION_BLOCKS: tuple[tuple[str, int, tuple[int, int, int, int, int, int]], ...] = (
    ("Mixed_3b", 192, (64, 96, 128, 16, 32, 32)),
    ("Mixed_3c", 256, (128, 128, 192, 32, 96, 64)),
    ("Mixed_4b", 480, (192, 96, 208, 16, 48, 64)),
    ("Mixed_4c", 512, (160, 112, 224, 24, 64, 64)),
    ("Mixed_4d", 512, (128, 128, 256, 24, 64, 64)),
    ("Mixed_4e", 512, (112, 144, 288, 32, 64, 64)),
    ("Mixed_4f", 528, (256, 160, 320, 32, 128, 128)),
    ("Mixed_5b", 832, (256, 160, 320, 32, 128, 128)),
    ("Mixed_5c", 832, (384, 192, 384, 48, 128, 128)),
)

Triple = tuple[int, int, int]

# The body's layers in order, input to Mixed_5c (the streaming engine walks the same list).
FEATURE_LAYERS: tuple[str, ...] = (
    "Conv3d_1a_7x7", "MaxPool3d_2a_3x3", "Conv3d_2b_1x1", "Conv3d_2c_3x3", "MaxPool3d_3a_3x3",
    "Mixed_3b", "Mixed_3c", "MaxPool3d_4a_3x3", "Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e",
    "Mixed_4f", "MaxPool3d_5a_2x2", "Mixed_5b", "Mixed_5c",
)  # fmt: skip


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "SAME": output = ceil(size / stride); the odd pixel goes to the far side."""
    if size % stride == 0:
        total = max(kernel - stride, 0)
    else:
        total = max(kernel - size % stride, 0)
    return total // 2, total - total // 2


def _pad_same(x: torch.Tensor, kernel: Triple, stride: Triple, temporal_mode: str) -> torch.Tensor:
    t, h, w = x.shape[-3:]
    pt, ph, pw = (same_padding(int(s), k, st) for s, k, st in zip((t, h, w), kernel, stride))
    if not any(pt + ph + pw):
        return x
    if temporal_mode == "replicate" and any(pt):
        # Replicate only along time: used to show the boring-video property exactly.
        x = F.pad(x, (0, 0, 0, 0, *pt), mode="replicate")
        pt = (0, 0)
    # Zero padding is exact for the max-pools too: every pool follows a ReLU (inputs >= 0).
    return F.pad(x, (*pw, *ph, *pt))


class Unit3D(nn.Module):
    """Conv3d with SAME padding, optional batch norm and ReLU (the port's ``Unit3D``)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: Triple = (1, 1, 1),
        stride: Triple = (1, 1, 1),
        *,
        batch_norm: bool = True,
        activation: bool = True,
        bias: bool = False,
        temporal_padding: str = "zeros",
    ) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride
        self.temporal_padding = temporal_padding
        self.conv3d = nn.Conv3d(in_channels, out_channels, kernel, stride, padding=0, bias=bias)
        self.bn = nn.BatchNorm3d(out_channels, eps=BN_EPS, momentum=BN_MOMENTUM) if batch_norm else None
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(_pad_same(x, self.kernel, self.stride, self.temporal_padding))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.activation else x


class MaxPool3dSame(nn.Module):
    def __init__(self, kernel: Triple, stride: Triple, temporal_padding: str = "zeros") -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride
        self.temporal_padding = temporal_padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool3d(_pad_same(x, self.kernel, self.stride, self.temporal_padding), self.kernel, self.stride)


class InceptionModule(nn.Module):
    """Four parallel branches (1x1; 1x1->3x3; 1x1->3x3; pool->1x1) concatenated on channels."""

    def __init__(self, in_channels: int, widths: tuple[int, int, int, int, int, int], temporal_padding: str) -> None:
        super().__init__()
        b0, b1a, b1b, b2a, b2b, b3b = widths
        tp = {"temporal_padding": temporal_padding}
        self.b0 = Unit3D(in_channels, b0, **tp)
        self.b1a = Unit3D(in_channels, b1a, **tp)
        self.b1b = Unit3D(b1a, b1b, (3, 3, 3), **tp)
        self.b2a = Unit3D(in_channels, b2a, **tp)
        self.b2b = Unit3D(b2a, b2b, (3, 3, 3), **tp)
        self.b3a = MaxPool3dSame((3, 3, 3), (1, 1, 1), temporal_padding)
        self.b3b = Unit3D(in_channels, b3b, **tp)
        self.out_channels = b0 + b1b + b2b + b3b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], dim=1)


class I3D(nn.Module):
    """One I3D stream. ``forward(x (B, C, T, H, W)) -> logits (B, num_classes)``.

    ``temporal_padding="replicate"`` is not the original; it exists so that the inflation
    property (a boring video gives the 2D network's features) can be checked exactly, free of
    the zero-padding effects at the clip's first and last frames.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int = 3,
        dropout_keep_prob: float = DROPOUT_KEEP_PROB,
        temporal_padding: str = "zeros",
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if not 0.0 < dropout_keep_prob <= 1.0:
            raise ValueError(f"dropout_keep_prob must be in (0, 1], got {dropout_keep_prob}")
        if temporal_padding not in ("zeros", "replicate"):
            raise ValueError(f"temporal_padding must be 'zeros' or 'replicate', got {temporal_padding!r}")
        self.num_classes = num_classes
        self.in_channels = in_channels
        tp = {"temporal_padding": temporal_padding}
        self.Conv3d_1a_7x7 = Unit3D(in_channels, 64, (7, 7, 7), (2, 2, 2), **tp)
        self.MaxPool3d_2a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2), temporal_padding)
        self.Conv3d_2b_1x1 = Unit3D(64, 64, **tp)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3), **tp)
        self.MaxPool3d_3a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2), temporal_padding)
        for name, cin, widths in INCEPTION_BLOCKS:
            if name == "Mixed_4b":
                self.MaxPool3d_4a_3x3 = MaxPool3dSame((3, 3, 3), (2, 2, 2), temporal_padding)
            if name == "Mixed_5b":
                self.MaxPool3d_5a_2x2 = MaxPool3dSame((2, 2, 2), (2, 2, 2), temporal_padding)
            setattr(self, name, InceptionModule(cin, widths, temporal_padding))
        self.dropout = nn.Dropout(p=1.0 - dropout_keep_prob)
        self.logits = self._make_logits(num_classes)

    @staticmethod
    def _make_logits(num_classes: int) -> Unit3D:
        return Unit3D(FEATURE_CHANNELS, num_classes, batch_norm=False, activation=False, bias=True)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) -> (B, 1024, T/8, H/32, W/32): Mixed_5c output."""
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input (B, {self.in_channels}, T, H, W), got {tuple(x.shape)}")
        for name in FEATURE_LAYERS:
            x = getattr(self, name)(x)
        return x

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Globally pooled clip embedding (B, 1024)."""
        return self.feature_map(x).mean(dim=(2, 3, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.feature_map(x).mean(dim=(3, 4), keepdim=True)  # (B, 1024, T', 1, 1)
        x = self.logits(self.dropout(x))  # (B, K, T', 1, 1)
        return x.mean(dim=(2, 3, 4))  # (B, K): logits averaged over time, as the original

    def replace_classifier(self, num_classes: int) -> None:
        """New class set: a freshly initialised logits layer; every backbone weight is kept."""
        device = self.logits.conv3d.weight.device
        self.logits = self._make_logits(num_classes).to(device)
        self.num_classes = num_classes

    def backbone_parameters(self):
        return (p for n, p in self.named_parameters() if not n.startswith("logits."))


def fuse(rgb_logits, flow_logits, flow_weight: float):
    """Late fusion of the two streams: ``w * softmax(flow) + (1 - w) * softmax(rgb)``.

    Works on torch tensors and numpy arrays (the evaluation sweeps ``w`` over stored logits).
    """
    if not 0.0 <= flow_weight <= 1.0:
        raise ValueError(f"flow_weight must be in [0, 1], got {flow_weight}")
    if isinstance(rgb_logits, torch.Tensor):
        return flow_weight * torch.softmax(flow_logits, dim=-1) + (1.0 - flow_weight) * torch.softmax(rgb_logits, dim=-1)
    rgb, flow = np.asarray(rgb_logits, dtype=np.float64), np.asarray(flow_logits, dtype=np.float64)

    def softmax(z: np.ndarray) -> np.ndarray:
        e = np.exp(z - z.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    return flow_weight * softmax(flow) + (1.0 - flow_weight) * softmax(rgb)


class FusedI3D(nn.Module):
    """RGB I3D + flow I3D in one module, late-fused with a stored ``flow_weight``.

    ``forward(rgb (B, 3, T, H, W), flow (B, 2, T, H, W)) -> (fused_probs, rgb_logits, flow_logits)``.
    The per-stream logits are what training optimises and what the fusion sweep re-weights.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        flow_weight: float = 0.5,
        dropout_keep_prob: float = DROPOUT_KEEP_PROB,
        temporal_padding: str = "zeros",
    ) -> None:
        super().__init__()
        if not 0.0 <= flow_weight <= 1.0:
            raise ValueError(f"flow_weight must be in [0, 1], got {flow_weight}")
        common = {"num_classes": num_classes, "dropout_keep_prob": dropout_keep_prob, "temporal_padding": temporal_padding}
        self.rgb = I3D(in_channels=3, **common)
        self.flow = I3D(in_channels=2, **common)
        self.flow_weight = float(flow_weight)

    @property
    def num_classes(self) -> int:
        return self.rgb.num_classes

    def replace_classifier(self, num_classes: int) -> None:
        self.rgb.replace_classifier(num_classes)
        self.flow.replace_classifier(num_classes)

    def forward(self, rgb: torch.Tensor, flow: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rgb_logits = self.rgb(rgb)
        flow_logits = self.flow(flow)
        return fuse(rgb_logits, flow_logits, self.flow_weight), rgb_logits, flow_logits


# --------------------------------------------------------------------------------------------
# Loading weights


class CheckpointError(UserError):
    """A weights file that does not fit the network (wrong keys or shapes)."""


# torchvision GoogLeNet -> I3D names. (2D prefix, I3D prefix, temporal kernel size)
_STEM_2D = (("conv1", "Conv3d_1a_7x7", 7), ("conv2", "Conv3d_2b_1x1", 1), ("conv3", "Conv3d_2c_3x3", 3))
_BLOCKS_2D = ("inception3a", "inception3b", "inception4a", "inception4b", "inception4c", "inception4d", "inception4e", "inception5a", "inception5b")  # fmt: skip
_BRANCHES_2D = (("branch1", "b0", 1), ("branch2.0", "b1a", 1), ("branch2.1", "b1b", 3), ("branch3.0", "b2a", 1), ("branch3.1", "b2b", 3), ("branch4.1", "b3b", 1))  # fmt: skip
_BN_KEYS = ("weight", "bias", "running_mean", "running_var")


def cross_modality_kernel(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """An RGB first-layer kernel (out, 3, ...) for an ``in_channels`` input (flow: 2), by
    cross-modality initialisation (Wang et al. 2016, Temporal Segment Networks): the kernels
    averaged over the colour channels, repeated for each new channel.

    The plain average, not rescaled by 3 / in_channels: it is the published recipe, and a flow
    input (u, v) then gives what the RGB filter gives a grey image of level (u + v) / 3. The scale
    does not survive the first layer anyway: its batch norm's statistics were measured on RGB and
    are re-estimated while training (``TrainConfig.bn_momentum``, BN recalibration).
    """
    return weight.mean(dim=1, keepdim=True).expand(-1, in_channels, *weight.shape[2:]).contiguous()


def _unit_map_2d() -> list[tuple[str, str, int]]:
    units = list(_STEM_2D)
    for block2d, (block3d, _, _) in zip(_BLOCKS_2D, INCEPTION_BLOCKS):
        units += [(f"{block2d}.{b2}", f"{block3d}.{b3}", t) for b2, b3, t in _BRANCHES_2D]
    return units


def inflate_from_2d(
    state_dict_2d: Mapping[str, torch.Tensor],
    *,
    num_classes: int,
    in_channels: int = 3,
    dropout_keep_prob: float = DROPOUT_KEEP_PROB,
    temporal_padding: str = "zeros",
) -> I3D:
    """Build an I3D from a 2D Inception-v1 (torchvision GoogLeNet key layout).

    The I3D paper's "boring video" bootstrap: each 2D kernel is repeated ``n`` times along time
    and divided by ``n``, so a video of one repeated image gives the 2D network's activations.
    For a 2-channel flow stream the first conv's RGB filters are averaged over colour and
    repeated for x and y (the usual practice for ImageNet-initialised flow networks).
    The classifier (``fc``) is not inflated: ImageNet classes are not ours.
    Note: torchvision pads symmetrically, the I3D uses TensorFlow SAME padding; the weights
    carry over, activations may shift by a pixel at stride-2 layers.
    """
    i3d = I3D(num_classes=num_classes, in_channels=in_channels, dropout_keep_prob=dropout_keep_prob, temporal_padding=temporal_padding)
    target = i3d.state_dict()
    new: dict[str, torch.Tensor] = {}
    missing: list[str] = []
    for src, dst, t in _unit_map_2d():
        key = f"{src}.conv.weight"
        if key not in state_dict_2d:
            missing.append(key)
            continue
        w2d = state_dict_2d[key].detach().float()
        if dst == "Conv3d_1a_7x7" and w2d.shape[1] != in_channels:
            w2d = cross_modality_kernel(w2d, in_channels)
        new[f"{dst}.conv3d.weight"] = w2d.unsqueeze(2).repeat(1, 1, t, 1, 1) / t
        for bn in _BN_KEYS:
            bkey = f"{src}.bn.{bn}"
            if bkey not in state_dict_2d:
                missing.append(bkey)
                continue
            new[f"{dst}.bn.{bn}"] = state_dict_2d[bkey].detach().float()
    if missing:
        raise CheckpointError(
            f"2D Inception-v1 state dict is missing {len(missing)} key(s), e.g. {', '.join(missing[:5])}; "
            "expected torchvision's GoogLeNet layout (conv1.conv.weight, inception3a.branch2.1.bn.running_mean, ...)"
        )
    for key, value in new.items():
        if target[key].shape != value.shape:
            raise CheckpointError(f"2D weight for {key} inflates to shape {tuple(value.shape)}, network expects {tuple(target[key].shape)}")
    result = i3d.load_state_dict(new, strict=False)
    still_missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked") and not k.startswith("logits.")]
    assert not still_missing, still_missing  # every backbone weight has a 2D source
    return i3d


def _read_state_dict(source: str | Path | Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
    if isinstance(source, Mapping):
        return source
    path = Path(source)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            # weights_only: never unpickle arbitrary objects from a file someone handed us.
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any decoding failure is the file's fault
        raise CheckpointError(f"{path}: cannot read weights ({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); is the file complete?") from exc
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: expected a state dict, found {type(state).__name__}")
    # Checkpoints saved from nn.DataParallel prefix every key with "module.".
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_i3d_checkpoint(
    i3d: I3D,
    source: str | Path | Mapping[str, torch.Tensor],
    *,
    skip_classifier: bool | None = None,
) -> list[str]:
    """Load a published I3D checkpoint (``rgb_imagenet.pt`` / ``flow_imagenet.pt`` layout).

    ``skip_classifier=None`` keeps our classifier when the checkpoint's class count differs
    (400 Kinetics classes vs our 3) and loads it otherwise. Returns the keys left at their
    initial values. Any other mismatch raises ``CheckpointError`` naming the keys.
    """
    name = str(source) if not isinstance(source, Mapping) else "state dict"
    state = dict(_read_state_dict(source))
    target = i3d.state_dict()
    ck_classes = state["logits.conv3d.weight"].shape[0] if "logits.conv3d.weight" in state else None
    if skip_classifier is None:
        skip_classifier = ck_classes != i3d.num_classes
    if skip_classifier:
        state = {k: v for k, v in state.items() if not k.startswith("logits.")}
    optional = ("num_batches_tracked",)  # older checkpoints predate this buffer
    missing = sorted(k for k in target if k not in state and not k.endswith(optional) and not (skip_classifier and k.startswith("logits.")))
    unexpected = sorted(k for k in state if k not in target)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s): {', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} key(s): {', '.join(unexpected[:6])}{' ...' if len(unexpected) > 6 else ''}")
        raise CheckpointError(f"{name}: does not match the I3D layout; " + "; ".join(parts))
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(target[k].shape)}" for k, v in state.items() if v.shape != target[k].shape]
    if wrong:
        raise CheckpointError(f"{name}: shape mismatch for {len(wrong)} key(s): {', '.join(wrong[:4])} (wrong input channels? RGB=3, flow=2)")
    i3d.load_state_dict(state, strict=False)
    left = [k for k in target if k not in state]
    if skip_classifier:
        log.info("%s: loaded backbone; classifier for %d classes left freshly initialised", name, i3d.num_classes)
    return left
