"""The few torch.distributed collectives the metrics need, as no-ops in a single process."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


def world_size() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """A summed copy of ``tensor`` over all ranks (the input is left untouched).

    NCCL only reduces CUDA tensors, and a rank that saw no batch still holds its CPU-initialised
    state, so the copy is moved to the backend's device and back.
    """
    if world_size() == 1:
        return tensor.clone()
    device = tensor.device
    if dist.get_backend() == "nccl":
        work = tensor.to(torch.device("cuda", torch.cuda.current_device()), copy=True)
    else:
        work = tensor.to("cpu", copy=True)
    dist.all_reduce(work, op=dist.ReduceOp.SUM)
    return work.to(device)


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` in rank order (just ``[obj]`` without a process group)."""
    if world_size() == 1:
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered
