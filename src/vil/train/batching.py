"""How a global batch is split over processes, accumulation steps and forward passes."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BatchPlan:
    global_batch: int  # images per optimizer step, all processes together
    world_size: int  # processes
    accumulation: int  # forward/backward passes per optimizer step in each process
    device_batch: int  # images per forward pass

    def describe(self) -> str:
        return (
            f"global batch {self.global_batch} = {self.world_size} process(es) x {self.accumulation} accumulation "
            f"step(s) x {self.device_batch} images"
        )


def plan_batches(global_batch: int, world_size: int, max_device_batch: int | None, even: bool = False) -> BatchPlan:
    """Split ``global_batch`` evenly: each process takes ``global_batch / world_size`` images per step, in as few
    forward passes of at most ``max_device_batch`` images as divide it exactly. ``even``: every pass needs an even
    number of images (batch-wise Mixup/CutMix pairs image i with image B-1-i).
    """
    if global_batch % world_size:
        raise ValueError(
            f"the global batch {global_batch} does not split evenly over {world_size} processes; "
            f"choose a batch_size divisible by {world_size}"
        )
    per_process = global_batch // world_size
    limit = min(per_process, max_device_batch or per_process)
    for device_batch in range(limit, 0, -1):
        if per_process % device_batch == 0 and (not even or device_batch % 2 == 0):
            return BatchPlan(global_batch, world_size, per_process // device_batch, device_batch)
    raise ValueError(
        f"cannot split {per_process} images per process into passes of at most {limit} images"
        + (" with an even number of images each (needed by Mixup/CutMix)" if even else "")
        + "; change batch_size or max_device_batch_size"
    )
