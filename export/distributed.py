"""Data-parallel training under ``torchrun``: who this process is, and the few collectives training needs.

``torchrun --nproc_per_node N`` starts N copies of a command with ``WORLD_SIZE``, ``RANK`` and
``LOCAL_RANK`` in the environment. ``init_from_env`` then joins them into one process group: NCCL
when the processes train on CUDA (each on ``cuda:LOCAL_RANK``), gloo on the CPU. Without torchrun
(or with one process) nothing is initialised and training is the single-process code path,
bit-identical to what it was before DDP existed.

What the training loop asks of this module:

- ``current()``: rank and world size (rank 0 of 1 outside torchrun);
- ``shard(n)``: the contiguous share of n items this rank evaluates or predicts;
- ``all_reduce_sum`` / ``gather_rows`` / ``all_gather_plain`` / ``broadcast_tensors`` / ``barrier``;
- ``synced_batchnorm(model)``: BatchNorm statistics computed over the GLOBAL batch. PyTorch's
  ``SyncBatchNorm`` refuses CPU tensors, and without synchronised statistics two processes with
  4 clips each do not train what one process with 8 clips trains. Ours works on CPU (gloo) and
  CUDA (NCCL), so a 2-process run equals a 1-process run with the same global batch.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from stream.errors import UserError

__all__ = [
    "Dist",
    "current",
    "init_from_env",
    "shard",
    "shard_batches",
    "all_reduce_sum",
    "gather_rows",
    "all_gather_plain",
    "broadcast_tensors",
    "barrier",
    "long_wait_barrier",
    "synced_batchnorm",
]

log = logging.getLogger(__name__)

LONG_WAIT_TIMEOUT_S = 48 * 3600  # ranks wait this long for rank 0 to cache a large dataset's flow (hours on one GPU)


@dataclass(frozen=True)
class Dist:
    """This process's place in a data-parallel job (rank 0 of 1 when there is no job)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """The one process that writes checkpoints, logs, models and reports."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def current() -> Dist:
    if dist.is_available() and dist.is_initialized():
        return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    return Dist()


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        return int(text)
    except ValueError:
        raise UserError(f"environment variable {name}={text!r} is not an integer (set by torchrun)") from None


def init_from_env(device: str) -> Dist:
    """Join the torchrun job described by the environment, once; a no-op outside torchrun.

    ``device`` is the ``--device`` argument: CUDA (``auto`` with a GPU, or ``cuda``) means NCCL and
    ``cuda:LOCAL_RANK``; ``cpu`` means gloo. ``cuda:N`` cannot be honoured by N processes at once.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    if world_size <= 1 or (dist.is_available() and dist.is_initialized()):
        return current()
    if not dist.is_available():
        raise UserError("this PyTorch build has no torch.distributed; run without torchrun")
    local_rank = _env_int("LOCAL_RANK", 0)
    if device.startswith("cuda:"):
        raise UserError(f"--device {device}: under torchrun each process uses cuda:LOCAL_RANK; pass --device cuda")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        if not torch.cuda.is_available():
            raise UserError("--device cuda: this machine has no CUDA device; use --device cpu")
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"torchrun started more processes per node than the {torch.cuda.device_count()} visible GPUs; "
                            "use --nproc_per_node <= the GPU count")  # fmt: skip
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    atexit.register(_shutdown)
    here = current()
    log.info("joined a %d-process %s job as rank %d", here.world_size, dist.get_backend(), here.rank)
    return here


def _shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def shard(n: int, here: Dist | None = None) -> np.ndarray:
    """Indices ``0..n-1`` this rank takes: contiguous, sizes differ by at most one, order kept."""
    here = here or current()
    return np.array_split(np.arange(n), here.world_size)[here.rank]


def shard_batches(n: int, batch_size: int, here: Dist | None = None) -> np.ndarray:
    """Indices this rank takes when ``0..n-1`` are read in batches of ``batch_size``: whole batches,
    dealt round-robin. A loader over them with the same batch size makes exactly the batches a
    single process makes, so per-batch means (a class-weighted loss) sum to the same total."""
    here = here or current()
    starts = range(here.rank * batch_size, n, here.world_size * batch_size)
    parts = [np.arange(s, min(s + batch_size, n)) for s in starts]
    return np.concatenate(parts) if parts else np.arange(0)  # fewer batches than ranks: some ranks get none


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Element-wise sum over ranks (the tensor itself outside a job)."""
    if not current().active:
        return values
    out = values.detach().to(_collective_device(), copy=True)
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.to(values.device)


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def gather_rows(local: np.ndarray) -> np.ndarray:
    """Concatenate every rank's rows in rank order; each rank gets the whole (shards of ``shard``)."""
    if not current().active:
        return local
    dev = _collective_device()
    count = torch.tensor([local.shape[0]], dtype=torch.int64, device=dev)
    counts = [torch.zeros_like(count) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, count)
    counts_i = [int(c.item()) for c in counts]
    padded = np.zeros((max(counts_i), *local.shape[1:]), dtype=local.dtype)
    padded[: local.shape[0]] = local
    mine = torch.from_numpy(padded).to(dev)
    parts = [torch.empty_like(mine) for _ in counts_i]
    dist.all_gather(parts, mine)
    return np.concatenate([p[:c].cpu().numpy() for p, c in zip(parts, counts_i)])


def all_gather_plain(value: Any) -> list[Any]:
    """Every rank's ``value`` (plain JSON-able data only: lists, numbers, strings) in rank order."""
    if not current().active:
        return [value]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)  # pickles between our own processes only; nothing read from disk
    return out


def broadcast_tensors(tensors: list[torch.Tensor], src: int = 0) -> None:
    """Overwrite every rank's ``tensors`` (in place) with rank ``src``'s."""
    if not current().active:
        return
    dev = _collective_device()
    for t in tensors:
        buf = t.detach().to(dev)
        dist.broadcast(buf, src=src)
        with torch.no_grad():
            t.copy_(buf)


def barrier() -> None:
    if current().active:
        dist.barrier()


@contextlib.contextmanager
def long_wait_barrier() -> Iterator[Dist]:
    """``with long_wait_barrier() as here:`` -- the body runs on rank 0 only while the others wait.

    For work that must happen once and may take hours (decoding videos, caching flow): the
    default collective timeout (10-30 min) would kill the waiting ranks, so the wait runs on a
    separate gloo group with ``LONG_WAIT_TIMEOUT_S``. Other ranks run the body after rank 0 (with
    nothing left to compute, it only opens the cache).
    """
    here = current()
    if not here.active:
        yield here
        return
    group = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=LONG_WAIT_TIMEOUT_S))
    done = torch.zeros(1, dtype=torch.int64)  # rank 0 sends 1 when the body succeeded, 0 when it failed
    if here.is_main:
        try:
            yield here
            done.fill_(1)
        finally:
            dist.broadcast(done, src=0, group=group)  # sent on failure too, so the others do not hang
        return
    dist.broadcast(done, src=0, group=group)
    if not int(done.item()):
        raise UserError("rank 0 failed while preparing the data (its message says why); this rank stops too")
    yield here


# -- BatchNorm over the global batch ------------------------------------------------------------


class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) with a gradient: every rank's input feeds every rank's output, so the
    backward pass sums the output gradients of all ranks (with DDP's averaging of parameter
    gradients, each rank then holds the gradient of the global mean loss)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out = x.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out = grad.contiguous().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out


class _GlobalBatchStats:
    """Mixin for a BatchNorm class: in training mode, mean and variance come from all ranks' clips.

    Two passes (sum -> mean, then sum of squared deviations -> variance), each one differentiable
    all-reduce (``_SumOverRanks``). Running statistics are updated as ``_BatchNorm`` does
    (unbiased variance), identically on every rank.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if not (self.training and current().active):
            return super().forward(x)  # type: ignore[misc]
        all_reduce = _SumOverRanks.apply

        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        xf = x.float()
        count = xf.new_tensor([float(xf.numel() // xf.shape[1])])
        total = all_reduce(torch.cat([xf.sum(dims), count]))
        n = total[-1]
        mean = total[:-1] / n
        centred = xf - mean.view(shape)
        var = all_reduce(centred.square().sum(dims)) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - factor).add_(mean.detach(), alpha=factor)
                self.running_var.mul_(1 - factor).add_(var.detach() * (n / (n - 1)).detach(), alpha=factor)
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


_SYNCED_CLASSES: dict[type, type] = {}


def _synced_class(cls: type) -> type:
    if cls not in _SYNCED_CLASSES:
        _SYNCED_CLASSES[cls] = type(f"GlobalBatch{cls.__name__}", (_GlobalBatchStats, cls), {"__module__": __name__})
    return _SYNCED_CLASSES[cls]


@contextlib.contextmanager
def synced_batchnorm(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, the model's BatchNorm layers use global-batch statistics (in a job only).

    The layers keep their identity, parameters, buffers and state-dict keys: only their class is
    swapped for a subclass with a synchronising ``forward``, and swapped back on the way out, so
    the optimizer, checkpoints and the caller's model object are untouched.
    """
    swapped: list[tuple[nn.Module, type]] = []
    if current().active:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(m, (_GlobalBatchStats, nn.SyncBatchNorm)):
                swapped.append((m, type(m)))
                m.__class__ = _synced_class(type(m))
    try:
        yield model
    finally:
        for m, cls in swapped:
            m.__class__ = cls
