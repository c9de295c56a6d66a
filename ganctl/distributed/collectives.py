"""The collectives the engine and evaluation need (the control group's vote and barrier, rank
0's objects and weights on every rank, gradients and statistics summed or averaged, the fakes'
features merged), each a no-op for one process, and a dead peer's failure in any of them as one
RankFailed line.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ganctl.distributed.world import WORLD, RankFailed
from ganctl.errors import ConfigError, GanctlError

_SOURCE = re.compile(r"\[[^\]]*\.(?:cc|cpp|h):\d+\]\s*")  # "[/__w/.../pair.cc:561] " in torch's texts


def _failed(e: BaseException) -> RankFailed:
    said = _SOURCE.sub("", " ".join(str(e).split()))
    first = said.split(". ")[0][:160]  # its first sentence: "Connection closed by peer [...]:48797"
    return RankFailed(f"rank {WORLD.rank} of {WORLD.size}: another rank died or stopped answering "
                      f"({type(e).__name__}: {first}); this one stops too; a run that had begun "
                      "keeps its last checkpoint, and ganctl resume continues it once every process "
                      "is back", peer=True)


@contextmanager
def collective() -> Iterator[None]:
    """A collective's failure (a dead peer) as RankFailed."""
    try:
        yield
    except (RuntimeError, OSError) as e:
        if WORLD.active and not isinstance(e, GanctlError):
            raise _failed(e) from None
        raise


def agree(*values: int) -> list[int]:
    """The largest of each value over the ranks (0 and 1 flags: any rank's 1 wins); one
    CPU all-reduce on the control group."""
    if not WORLD.active:
        return list(values)
    import torch.distributed as dist  # noqa: PLC0415

    t = torch.tensor(values, dtype=torch.int64)
    with collective():
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=WORLD.control)
    return [int(v) for v in t.tolist()]


def barrier() -> None:
    """Every rank waits here for the others (rank 0 writing or evaluating)."""
    if WORLD.active:
        import torch.distributed as dist  # noqa: PLC0415

        with collective():
            dist.barrier(group=WORLD.control)


def broadcast_object(value: Any) -> Any:
    """Rank 0's value on every rank."""
    if not WORLD.active:
        return value
    import torch.distributed as dist  # noqa: PLC0415

    box = [value]
    with collective():
        dist.broadcast_object_list(box, src=0, group=WORLD.control)
    return box[0]


@contextmanager
def local_first() -> Iterator[None]:
    """The block runs on each node's local rank 0 first (a decode cache built once per node),
    then on the others, which find its work done."""
    if WORLD.active and WORLD.local_rank != 0:
        barrier()
    yield
    if WORLD.active and WORLD.local_rank == 0:
        barrier()


def broadcast_module(net: nn.Module) -> None:
    """Rank 0's parameters and buffers on every rank."""
    if not WORLD.active:
        return
    import torch.distributed as dist  # noqa: PLC0415

    with collective(), torch.no_grad():
        for t in [*net.parameters(), *net.buffers()]:
            dist.broadcast(t.data, src=0)


def sum_over_ranks(tensors: list[torch.Tensor]) -> None:
    """Each tensor summed over the ranks, in place, in one all-reduce (no-op for one process)."""
    if not WORLD.active or not tensors:
        return
    import torch.distributed as dist  # noqa: PLC0415

    flat = torch.cat([t.reshape(-1) for t in tensors])
    with collective():
        dist.all_reduce(flat)
    offset = 0
    for t in tensors:
        t.copy_(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()


def average_gradients(net: nn.Module) -> None:
    """Each trainable parameter's gradient, averaged over the ranks, in one all-reduce (a
    parameter without a gradient on this rank counts as zeros, so every rank sends the same
    shapes)."""
    if not WORLD.active:
        return
    import torch.distributed as dist  # noqa: PLC0415

    params = [p for p in net.parameters() if p.requires_grad]
    if not params:
        return
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                      for p in params])
    with collective():
        dist.all_reduce(flat)
    flat.div_(WORLD.size)
    offset = 0
    for p in params:
        n = p.numel()
        piece = flat[offset:offset + n].view_as(p)
        if p.grad is None:
            p.grad = piece.clone()
        else:
            p.grad.copy_(piece)
        offset += n


def share(count: int) -> tuple[int, int]:
    """This rank's contiguous block of range(count): the seeds of the fakes it evaluates."""
    size, rank = WORLD.size, WORLD.rank
    return count * rank // size, count * (rank + 1) // size


def merge_features(acc: Any) -> Any:
    """Every rank's feature Accumulator (ganctl.metrics.stats), summed on rank 0, which gets
    the merged one (its kept features in seed order: rank 0's block first); None on the other
    ranks. One process: acc itself."""
    if not WORLD.active:
        return acc
    import torch.distributed as dist  # noqa: PLC0415

    with collective():
        counts: list[Any] = [None] * WORLD.size
        dist.all_gather_object(counts, acc.count, group=WORLD.control)
        if not all(counts):  # a rank without fakes: every rank sees it and stops alike
            raise ConfigError(f"--eval-num {sum(counts)} leaves a process without fakes; "
                              f"evaluate at least {WORLD.size} images")
        for t in (acc.total, acc.outer):
            dist.reduce(t, dst=0)
        kept: list[Any] | None = [None] * WORLD.size if WORLD.writer else None
        dist.gather_object(torch.cat(acc.kept) if acc.kept else None, kept, dst=0,
                           group=WORLD.control)
    if not WORLD.writer:
        return None
    assert kept is not None
    rows = torch.cat([k for k in kept if k is not None])[:acc.keep]
    acc.kept, acc._kept_rows, acc.count = [rows], len(rows), sum(counts)
    return acc


def split_batch(batch_size: int) -> int:
    """This rank's share of the global batch; an error when it does not divide."""
    if batch_size % WORLD.size:
        raise ConfigError(f"--batch-size {batch_size} is the global batch and must divide among "
                          f"the {WORLD.size} processes; use a multiple of {WORLD.size}")
    return batch_size // WORLD.size
