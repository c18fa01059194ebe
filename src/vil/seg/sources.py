"""Where a segmentation run's data comes from: the embedded digit scenes (written into the run directory) or a
directory in the ADE20K layout; and the sampling that makes a run resumable at any iteration."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset, Sampler

from ..data.folder import BadFile
from .classes import CLASSES_FILE, dataset_classes
from .data import SegmentationDataset
from .digit_scenes import write_digit_scenes
from .train_config import SegTrainConfig
from .transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform, train_transform

DIGIT_SCENES = "digit_scenes"
SCENES_DIR = "digit_scenes"  # inside the run directory
# The digit scenes are grey on black: normalise around their own statistics instead of ImageNet's.
SCENES_MEAN, SCENES_STD = (0.1, 0.1, 0.1), (0.25, 0.25, 0.25)


@dataclass
class SegData:
    train: Dataset
    val: Dataset
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    name: str  # "digit_scenes" or the data directory
    root: Path
    skipped: list[BadFile]


def build_seg_data(config: SegTrainConfig, run_dir: Path) -> SegData:
    if config.data is None:
        root = run_dir / SCENES_DIR
        if not (root / CLASSES_FILE).is_file():  # written last: a complete set (the same on every call)
            write_digit_scenes(root, *config.digit_scenes, canvas=config.crop_size, seed=0)
        name, mean, std = DIGIT_SCENES, SCENES_MEAN, SCENES_STD
    else:
        root, name, mean, std = Path(config.data).expanduser(), str(config.data), IMAGENET_MEAN, IMAGENET_STD
    classes = dataset_classes(root, config.num_classes)
    augment = train_transform(
        config.crop_size, config.scale, config.ratio_range, config.cat_max_ratio, config.hflip, config.color_jitter,
        mean, std,
    )  # fmt: skip
    train = SegmentationDataset(root, "train", classes, augment)
    val = SegmentationDataset(root, "val", classes, eval_transform(config.scale, mean, std))
    return SegData(train, val, classes, mean, std, name, root, train.skipped + val.skipped)


class StepSampler(Sampler):
    """This process's share of the global batches of optimizer steps ``start``, ``start + 1``, ..., ``steps - 1``.

    Step s takes the (s mod n)-th global batch of the permutation for pass s // n over the data (n whole batches
    per pass; a permutation per pass from the seed). It yields (index, position) pairs: the position of the draw in
    the whole run, from which the sample's augmentation is seeded, so that a run resumed at any step sees the same
    batches and augmentations as one that never stopped, with any number of loader workers.
    """

    def __init__(self, size: int, global_batch: int, rank: int, world_size: int, seed: int, start: int, steps: int):
        if size < global_batch:
            raise ValueError(f"the training set has {size} images, fewer than one global batch of {global_batch}")
        self.size, self.global_batch, self.rank, self.seed = size, global_batch, rank, seed
        self.per_process = global_batch // world_size
        self.start, self.steps = start, steps

    def __iter__(self) -> Iterator[tuple[int, int]]:
        per_pass = self.size // self.global_batch
        permutation, permutation_pass = None, -1
        for step in range(self.start, self.steps):
            data_pass, batch = divmod(step, per_pass)
            if data_pass != permutation_pass:
                generator = torch.Generator().manual_seed(self.seed * 100_003 + data_pass)
                permutation, permutation_pass = torch.randperm(self.size, generator=generator), data_pass
            first = batch * self.global_batch + self.rank * self.per_process
            for offset in range(self.per_process):
                yield int(permutation[first + offset]), step * self.global_batch + self.rank * self.per_process + offset

    def __len__(self) -> int:
        return (self.steps - self.start) * self.per_process


class SeededSamples(Dataset):
    """A dataset indexed by (index, position): the sample's random augmentation is seeded from (seed, position)."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        index, position = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed * 1_000_003 + position)
            return self.dataset[index]
