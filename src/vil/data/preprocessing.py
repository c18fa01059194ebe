"""How images become model inputs: the preprocessing saved with every trained model, and the training augmentations.

``Preprocessing`` travels with the weights (safetensors metadata), so ``vil eval`` and ``vil predict`` feed a model
exactly what it saw in evaluation during training: the official eval transform (bicubic resize of the short side to
``img_size / crop_pct``, center crop to ``img_size``, normalisation with the dataset's mean and std).
"""

from __future__ import annotations

from dataclasses import dataclass

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
from torchvision import transforms as T

from ..utils.dict_config import DictConfig

AUGMENTATIONS = ("paper", "translate", "none")


@dataclass(frozen=True)
class Preprocessing(DictConfig):
    """Eval-time preprocessing of a model: image size, channels, normalisation, resize interpolation and crop."""

    img_size: int = 224
    in_chans: int = 3
    mean: tuple[float, ...] = IMAGENET_DEFAULT_MEAN
    std: tuple[float, ...] = IMAGENET_DEFAULT_STD
    interpolation: str = "bicubic"
    crop_pct: float = 1.0

    def __post_init__(self):
        if self.in_chans not in (1, 3):
            raise ValueError(f"in_chans must be 1 (grey) or 3 (RGB) for image files, got {self.in_chans!r}")
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if len(self.mean) != self.in_chans or len(self.std) != self.in_chans:
            raise ValueError(f"mean {self.mean} and std {self.std} need one value per channel ({self.in_chans})")
        if not 0.0 < self.crop_pct <= 1.0:
            raise ValueError(f"crop_pct must be in (0, 1], got {self.crop_pct!r}")

    @property
    def pil_mode(self) -> str:
        return "L" if self.in_chans == 1 else "RGB"


class ConvertMode:
    """PIL image -> PIL image in ``mode`` ("L" or "RGB"); a class, not a lambda, so loader workers can pickle it."""

    def __init__(self, mode: str):
        self.mode = mode

    def __call__(self, image):
        return image.convert(self.mode)

    def __repr__(self) -> str:
        return f"ConvertMode({self.mode!r})"


def eval_transform(pre: Preprocessing, source: str = "pil"):
    """The official evaluation transform (``eval.py`` of the official code) for PIL images (source "pil"), or the
    normalisation alone for (C, H, W) tensors in [0, 1] already at the model's size (source "tensor": the digits).
    """
    if source == "tensor":
        return T.Normalize(pre.mean, pre.std)
    return T.Compose([*_resize_and_crop(pre), T.ToTensor(), T.Normalize(pre.mean, pre.std)])


def train_transform(
    augmentation: str,
    pre: Preprocessing,
    source: str = "pil",
    crop_scale=(0.08, 1.0),
    hflip: float = 0.5,
    color_jitter: float = 0.3,
    max_shift: int = 1,
):
    """The training transform of an augmentation recipe:

    - "paper": RandomResizedCrop(crop_scale, bicubic), horizontal flip, 3-Augment (one of grey / solarize / Gaussian
      blur sigma 0.1-2: timm's "3a" policy), ColorJitter(b = c = s = color_jitter, hue 0), normalisation; built by
      timm, in the official order. Image files only.
    - "translate": shift by up to ``max_shift`` pixels (zero padding), no flips: for digits and other small images.
    - "none": the evaluation transform.
    """
    if augmentation not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {augmentation!r}; expected one of {list(AUGMENTATIONS)}")
    if augmentation == "none":
        return eval_transform(pre, source)
    if augmentation == "translate":
        shift = T.RandomCrop(pre.img_size, padding=max_shift, fill=0)
        if source == "tensor":
            return T.Compose([shift, T.Normalize(pre.mean, pre.std)])
        return T.Compose([*_resize_and_crop(pre), shift, T.ToTensor(), T.Normalize(pre.mean, pre.std)])
    if source == "tensor":
        raise ValueError(
            "augmentation 'paper' (RandomResizedCrop, 3-Augment, ColorJitter) needs image files (--data DIR); "
            "the embedded digits train with 'translate' or 'none'"
        )
    transform = create_transform(
        pre.img_size,
        is_training=True,
        scale=tuple(crop_scale),
        hflip=hflip,
        color_jitter=color_jitter if color_jitter else None,
        auto_augment="3a",
        interpolation=pre.interpolation,
        mean=pre.mean,
        std=pre.std,
    )
    return T.Compose([ConvertMode(pre.pil_mode), transform])


def _resize_and_crop(pre: Preprocessing) -> list:
    return [
        ConvertMode(pre.pil_mode),
        T.Resize(int(pre.img_size / pre.crop_pct), interpolation=T.InterpolationMode(pre.interpolation)),
        T.CenterCrop(pre.img_size),
    ]
