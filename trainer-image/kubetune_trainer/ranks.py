"""What the ranks of a run agree on: collectives every rank calls at the same point, and that
answer for this process alone outside a process group."""

from __future__ import annotations

import torch
import torch.distributed as dist


def _grouped() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if _grouped():
        dist.barrier()


def any_rank(flag: bool) -> bool:
    """Whether `flag` holds on any rank: one all-reduce of a one-element tensor (on the
    current GPU under NCCL), which every rank waits for, so it is also a barrier."""
    if not _grouped():
        return flag
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    shared = torch.tensor([int(flag)], device=device)
    dist.all_reduce(shared, op=dist.ReduceOp.MAX)
    return bool(shared.item())


def every_rank(flag: bool) -> bool:
    """Whether `flag` holds on every rank (also a barrier)."""
    return not any_rank(not flag)
