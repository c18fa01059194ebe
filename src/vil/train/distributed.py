"""Data-parallel training across processes and machines: set up from torchrun's environment, or a single process.

Under ``torchrun`` (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT set) every process trains a shard of each
global batch with DistributedDataParallel: NCCL on GPUs, gloo on CPUs; multi-node runs use torchrun's rendezvous.
Rank 0 alone prints, writes files and checkpoints.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def is_main_process() -> bool:
    """Whether this process is rank 0 of a torchrun launch, or not launched by torchrun (before any setup)."""
    return int(os.environ.get("RANK", "0")) == 0


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """ "auto": this process's GPU if there is one, else the CPU; otherwise the named device."""
    if name == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"unknown device {name!r}: {error}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but CUDA is not available; use --device cpu (or auto)")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    return device


def setup(device_name: str = "auto") -> DistEnv:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); a plain single process otherwise."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistEnv(device=resolve_device(device_name))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    logger.info("process %d of %d on %s (%s)", rank, world_size, device, dist.get_backend())
    return DistEnv(rank=rank, world_size=world_size, device=device)


def teardown(env: DistEnv) -> None:
    if env.distributed and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def training_process(threads: int | None, device_name: str) -> Iterator[DistEnv]:
    """A training run's process: torch's thread count set to ``threads`` (None: left as it is) and torchrun's
    process group joined if there is one (:func:`setup`); both undone afterwards."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    env = setup(device_name)
    try:
        yield env
    finally:
        teardown(env)
        torch.set_num_threads(before)


def all_reduce_sum(values: list[float], env: DistEnv) -> list[float]:
    """Sum a few numbers over all processes (float64, so counts stay exact)."""
    if not env.distributed:
        return list(values)
    device = env.device if env.device.type == "cuda" else torch.device("cpu")
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def all_gather_objects(obj, env: DistEnv) -> list:
    """Every process's ``obj`` (picklable), in rank order."""
    if not env.distributed:
        return [obj]
    gathered = [None] * env.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


class ShardedEvalSampler(Sampler[int]):
    """Indices rank, rank + world_size, ... of the dataset: every sample exactly once over all processes (unlike
    DistributedSampler, which pads with repeats), so summed counts give exact accuracies.
    """

    def __init__(self, length: int, rank: int, world_size: int):
        self.indices = range(rank, length, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
