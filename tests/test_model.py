"""I3D architecture, fusion, 2D inflation (boring-video property) and published-checkpoint loading."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from stream.model import (
    BN_EPS,
    I3D,
    INCEPTION_BLOCKS,
    CheckpointError,
    FusedI3D,
    fuse,
    inflate_from_2d,
    load_i3d_checkpoint,
)


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_parameter_count_matches_original():
    # Original I3D (Inception-v1): 12.29 M with a 3-class head, 12.70 M with Kinetics' 400.
    assert n_params(I3D(num_classes=3)) == pytest.approx(12.29e6, rel=2e-3)
    assert n_params(I3D(num_classes=400)) == pytest.approx(12.70e6, rel=2e-3)


def test_published_channel_counts_and_bn_eps():
    m = I3D(num_classes=5)
    widths = {name: getattr(m, name).out_channels for name, _, _ in INCEPTION_BLOCKS}
    assert widths == {
        "Mixed_3b": 256, "Mixed_3c": 480, "Mixed_4b": 512, "Mixed_4c": 512, "Mixed_4d": 512,
        "Mixed_4e": 528, "Mixed_4f": 832, "Mixed_5b": 832, "Mixed_5c": 1024,
    }  # fmt: skip
    assert all(b.eps == BN_EPS for b in m.modules() if isinstance(b, nn.BatchNorm3d))
    assert m.Conv3d_1a_7x7.conv3d.stride == (2, 2, 2)
    assert m.MaxPool3d_2a_3x3.stride == (1, 2, 2) and m.MaxPool3d_3a_3x3.stride == (1, 2, 2)
    assert m.dropout.p == pytest.approx(0.64)  # keep-probability 0.36


@pytest.mark.parametrize("size", [32, 80])
def test_any_size_and_shapes(size):
    m = I3D(num_classes=4, in_channels=2).eval()
    x = torch.randn(1, 2, 16, size, size)
    with torch.no_grad():
        fmap = m.feature_map(x)
        assert fmap.shape == (1, 1024, 2, -(-size // 32), -(-size // 32))
        assert m(x).shape == (1, 4)
        assert m.features(x).shape == (1, 1024)


def test_same_padding_is_tensorflow_semantics():
    # 224 -> 112 -> 56 -> 28 -> 14 -> 7 spatially, 16 -> 8 -> 4 -> 2 in time, as in the paper.
    m = I3D(num_classes=3).eval()
    with torch.no_grad():
        x = torch.randn(1, 3, 16, 224, 224)
        assert m.Conv3d_1a_7x7(x).shape[2:] == (8, 112, 112)
        assert m.feature_map(x).shape[2:] == (2, 7, 7)


def test_wrong_channels_rejected():
    with pytest.raises(ValueError, match=r"\(B, 3, T, H, W\)"):
        I3D(num_classes=3)(torch.randn(1, 2, 16, 32, 32))


def test_fused_outputs_and_weight():
    torch.manual_seed(0)
    m = FusedI3D(num_classes=3, flow_weight=0.4).eval()
    rgb, flow = torch.randn(2, 3, 16, 32, 32), torch.randn(2, 2, 16, 32, 32)
    with torch.no_grad():
        fused, rl, fl = m(rgb, flow)
        assert torch.allclose(fused, 0.4 * fl.softmax(-1) + 0.6 * rl.softmax(-1), atol=1e-6)
        assert torch.allclose(fused.sum(-1), torch.ones(2), atol=1e-5)
        assert torch.allclose(rl, m.rgb(rgb)) and torch.allclose(fl, m.flow(flow))
    np_fused = fuse(rl.numpy(), fl.numpy(), 0.4)
    assert np.allclose(np_fused, fused.numpy(), atol=1e-6)
    assert np.allclose(fuse(rl.numpy(), fl.numpy(), 0.0), rl.softmax(-1).numpy(), atol=1e-6)
    with pytest.raises(ValueError):
        FusedI3D(num_classes=3, flow_weight=1.5)


def test_replace_classifier_keeps_backbone():
    torch.manual_seed(0)
    m = I3D(num_classes=400)
    before = {k: v.clone() for k, v in m.state_dict().items() if not k.startswith("logits.")}
    m.replace_classifier(3)
    after = m.state_dict()
    assert after["logits.conv3d.weight"].shape[0] == 3 and m.num_classes == 3
    assert all(torch.equal(before[k], after[k]) for k in before)


# ---------------------------------------------------------------------------------------------
# A 2D Inception-v1 with torchvision's GoogLeNet key layout, built here (no download), with
# TensorFlow SAME padding so that its activations are comparable pixel for pixel.


def _same2d(x, k, s):
    def pad(size):
        total = max(k - s, 0) if size % s == 0 else max(k - size % s, 0)
        return total // 2, total - total // 2

    (pt, pb), (pl, pr) = pad(x.shape[-2]), pad(x.shape[-1])
    return F.pad(x, (pl, pr, pt, pb))


class BasicConv2d(nn.Module):
    def __init__(self, cin, cout, k):
        super().__init__()
        self.k = k
        self.conv = nn.Conv2d(cin, cout, k, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x, stride=1):
        return F.relu(self.bn(F.conv2d(_same2d(x, self.k, stride), self.conv.weight, stride=stride)))


class Inception2d(nn.Module):
    def __init__(self, cin, w):
        super().__init__()
        self.branch1 = BasicConv2d(cin, w[0], 1)
        self.branch2 = nn.Sequential(BasicConv2d(cin, w[1], 1), BasicConv2d(w[1], w[2], 3))
        self.branch3 = nn.Sequential(BasicConv2d(cin, w[3], 1), BasicConv2d(w[3], w[4], 3))
        self.branch4 = nn.Sequential(nn.Identity(), BasicConv2d(cin, w[5], 1))

    def forward(self, x):
        pooled = F.max_pool2d(_same2d(x, 3, 1), 3, 1)
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4[1](pooled)], 1)


class GoogLeNet2d(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = BasicConv2d(3, 64, 7)
        self.conv2 = BasicConv2d(64, 64, 1)
        self.conv3 = BasicConv2d(64, 192, 3)
        names = ["inception3a", "inception3b", "inception4a", "inception4b", "inception4c", "inception4d", "inception4e", "inception5a", "inception5b"]
        for name, (_, cin, w) in zip(names, INCEPTION_BLOCKS):
            setattr(self, name, Inception2d(cin, w))
        self.fc = nn.Linear(1024, 1000)  # ImageNet head: present in the state dict, not inflated

    def features(self, x):
        x = self.conv1(x, stride=2)
        x = F.max_pool2d(_same2d(x, 3, 2), 3, 2)
        x = self.conv3(self.conv2(x))
        x = F.max_pool2d(_same2d(x, 3, 2), 3, 2)
        x = self.inception3b(self.inception3a(x))
        x = F.max_pool2d(_same2d(x, 3, 2), 3, 2)
        for n in ("inception4a", "inception4b", "inception4c", "inception4d", "inception4e"):
            x = getattr(self, n)(x)
        x = F.max_pool2d(_same2d(x, 2, 2), 2, 2)
        x = self.inception5b(self.inception5a(x))
        return x.mean(dim=(2, 3))


def _random_googlenet(seed=0):
    torch.manual_seed(seed)
    net = GoogLeNet2d()
    for m in net.modules():  # non-trivial batch-norm statistics so the test means something
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return net.eval()


def test_inflation_boring_video_equals_2d_features():
    net2d = _random_googlenet()
    sd = net2d.state_dict()
    assert "inception3a.branch2.1.bn.running_mean" in sd and "conv1.conv.weight" in sd  # torchvision layout
    i3d = inflate_from_2d(sd, num_classes=3, temporal_padding="replicate").eval()
    torch.manual_seed(1)
    image = torch.randn(1, 3, 64, 64)
    video = image.unsqueeze(2).repeat(1, 1, 16, 1, 1)  # (B, C, T, H, W): one image 16 times
    with torch.no_grad():
        f2d = net2d.features(image)
        f3d = i3d.features(video)
    assert f2d.abs().mean() > 1e-2  # not a degenerate all-zero comparison
    assert torch.allclose(f3d, f2d, atol=1e-4), (f3d - f2d).abs().max()


def test_inflation_kernel_scaling_and_zero_padding_default():
    sd = _random_googlenet().state_dict()
    i3d = inflate_from_2d(sd, num_classes=3)
    w3 = i3d.Conv3d_1a_7x7.conv3d.weight
    assert w3.shape == (64, 3, 7, 7, 7)
    assert torch.allclose(w3.sum(dim=2), sd["conv1.conv.weight"], atol=1e-6)  # repeated n times, divided by n
    assert torch.allclose(i3d.Mixed_3b.b1b.conv3d.weight[:, :, 1] * 3, sd["inception3a.branch2.1.conv.weight"], atol=1e-6)
    flow = inflate_from_2d(sd, num_classes=3, in_channels=2)
    assert flow.Conv3d_1a_7x7.conv3d.weight.shape == (64, 2, 7, 7, 7)


def test_inflation_missing_key_named():
    sd = _random_googlenet().state_dict()
    del sd["inception4c.branch3.1.conv.weight"]
    with pytest.raises(CheckpointError, match=r"inception4c\.branch3\.1\.conv\.weight"):
        inflate_from_2d(sd, num_classes=3)


# ---------------------------------------------------------------------------------------------
# Published I3D checkpoints (pytorch-i3d port layout), built by the test.


def _published_checkpoint(tmp_path, in_channels, num_classes=400, drop_tracked=True):
    torch.manual_seed(2)
    src = I3D(num_classes=num_classes, in_channels=in_channels)
    state = {k: v for k, v in src.state_dict().items() if not (drop_tracked and k.endswith("num_batches_tracked"))}
    path = tmp_path / ("rgb_imagenet.pt" if in_channels == 3 else "flow_imagenet.pt")
    torch.save(state, path)
    return path, state


@pytest.mark.parametrize("in_channels", [3, 2])
def test_published_checkpoint_round_trip(tmp_path, in_channels):
    path, state = _published_checkpoint(tmp_path, in_channels)
    for key in ("Conv3d_1a_7x7.conv3d.weight", "Mixed_3b.b1b.bn.running_mean", "logits.conv3d.weight"):
        assert key in state
    same = I3D(num_classes=400, in_channels=in_channels)
    load_i3d_checkpoint(same, path)
    assert all(torch.equal(same.state_dict()[k], v) for k, v in state.items())
    # New class set: backbone from the checkpoint, classifier fresh.
    ours = I3D(num_classes=3, in_channels=in_channels)
    left = load_i3d_checkpoint(ours, path)
    assert "logits.conv3d.weight" in left
    assert torch.equal(ours.Mixed_5c.b3b.conv3d.weight, state["Mixed_5c.b3b.conv3d.weight"])
    assert ours.logits.conv3d.weight.shape == (3, 1024, 1, 1, 1)


def test_checkpoint_mismatch_names_keys(tmp_path):
    _, state = _published_checkpoint(tmp_path, 3)
    state = dict(state)
    del state["Mixed_4d.b2b.bn.running_var"]
    state["Mixed_6a.b0.conv3d.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"missing 1 key\(s\): Mixed_4d\.b2b\.bn\.running_var.*unexpected 1 key\(s\): Mixed_6a"):
        load_i3d_checkpoint(I3D(num_classes=400), state)


def test_checkpoint_wrong_stream_and_garbage(tmp_path):
    path, _ = _published_checkpoint(tmp_path, 2)
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_i3d_checkpoint(I3D(num_classes=3, in_channels=3), path)
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated.pt: cannot read weights"):
        load_i3d_checkpoint(I3D(num_classes=3), bad)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_i3d_checkpoint(I3D(num_classes=3), tmp_path / "absent.pt")
