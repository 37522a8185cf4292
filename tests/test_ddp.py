"""Data-parallel training (export/distributed.py and the DDP paths of export/train.py) on the CPU.

Two processes joined by gloo (``torch.multiprocessing`` with the environment torchrun would set,
through the same ``init_from_env`` the commands use) must train what one process trains with the
same global batch: same draw, global-batch BatchNorm statistics, gradients averaged. Dropout is
off (keep 1.0) and there is no augmentation, so the only difference left is floating-point
summation order. The last test runs the real ``torchrun`` on ``export-train``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from export import distributed
from export import train as tr
from test_train import InterruptAfter, TinyFused, ToyClips, cfg

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TOLERANCE = 1e-4  # float32 weights after a few SGD steps: summation order only


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _job(rank: int, world: int, port: int, out: str, config: dict, interrupt_after: int, resume: bool) -> None:
    """One rank: join the job as under torchrun, train, predict; rank r saves what it ended with."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    distributed.init_from_env("cpu")
    torch.manual_seed(1)
    model = TinyFused()
    train_set = ToyClips(20) if not interrupt_after else InterruptAfter(ToyClips(20), interrupt_after)
    outcome = "done"
    try:
        result = tr.train(model, train_set, ToyClips(7, seed=3), tr.TrainConfig(**config), Path(out) / "run", num_classes=3, resume=resume, progress=False)
    except KeyboardInterrupt:
        outcome = "interrupted"
    if outcome == "done":
        pred = tr.predict_streams(model, ToyClips(11, seed=9), batch_size=4, device="cpu", progress=False)
        torch.save({"state": model.state_dict(), "history": result.history, "rgb": pred.rgb_probs, "flow": pred.flow_probs, "labels": pred.labels}, Path(out) / f"rank{rank}.pt")
    (Path(out) / f"rank{rank}.outcome").write_text(outcome)
    torch.distributed.destroy_process_group()
    # Leave without the interpreter's finalisation: gloo's worker threads can still be torn down
    # then, and once in about 25 CI runs a rank aborted there ("terminate called without an active
    # exception") after its work was done and written. What the tests compare is on disk already.
    os._exit(0)


def _spawn(out: Path, config: dict, *, interrupt_after: int = 0, resume: bool = False, world: int = 2) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    try:
        mp.spawn(_job, args=(world, _free_port(), str(out), config, interrupt_after, resume), nprocs=world, join=True)
    except mp.ProcessExitedException as e:  # say how far each rank got: in its work or after it
        finished = [r for r in range(world) if (out / f"rank{r}.outcome").exists()]
        raise AssertionError(f"{e}; ranks that had written their outcome: {finished}") from e
    return [(out / f"rank{r}.outcome").read_text() for r in range(world)]


def _single(tmp: Path, config: dict):
    torch.manual_seed(1)
    model = TinyFused()
    result = tr.train(model, ToyClips(20), ToyClips(7, seed=3), tr.TrainConfig(**config), tmp / "run", num_classes=3, progress=False)
    pred = tr.predict_streams(model, ToyClips(11, seed=9), batch_size=4, device="cpu", progress=False)
    return model.state_dict(), result.history, pred


def _config(**kw) -> dict:
    # batch 5 on 2 ranks = shares of 3 and 2: the unequal-share loss factor is exercised too
    base = dict(epochs=3, batch_size=5, lr=0.05, lr_floor=1e-4, patience_epochs=0, device="cpu", seed=1,
                dropout_keep_prob=1.0, bn_recalibration_clips=8)  # fmt: skip
    base.update(kw)
    return base


def _max_difference(a: dict, b: dict) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())


@pytest.mark.parametrize("balance", ["sampler", pytest.param("loss", marks=pytest.mark.slow)])
def test_two_processes_train_what_one_process_trains(tmp_path, balance):
    config = _config(balance=balance)
    state1, history1, pred1 = _single(tmp_path / "one", config)
    assert _spawn(tmp_path / "two", config) == ["done", "done"]
    rank0 = torch.load(tmp_path / "two" / "rank0.pt", weights_only=False)  # written by this test, not a handed file
    rank1 = torch.load(tmp_path / "two" / "rank1.pt", weights_only=False)

    diff = _max_difference(state1, rank0["state"])
    print(f"max |w_1proc - w_2proc| = {diff:.3g} ({balance})")
    assert diff < TOLERANCE
    assert _max_difference(rank0["state"], rank1["state"]) == 0.0  # every rank ends with the same weights and BatchNorm buffers
    for one, two in zip(history1, rank0["history"]):  # losses and accuracies reduced over the ranks
        assert two["train_clips"] == one["train_clips"] == 20 // 5 * 5 and two["val_clips"] == one["val_clips"] == 7
        for key in ("train_loss", "train_fused_acc", "val_loss", "val_fused_acc", "lr"):
            assert two[key] == pytest.approx(one[key], rel=1e-4, abs=1e-6), key
    np.testing.assert_allclose(rank0["rgb"], pred1.rgb_probs, atol=1e-4)  # sharded + gathered, in dataset order
    np.testing.assert_array_equal(rank1["labels"], pred1.labels)

    run = tmp_path / "two" / "run"  # one writer: the checkpoint holds both ranks' generator states
    saved = tr.load_checkpoint(run / tr.CHECKPOINT_NAME)
    assert saved["epoch"] == 3 and len(saved["rng"]) == 2
    assert len((run / tr.LOG_JSONL_NAME).read_text().splitlines()) == 3
    assert not list(run.glob("*.tmp"))


@pytest.mark.slow  # three 2-process jobs
def test_resumed_two_process_run_equals_an_uninterrupted_one(tmp_path):
    config = _config(batch_size=4, bn_recalibration_clips=0, dropout_keep_prob=0.5)  # dropout on: per-rank RNG states matter
    assert _spawn(tmp_path / "whole", config) == ["done", "done"]
    # 20 clips / batch 4 = 5 steps of 2 clips per rank: 10 reads per rank per epoch; both ranks stop in epoch 2
    assert _spawn(tmp_path / "broken", config, interrupt_after=10 + 5) == ["interrupted", "interrupted"]
    assert tr.load_checkpoint(tmp_path / "broken" / "run" / tr.CHECKPOINT_NAME)["epoch"] == 1
    assert _spawn(tmp_path / "broken", config, resume=True) == ["done", "done"]
    whole = torch.load(tmp_path / "whole" / "rank0.pt", weights_only=False)
    resumed = torch.load(tmp_path / "broken" / "rank0.pt", weights_only=False)
    assert _max_difference(whole["state"], resumed["state"]) == 0.0
    assert [r["train_loss"] for r in resumed["history"]] == [r["train_loss"] for r in whole["history"]]


class Indices(torch.utils.data.Dataset):
    """Item i is i: a loader over it shows which items it drew, in order."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def test_epoch_batches_are_what_the_single_process_loader_draws():
    labels = np.array([0] * 14 + [1] * 4 + [2] * 3)
    data = Indices(len(labels))
    for kw in (dict(balance="sampler", clips_per_epoch=30), dict(balance="none"), dict(balance="loss", batch_size=50)):
        config = cfg(batch_size=kw.pop("batch_size", 4), **kw)
        drawn = [batch.tolist() for batch in tr._train_loader(data, labels, 3, config, epoch=2)]
        assert [b.tolist() for b in tr._epoch_batches(data, labels, 3, config, epoch=2)] == drawn


def test_rank_shares_cover_each_global_batch_once():
    batches = [np.arange(0, 5), np.arange(5, 10)]
    weights = np.ones(10)
    config = cfg(batch_size=5)
    shares = [tr._rank_loader(ToyClips(10), batches, weights, config, 0, distributed.Dist(rank=r, world_size=2)) for r in (0, 1)]
    assert [list(s[0].batch_sampler) for s in shares] == [[[0, 1, 2], [5, 6, 7]], [[3, 4], [8, 9]]]
    assert shares[0][1] == [1.2, 1.2] and shares[1][1] == [0.8, 0.8]  # (3 + 2 clips) x factor / 2 ranks = the global mean
    with pytest.raises(tr.UserError, match="cannot be shared by 3 processes"):
        tr._rank_loader(ToyClips(10), [np.arange(2)], weights, config, 0, distributed.Dist(rank=0, world_size=3))


def test_outside_torchrun_nothing_is_initialised(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    here = distributed.init_from_env("cpu")
    assert (here.rank, here.world_size, here.is_main, here.active) == (0, 1, True, False)
    assert distributed.shard(5).tolist() == [0, 1, 2, 3, 4]
    assert distributed.shard(5, distributed.Dist(rank=1, world_size=2)).tolist() == [3, 4]
    assert distributed.shard_batches(7, 2, distributed.Dist(rank=0, world_size=2)).tolist() == [0, 1, 4, 5]
    assert distributed.shard_batches(7, 2, distributed.Dist(rank=1, world_size=2)).tolist() == [2, 3, 6]
    assert distributed.shard_batches(3, 4, distributed.Dist(rank=1, world_size=2)).tolist() == []
    with pytest.raises(tr.UserError, match="cuda:LOCAL_RANK"):
        monkeypatch.setenv("WORLD_SIZE", "2")
        distributed.init_from_env("cuda:1")


@pytest.mark.slow
def test_torchrun_export_train_on_two_cpu_processes(tmp_path):
    """The README's command, on the CPU: torchrun --nproc_per_node 2 export-train ... with DataLoader workers."""
    from export.synth import SynthConfig, render_video
    from stream.modelfile import load_model

    bin_dir = str(Path(sys.executable).parent)
    torchrun = shutil.which("torchrun", path=bin_dir)
    if torchrun is None or shutil.which("export-train", path=bin_dir) is None:
        pytest.skip("torchrun / export-train are not installed beside this Python")
    synth = render_video(SynthConfig(view="side", duration_s=8.0, fps=15.0, arenas=1, arena_size_px=64, seed=1), tmp_path / "data")
    argv = [torchrun, "--standalone", "--nproc_per_node", "2", "--no-python", "export-train", "--videos", str(synth.video_path), "--out", str(tmp_path / "model"),
            "--work-dir", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache"), "--size-px", "32", "--frame-step", "10",
            "--flow-preset", "fast", "--epochs", "2", "--batch-size", "4", "--val-folds", "3", "--bn-recalibration-clips", "4",
            "--device", "cpu", "--threads", "1", "--workers", "1"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[:3000]  # the first lines hold the failing rank's traceback
    assert done.stdout.count("export-train: wrote") == 1 and "2 processes" in done.stdout  # rank 0 alone reports
    _, card = load_model(tmp_path / "model")
    assert card.training["processes"] == 2 and card.training["epochs_run"] == 2
    assert len(tr.load_checkpoint(tmp_path / "run" / tr.CHECKPOINT_NAME)["rng"]) == 2
    rows = [json.loads(line) for line in (tmp_path / "run" / tr.LOG_JSONL_NAME).read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert len(list((tmp_path / "cache").glob("*.flow.npy"))) == 1  # cached once, by rank 0


# ---------------------------------------------------------------- rank 0 prepares, the others wait


def _prepare_job(rank: int, world: int, port: int, out: str) -> None:
    import time

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank))
    distributed.init_from_env("cpu")
    log = Path(out) / f"rank{rank}.log"
    with distributed.long_wait_barrier():
        log.write_text(f"{time.monotonic()}\n")
        if rank == 0:
            time.sleep(1.0)  # caching takes a while
            (Path(out) / "cache.npy").write_text("x")
        assert (Path(out) / "cache.npy").exists()  # the others find the cache in place
        with log.open("a") as fh:
            fh.write(f"{time.monotonic()}\n")
    torch.distributed.destroy_process_group()
    os._exit(0)  # as in _job: no interpreter finalisation beside gloo's threads


def test_rank_zero_prepares_the_cache_while_the_others_wait(tmp_path):
    mp.spawn(_prepare_job, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    start0, end0 = map(float, (tmp_path / "rank0.log").read_text().split())
    start1, _ = map(float, (tmp_path / "rank1.log").read_text().split())
    assert start1 >= end0 > start0  # CLOCK_MONOTONIC is one clock for every process of the machine


# ---------------------------------------------------------------- flow cache over several devices


def _grey_frames(n: int = 23, size: int = 24) -> np.ndarray:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (size, size), dtype=np.uint8)
    return np.stack([np.roll(base, i, axis=1) for i in range(n)])


@pytest.mark.parametrize("stride", [1, 2])
def test_flow_split_over_devices_equals_one_device(monkeypatch, stride):
    from export import dataset as dsm
    from stream.flow import TVL1, FlowConfig

    used: list[str] = []

    class Recording(TVL1):
        def __init__(self, config, device="cpu"):
            used.append(device)
            super().__init__(config, device=device)

    monkeypatch.setattr(dsm, "TVL1", Recording)
    grey, config = _grey_frames(), FlowConfig(nscales=1, warps=1, inner_iterations=5, outer_iterations=1)
    one = dsm.flow_codes(grey, stride, config, ["cpu"], batch_pairs=4)
    pairs_done: list[int] = []
    two = dsm.flow_codes(grey, stride, config, ["cpu", "cpu"], batch_pairs=4, on_batch=pairs_done.append)
    assert used == ["cpu", "cpu", "cpu"]  # one TVL1 per device (threads)
    np.testing.assert_array_equal(one, two)
    assert sum(pairs_done) == len(grey) - stride
    assert (two[:stride] == 128).all() and (two[stride:] != 128).any()  # no predecessor: zero flow


def test_flow_devices(monkeypatch):
    from export.dataset import flow_devices

    assert flow_devices("cpu") == ["cpu"] and flow_devices("cuda:1") == ["cuda:1"] and flow_devices("cpu,cpu") == ["cpu", "cpu"]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    assert flow_devices("cuda") == ["cuda:0", "cuda:1", "cuda:2"]  # "cuda" = every visible GPU
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(tr.UserError, match="no CUDA device"):
        flow_devices("cuda")


@pytest.mark.slow
def test_torchrun_export_evaluate_on_two_cpu_processes(tmp_path):
    """Cross-validation + the final model under torchrun: every fold trains on both ranks, rank 0 writes."""
    from export.synth import SynthConfig, render_video
    from stream.modelfile import load_card

    bin_dir = str(Path(sys.executable).parent)
    torchrun = shutil.which("torchrun", path=bin_dir)
    if torchrun is None or shutil.which("export-evaluate", path=bin_dir) is None:
        pytest.skip("torchrun / export-evaluate are not installed beside this Python")
    synth = render_video(SynthConfig(view="side", duration_s=8.0, fps=15.0, arenas=1, arena_size_px=64, seed=1), tmp_path / "data")
    argv = [torchrun, "--standalone", "--nproc_per_node", "2", "--no-python", "export-evaluate", "--videos", str(synth.video_path),
            "--out", str(tmp_path / "report"), "--export-model", str(tmp_path / "model"), "--folds", "2", "--cache-dir", str(tmp_path / "cache"),
            "--size-px", "32", "--frame-step", "10", "--flow-preset", "fast", "--epochs", "1", "--batch-size", "4", "--val-folds", "0",
            "--bn-recalibration-clips", "4", "--device", "cpu", "--threads", "1"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stderr[:3000]
    assert done.stdout.count("export-evaluate: wrote model") == 1 and done.stdout.count("<- chosen") == 1  # rank 0 alone reports
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics["num_clips"] == sum(f["test_clips"] for f in metrics["fold_runs"]) > 0
    assert load_card(tmp_path / "model").training["config"]["epochs"] == 1
    assert sorted(p.name for p in (tmp_path / "report" / "folds").iterdir()) == ["final", "fold00", "fold01"]


def test_cache_only_fills_the_cache_and_writes_no_model(tmp_path, capsys):
    """The step a reproducible script runs before training: decode + TV-L1 into --cache-dir, nothing else."""
    from test_checkpoint import _jhuang_folder

    clips = tmp_path / "clips"
    clips.mkdir()
    _jhuang_folder(clips)
    argv = ["--jhuang", str(clips), "--cache-only", "--cache-dir", str(tmp_path / "cache"), "--size-px", "32", "--fps", "15",
            "--flow-preset", "fast", "--device", "cpu"]  # fmt: skip
    assert tr.main(argv) == 0
    assert "export-train: cached 4 source(s)" in capsys.readouterr().out
    assert len(list((tmp_path / "cache").glob("*.flow.npy"))) == 4 and len(list((tmp_path / "cache").glob("*.frames.npy"))) == 4
    assert tr.main(argv[:2] + argv[3:]) == 2  # without --cache-only, --out is required
    assert "--out: required" in capsys.readouterr().err
