"""stream/adabn.py: the clips ``stream-run --adapt`` draws are the clips ``export-adapt`` draws (same
centres, same pixels, flow within the training cache's quantisation), for both crops; the BatchNorm
statistics are the average over the given batches."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from export.adapt import unlabelled_clips
from export.dataset import load_arenas
from export.synth import SynthConfig, render_video
from stream import adabn
from stream.flow import FLOW_CLIP_PX, FLOW_UINT8_STEP_PX, FlowConfig
from stream.modelfile import ModelCard

FPS = 15.0
CHEAP_FLOW = FlowConfig(nscales=1, warps=1, outer_iterations=1, inner_iterations=5, median_filtering=1, fixed_iterations=True)
FLOW_ATOL = FLOW_UINT8_STEP_PX / 2 / FLOW_CLIP_PX + 1e-6  # the training cache's one byte per flow value


def _card(view: str, crop: str) -> ModelCard:
    classes = ["swim", "struggle", "float"] if view == "side" else ["mobile", "immobile"]
    return ModelCard(name="adabn-test", view=view, classes=classes, immobile_classes=[classes[-1]], input_size_px=32, fps=FPS,
                     flow=dataclasses.asdict(CHEAP_FLOW), flow_weight=0.5, init="random", training={}, crop=crop)  # fmt: skip


def test_the_draw_is_the_training_datasets_item_list_and_permutation():
    picks = adabn.pick_clips([40, 40], frame_step=15, count=5, seed=3)
    items = [(a, f) for a in range(2) for f in (0, 15, 30)]
    order = torch.randperm(6, generator=torch.Generator().manual_seed(3)).tolist()
    assert picks == [items[i] for i in order[:5]]
    assert len(adabn.pick_clips([40, 40], frame_step=15, count=64, seed=0)) == 6  # fewer candidates than asked: all of them


@pytest.mark.parametrize("view, crop", [("side", "roi"), ("top", "mouse")])
def test_stream_clips_are_the_export_adapt_clips(tmp_path, view, crop):
    r = render_video(SynthConfig(view=view, duration_s=8.0, fps=25.0, arenas=2, arena_size_px=64, seed=7), tmp_path / "v")
    card = _card(view, crop)
    ds = unlabelled_clips(card, [r.video_path], [None], frame_step=40, cache_dir=tmp_path / "cache")
    rois = [roi for _, roi in load_arenas(r.arenas_json)]
    count = 5
    live = adabn.video_clips(r.video_path, rois, card, count=count, frame_step=40, seed=1, warm_start=False)  # training: each pair from scratch
    picks = torch.randperm(len(ds), generator=torch.Generator().manual_seed(1))[:count].tolist()  # export.train.recalibrate_batchnorm's draw
    assert len(live) == count
    assert [tuple(ds.items[i, :2]) for i in picks] == adabn.pick_clips([ds.num_frames(0)] * 2, frame_step=40, count=count, seed=1)
    for (rgb, flow), i in zip(live, picks):
        want_rgb, want_flow, _ = ds[i]
        assert rgb.shape == want_rgb.shape and flow.shape == want_flow.shape
        assert torch.equal(rgb, want_rgb), tuple(ds.items[i])
        np.testing.assert_allclose(flow.numpy(), want_flow.numpy(), atol=FLOW_ATOL, rtol=0, err_msg=str(tuple(ds.items[i])))
    assert any(float(f.abs().max()) > 0.01 for _, f in live)  # there is motion to compare


def test_statistics_are_the_average_over_the_batches_and_frozen_layers_keep_theirs():
    class Two(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = torch.nn.BatchNorm1d(3), torch.nn.BatchNorm1d(2)
            self.drop = torch.nn.Dropout(0.9)

        def forward(self, rgb, flow):
            return self.drop(self.a(rgb)), self.b(flow)

    model = Two()
    model.b.weight.requires_grad_(False)
    model.b.running_mean.fill_(7.0)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(4, 3, generator=g) + i, torch.randn(4, 2, generator=g)) for i in range(3)]
    moved = adabn.reestimate_batchnorm(model, iter(batches), "cpu")
    want = torch.stack([rgb.mean(0) for rgb, _ in batches]).mean(0)
    assert torch.allclose(model.a.running_mean, want, atol=1e-6)
    assert torch.equal(model.b.running_mean, torch.full((2,), 7.0))  # frozen: kept
    assert model.a.momentum == 0.1 and not model.training
    assert moved == pytest.approx(adabn.variance_change({"a.running_var": torch.ones(3)}, {"a.running_var": model.a.running_var}))  # only the layer it re-estimated
    before = {"a.running_var": torch.ones(3)}
    assert adabn.variance_change(before, {"a.running_var": torch.full((3,), 1.5)}) == pytest.approx(0.5)
