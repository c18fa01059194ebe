"""TrainConfig: every setting of a training run, validated, overridable from the command line, saved with the run."""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field

from ..data.preprocessing import AUGMENTATIONS
from ..models.config import ViLConfig
from ..precision import check_precision
from ..utils.dict_config import DictConfig

LR_REFERENCE_BATCH = 1024  # lr is given per 1024 images and scaled linearly with the global batch (as the paper)

# Settings that may change when a run is resumed: they change how the run executes, not what it computes
# (up to float rounding), e.g. a smaller per-device batch after running out of memory.
RUNTIME_FIELDS = ("max_device_batch_size", "precision", "compile", "grad_checkpointing", "workers", "threads", "device")


@dataclass(frozen=True)
class TrainConfig(DictConfig):
    """A training run. Build one from a recipe (``vil.train.recipes``) and override any field."""

    recipe: str = "custom"
    # --- model
    model: str | None = None  # a variant name (vil.list_models()); None: the ViLConfig defaults or the --init file's
    model_args: dict = field(default_factory=dict)  # ViLConfig overrides, e.g. {"dim": 64, "drop_path_rate": 0.05}
    init: str | None = None  # start from these weights: ours (.safetensors) or an official checkpoint (.th)
    # --- data
    data: str | None = None  # image folder with train/<class>/ and val/<class>/; None: the embedded digits
    img_size: int = 224
    augmentation: str = "paper"  # "paper" (RRC + flip + 3-Augment + ColorJitter), "translate", "none"
    crop_scale: tuple[float, float] = (0.08, 1.0)
    hflip: float = 0.5
    color_jitter: float = 0.3
    mixup: float = 0.8  # Mixup alpha; 0 turns Mixup off
    cutmix: float = 1.0  # CutMix alpha; 0 turns CutMix off
    mix_prob: float = 1.0  # probability that a batch is mixed at all
    mix_switch_prob: float = 0.5  # probability of CutMix instead of Mixup for a mixed batch (one per batch)
    label_smoothing: float = 0.0
    # --- optimisation
    epochs: int = 400
    warmup_epochs: float = 5.0
    batch_size: int = 1024  # global batch: all devices and accumulation steps together
    lr: float = 1e-3  # per 1024 images; the run uses lr * batch_size / 1024
    min_lr: float = 1e-6  # the cosine schedule ends here
    warmup_lr: float = 1e-6  # the linear warm-up starts here
    weight_decay: float = 0.05  # not on biases, norms, the position embedding and other 1-d parameters
    betas: tuple[float, float] = (0.9, 0.999)
    clip_grad: float | None = 1.0  # max global gradient norm; None: no clipping
    layer_decay: float | None = None  # layer-wise lr decay factor (two mLSTM blocks per layer); None: off
    ema_decay: float | None = None  # keep an exponential moving average of the weights; None: off
    seed: int = 0
    # --- runtime (may change on --resume)
    max_device_batch_size: int | None = None  # at most this many images per forward pass; accumulation does the rest
    precision: str = "auto"  # auto: bf16 autocast on GPUs that support it, fp16 on older GPUs, fp32 on CPU
    compile: bool = False  # torch.compile the model
    grad_checkpointing: bool = False  # recompute activations in the backward pass to save memory
    workers: int = 8  # data loader processes per device (0: load in the training process)
    threads: int | None = None  # CPU threads for torch (None: torch's default)
    device: str = "auto"  # auto: cuda if available, else cpu

    def __post_init__(self):
        for name, hint in typing.get_type_hints(type(self)).items():
            object.__setattr__(self, name, _coerce(getattr(self, name), hint, name))
        self._validate()

    def _validate(self) -> None:
        _positive("img_size", self.img_size)
        _positive("epochs", self.epochs)
        _positive("batch_size", self.batch_size)
        if self.max_device_batch_size is not None:
            _positive("max_device_batch_size", self.max_device_batch_size)
        if self.threads is not None:
            _positive("threads", self.threads)
        if self.augmentation not in AUGMENTATIONS:
            raise ValueError(f"unknown augmentation {self.augmentation!r}; expected one of {list(AUGMENTATIONS)}")
        check_precision(self.precision)
        for name in ("lr", "min_lr", "warmup_lr", "weight_decay", "mixup", "cutmix", "warmup_epochs"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.lr == 0:
            raise ValueError("lr must be > 0")
        if self.warmup_epochs >= self.epochs and self.warmup_epochs > 0:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) must be fewer than epochs ({self.epochs})")
        for name in ("hflip", "mix_prob", "mix_switch_prob", "label_smoothing", "color_jitter"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)!r}")
        if not 0.0 < self.crop_scale[0] <= self.crop_scale[1] <= 1.0:
            raise ValueError(f"crop_scale must be (min, max) with 0 < min <= max <= 1, got {self.crop_scale!r}")
        if any(not 0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be in [0, 1), got {self.betas!r}")
        for name in ("clip_grad", "layer_decay", "ema_decay"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0 or null (off), got {value!r}")
        if self.layer_decay is not None and self.layer_decay > 1:
            raise ValueError(f"layer_decay must be in (0, 1], got {self.layer_decay!r}")
        if self.ema_decay is not None and self.ema_decay >= 1:
            raise ValueError(f"ema_decay must be in (0, 1), got {self.ema_decay!r}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers!r}")
        try:
            ViLConfig.check_fields(self.model_args)
        except ValueError as error:
            raise ValueError(f"model_args: {error}") from None

    @property
    def mixing(self) -> bool:
        """Whether batches are mixed (Mixup/CutMix), which makes the targets soft."""
        return self.mix_prob > 0 and (self.mixup > 0 or self.cutmix > 0)

    def scaled_lr(self) -> float:
        """The peak learning rate of the run: lr per 1024 images, scaled linearly with the global batch."""
        return self.lr * self.batch_size / LR_REFERENCE_BATCH

    def with_overrides(self, assignments: list[str], **changes) -> TrainConfig:
        """Apply ``key=value`` strings (value as JSON, else a plain string) on top of ``changes``, validating once;
        ``model_args.KEY=value`` sets one model override, e.g.
        ``["epochs=30", "model_args.dim=128", "clip_grad=null", "betas=[0.9,0.95]"]``.
        """
        changes = dict(changes)
        model_args = dict(self.model_args)
        for key, value in parse_assignments(assignments, [f.name for f in dataclasses.fields(self)]):
            if key.startswith("model_args."):
                model_args[key.removeprefix("model_args.")] = value
            else:
                changes[key] = value
        if model_args != self.model_args:
            changes["model_args"] = model_args
        return self.replace(**changes)


def parse_assignments(assignments: list[str], settings: list[str]) -> list[tuple[str, object]]:
    """(key, value) of each ``KEY=VALUE`` string (value as :func:`parse_value` reads it); a key must be one of
    ``settings`` or ``model_args.<field>``, else a one-line error that lists them."""
    known = sorted(settings)
    parsed = []
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"expected KEY=VALUE, got {assignment!r}")
        if key not in known and not key.startswith("model_args."):
            raise ValueError(f"unknown setting {key!r}; settings: {', '.join(known)} (and model_args.<field>)")
        parsed.append((key, parse_value(text)))
    return parsed


def parse_value(text: str):
    """A command-line value: JSON if it parses (numbers, true/false, null, lists, objects), else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _positive(name: str, value) -> None:
    if value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _coerce(value, hint, name: str):
    """Check ``value`` against a field's type hint; ints are accepted for floats and lists for tuples."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], name)
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an int, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{name} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"{name} must be a string, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise ValueError(f"{name} must be a list of {len(args)} numbers, got {value!r}")
        return tuple(_coerce(v, a, name) for v, a in zip(value, args, strict=True))
    if hint is dict or origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{name} must be a JSON object, got {value!r}")
        return dict(value)
    raise TypeError(f"no coercion for field {name} of type {hint}")  # internal: a field with an unhandled type
