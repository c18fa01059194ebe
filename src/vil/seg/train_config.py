"""SegTrainConfig: every setting of a segmentation run, validated, overridable (``key=value``), saved with the run."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field

from ..precision import check_precision
from ..train.config import _coerce as coerce_field
from ..train.config import parse_assignments
from ..utils.dict_config import DictConfig

LR_REFERENCE_BATCH = 16  # lr is given per 16 images and scaled linearly with the global batch (official configs)
EVAL_MODES = ("whole", "slide")
RELEASED = "released"  # init: the backbone's released ImageNet-1K classification weights
# Settings that may change on --resume: how the run executes, not what it computes.
RUNTIME_FIELDS = ("max_device_batch_size", "precision", "compile", "grad_checkpointing", "workers", "threads", "device")


@dataclass(frozen=True)
class SegTrainConfig(DictConfig):
    recipe: str = "custom"
    # --- model (vil.create_segmenter)
    model: str = "vil2_tiny_patch16_224"  # backbone: a ViL variant or a timm model with forward_intermediates
    model_args: dict = field(default_factory=dict)  # segmenter settings and backbone overrides, e.g. {"channels": 64}
    init: str | None = None  # backbone weights: "released", a classification file or run directory; None: random
    # --- data
    data: str | None = None  # ADE20K layout directory; None: the embedded digit scenes
    num_classes: int | None = None  # None: the data's classes.txt, else ADE20K's 150
    crop_size: int = 512
    scale: tuple[int, int] = (2048, 512)  # random resize: fit (long, short) side times a ratio from ratio_range
    ratio_range: tuple[float, float] = (0.5, 2.0)
    cat_max_ratio: float = 0.75
    hflip: float = 0.5
    color_jitter: tuple[float, float, float, float] = (0.125, 0.5, 0.5, 0.1)  # brightness, contrast, saturation, hue
    # --- optimisation (iterations = optimizer steps)
    iters: int = 160_000
    warmup_iters: int = 1_500
    batch_size: int = 16  # global batch: all devices and accumulation steps together
    lr: float = 5e-4  # per 16 images; the run uses lr * batch_size / 16
    min_lr: float = 1e-6
    warmup_lr: float = 1e-6
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    clip_grad: float | None = None
    layer_decay: float | None = 0.65  # two mLSTM blocks per layer; None: off
    aux_weight: float = 0.4
    seed: int = 0
    # --- evaluation and files
    eval_every: int = 16_000  # iterations between validations and checkpoints (and at the end)
    eval_mode: str = "slide"  # "whole" image or "slide" windows of crop_size at eval_stride
    eval_stride: int = 341
    eval_batch_size: int = 1  # images per evaluation pass (images of one batch must share a size)
    examples: int = 0  # prediction pictures of this many validation images written at the end
    digit_scenes: tuple[int, int] = (4000, 500)  # training and held-out scenes of the embedded data
    # --- runtime (may change on --resume)
    max_device_batch_size: int | None = None
    precision: str = "auto"
    compile: bool = False
    grad_checkpointing: bool = False
    workers: int = 8
    threads: int | None = None
    device: str = "auto"

    def __post_init__(self):
        for name, hint in typing.get_type_hints(type(self)).items():
            object.__setattr__(self, name, coerce_field(getattr(self, name), hint, name))
        self._validate()

    def _validate(self) -> None:
        for name in ("crop_size", "iters", "batch_size", "eval_every", "eval_stride", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive int, got {getattr(self, name)!r}")
        if not 0 <= self.warmup_iters < self.iters:
            raise ValueError(f"warmup_iters ({self.warmup_iters}) must be in [0, iters = {self.iters})")
        if self.num_classes is not None and self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if self.eval_mode not in EVAL_MODES:
            raise ValueError(f"unknown eval_mode {self.eval_mode!r}; expected one of {list(EVAL_MODES)}")
        check_precision(self.precision)
        if self.lr <= 0 or self.min_lr < 0 or self.warmup_lr < 0 or self.weight_decay < 0 or self.aux_weight < 0:
            raise ValueError("lr must be > 0 and min_lr, warmup_lr, weight_decay, aux_weight >= 0")
        for name in ("hflip", "cat_max_ratio"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)!r}")
        if not 0 < self.ratio_range[0] <= self.ratio_range[1]:
            raise ValueError(f"ratio_range must be (min, max) with 0 < min <= max, got {self.ratio_range!r}")
        if self.layer_decay is not None and not 0 < self.layer_decay <= 1:
            raise ValueError(f"layer_decay must be in (0, 1] or null (off), got {self.layer_decay!r}")
        if self.clip_grad is not None and self.clip_grad <= 0:
            raise ValueError(f"clip_grad must be > 0 or null (off), got {self.clip_grad!r}")
        if self.workers < 0 or self.examples < 0 or min(self.digit_scenes) < 1:
            raise ValueError("workers and examples must be >= 0, digit_scenes two positive counts")

    def scaled_lr(self) -> float:
        return self.lr * self.batch_size / LR_REFERENCE_BATCH

    def with_overrides(self, assignments: list[str], **changes) -> SegTrainConfig:
        """``key=value`` strings (JSON values) on top of ``changes``; ``model_args.KEY=value`` sets one model
        setting."""
        changes, model_args = dict(changes), dict(changes.pop("model_args", self.model_args))
        for key, value in parse_assignments(assignments, [f.name for f in dataclasses.fields(self)]):
            if key.startswith("model_args."):
                model_args[key.removeprefix("model_args.")] = value
            elif key == "model_args":
                model_args = coerce_field(value, dict, key)
            else:
                changes[key] = value
        return self.replace(**changes, model_args=model_args)
