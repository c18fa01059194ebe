"""SegmenterConfig: a backbone, its taps, the pyramid neck and the decoder, validated on construction."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..utils.dict_config import DictConfig

HEADS = ("upernet", "linear")  # linear: a per-token linear classifier of its pixels (no neck)
PYRAMID_SCALES = (4.0, 2.0, 1.0, 0.5, 0.25)  # what the simple feature pyramid can do to the token grid


@dataclass(frozen=True)
class SegmenterConfig(DictConfig):
    """A semantic segmentation model (DESIGN: ViL + simple feature pyramid + UperNet, as the official ViL).

    backbone: a ViL variant name (``vil.list_models()``) or a timm model with ``forward_intermediates``.
    backbone_args: overrides for the backbone (ViLConfig fields, or timm ``create_model`` keyword arguments).
    taps: the blocks whose outputs feed the neck (None: 4 blocks at a third, a half, two thirds and the end of the
        depth, i.e. 7, 11, 15, 23 of 24 and 3, 5, 7, 11 of 12, as the official set-up).
    pyramid_scales: how the neck resizes each tap's token grid (None: x4, x2, x1, x1/2 for a 16-pixel token stride,
        x2, x1, x1/2, x1/4 for 8, so that the levels have strides 4, 8, 16, 32).
    channels: decoder width (None: 192 for backbones up to 192 wide, else 384, as the paper's T / S / B).
    aux_channels: width of the auxiliary FCN head on level 2 (0: no auxiliary head); used in training only.
    drop_path_rate: stochastic depth of the last backbone block, decaying linearly to 0 at the first.
    """

    backbone: str = "vil2_tiny_patch16_224"
    num_classes: int = 150
    head: str = "upernet"
    img_size: int = 512
    in_chans: int = 3
    backbone_args: dict = field(default_factory=dict)
    taps: tuple[int, ...] | None = None
    pyramid_scales: tuple[float, ...] | None = None
    channels: int | None = None
    pool_scales: tuple[int, ...] = (1, 2, 3, 6)
    aux_channels: int = 256  # mmsegmentation's FCNHead width for ViT/BEiT UperNets
    dropout: float = 0.1
    drop_path_rate: float = 0.0

    def __post_init__(self):
        for name in ("taps", "pyramid_scales", "pool_scales"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(value))
        self._validate()

    def _validate(self) -> None:
        if self.head not in HEADS:
            raise ValueError(f"unknown head {self.head!r}; expected one of {list(HEADS)}")
        for name in ("num_classes", "img_size", "in_chans"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.taps is not None and (len(self.taps) != 4 or any(not isinstance(t, int) for t in self.taps)):
            raise ValueError(f"taps must be 4 block indices, got {self.taps!r}")
        scales = self.pyramid_scales
        if scales is not None and (len(scales) != 4 or any(s not in PYRAMID_SCALES for s in scales)):
            raise ValueError(f"pyramid_scales must be 4 of {PYRAMID_SCALES}, got {self.pyramid_scales!r}")
        if self.channels is not None and self.channels < 1:
            raise ValueError(f"channels must be a positive int, got {self.channels!r}")
        if self.aux_channels < 0:
            raise ValueError(f"aux_channels must be >= 0 (0: no auxiliary head), got {self.aux_channels!r}")
        if not 0.0 <= self.dropout < 1.0 or not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"dropout and drop_path_rate must be in [0, 1), got {self.dropout}, {self.drop_path_rate}")
        if not self.pool_scales or any(s < 1 for s in self.pool_scales):
            raise ValueError(f"pool_scales must be positive ints, got {self.pool_scales!r}")


def default_taps(depth: int) -> tuple[int, ...]:
    """Blocks at a third, half, two thirds and the end: (7, 11, 15, 23) of 24, (3, 5, 7, 11) of 12."""
    taps = (round(depth / 3) - 1, depth // 2 - 1, round(2 * depth / 3) - 1, depth - 1)
    return tuple(max(t, 0) for t in taps)


def default_pyramid_scales(token_stride: int) -> tuple[float, ...]:
    """Scales that give the levels strides 4, 8, 16, 32: (4, 2, 1, 1/2) for 16 px tokens, (2, 1, 1/2, 1/4) for 8."""
    if token_stride == 16:
        return (4.0, 2.0, 1.0, 0.5)
    if token_stride == 8:
        return (2.0, 1.0, 0.5, 0.25)
    raise ValueError(
        f"no default pyramid for a token stride of {token_stride} px; pass pyramid_scales (4 of {PYRAMID_SCALES})"
    )


def default_channels(backbone_dim: int) -> int:
    return 192 if backbone_dim <= 192 else 384
