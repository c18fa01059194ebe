"""ViLConfig: everything that defines a Vision-LSTM, validated on construction."""

from __future__ import annotations

from dataclasses import dataclass

from ..layers.pooling import POOLINGS
from ..layers.traversal import BLOCK_DESIGNS
from ..ops import BACKENDS
from ..utils.dict_config import DictConfig

INITS = ("original", "original-fixed")
CONV_KINDS = ("2d", "causal1d")

# What each generation of the official code fixes (docs/design.md §3).
GENERATION_DEFAULTS = {
    2: dict(conv_kind="2d", conv_kernel_size=3, bias=True, pooling="bilateral_concat"),
    1: dict(conv_kind="causal1d", conv_kernel_size=4, bias=False, pooling="bilateral_avg"),
}


def _pair(value, name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and v > 0 for v in pair):
        raise ValueError(f"{name} must be a positive int or a pair (H, W) of positive ints, got {value!r}")
    return pair


@dataclass(frozen=True)
class ViLConfig(DictConfig):
    """A Vision-LSTM architecture.

    version: 2 = VisionLSTM2 (conv2d 3x3, biases, bilateral concat); 1 = VisionLSTM (causal conv1d k=4, no
        biases, bilateral avg). conv_kind, conv_kernel_size, bias and pooling default to the generation's choice.
    depth: number of mLSTM blocks (24 for ViL-T in both generations).
    img_size: the size the position embedding is learned at; any other size divisible by the patch also works.
    patch_stride: None = patch_size; 8 with patch 16 gives the long-sequence variants (27 x 27 tokens at 224).
    block_design: one of the paper's traversal designs (``vil.layers.traversal.BLOCK_DESIGNS``).
    pooling: one of the paper's classification designs (``vil.layers.pooling.POOLINGS``).
    mlstm_backend, chunk_size: which form of the mLSTM cell runs (see ``vil.ops.mlstm``).
    init: "original" (what the released weights used) or "original-fixed" (proj_down scaled by depth).
    """

    version: int = 2
    dim: int = 192
    depth: int = 24
    img_size: int | tuple[int, int] = 224
    patch_size: int | tuple[int, int] = 16
    patch_stride: int | tuple[int, int] | None = None
    in_chans: int = 3
    num_classes: int = 1000
    block_design: str = "alternating"
    pooling: str | None = None
    drop_path_rate: float = 0.0
    mlstm_backend: str = "auto"
    chunk_size: int | None = None
    init: str = "original"
    expansion: int = 2
    num_heads: int = 4
    qkv_block_size: int = 4
    conv_kind: str | None = None
    conv_kernel_size: int | None = None
    bias: bool | None = None

    def __post_init__(self):
        if self.version not in GENERATION_DEFAULTS:
            raise ValueError(f"version must be 1 or 2, got {self.version!r}")
        for name, value in GENERATION_DEFAULTS[self.version].items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        object.__setattr__(self, "img_size", _pair(self.img_size, "img_size"))
        object.__setattr__(self, "patch_size", _pair(self.patch_size, "patch_size"))
        stride = self.patch_size if self.patch_stride is None else _pair(self.patch_stride, "patch_stride")
        object.__setattr__(self, "patch_stride", stride)
        self._validate()

    def _validate(self) -> None:
        _choice("block_design", self.block_design, tuple(BLOCK_DESIGNS))
        _choice("pooling", self.pooling, POOLINGS)
        _choice("mlstm_backend", self.mlstm_backend, BACKENDS)
        _choice("init", self.init, INITS)
        _choice("conv_kind", self.conv_kind, CONV_KINDS)
        for name in ("dim", "depth", "in_chans", "expansion", "num_heads", "qkv_block_size", "conv_kernel_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not isinstance(self.num_classes, int) or self.num_classes < 0:
            raise ValueError(f"num_classes must be an int >= 0 (0: no head), got {self.num_classes!r}")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate!r}")
        if self.chunk_size is not None and (not isinstance(self.chunk_size, int) or self.chunk_size < 1):
            raise ValueError(f"chunk_size must be a positive int or None, got {self.chunk_size!r}")
        inner = self.expansion * self.dim
        if inner % self.qkv_block_size or inner % self.num_heads:
            raise ValueError(
                f"inner width expansion*dim = {inner} must be divisible by qkv_block_size={self.qkv_block_size} "
                f"and num_heads={self.num_heads}"
            )
        if inner // self.num_heads % self.qkv_block_size:
            # the headwise blocks are regrouped into the cell's heads: a block across two heads is not supported
            raise ValueError(
                f"head width expansion*dim/num_heads = {inner // self.num_heads} must be divisible by "
                f"qkv_block_size={self.qkv_block_size}"
            )
        if self.conv_kind == "2d" and self.conv_kernel_size % 2 == 0:
            raise ValueError(f"conv_kind='2d' needs an odd conv_kernel_size, got {self.conv_kernel_size}")
        check_image_size(self.img_size, self.patch_size, self.patch_stride)

    @property
    def inner_dim(self) -> int:
        return self.expansion * self.dim

    @property
    def pos_embed_grid(self) -> tuple[int, int]:
        """The grid the position embedding is stored at (img_size // patch_size, also for strided variants)."""
        return (self.img_size[0] // self.patch_size[0], self.img_size[1] // self.patch_size[1])


def check_image_size(size: tuple[int, int], patch: tuple[int, int], stride: tuple[int, int]) -> None:
    """Raise ValueError unless patches of ``patch`` at ``stride`` tile an image of ``size`` exactly."""
    for extent, p, s in zip(size, patch, stride, strict=True):
        if extent < p or extent % p or (extent - p) % s:
            raise ValueError(
                f"image size {tuple(size)} does not fit patch size {tuple(patch)} with stride {tuple(stride)}: "
                "each side must be a multiple of the patch size (and patch + a multiple of the stride)"
            )


def patch_grid(size: tuple[int, int], patch: tuple[int, int], stride: tuple[int, int]) -> tuple[int, int]:
    """Patches per column and per row of an image of ``size`` (H, W) cut into ``patch`` at ``stride``."""
    return tuple((extent - p) // s + 1 for extent, p, s in zip(size, patch, stride, strict=True))


def _choice(name: str, value, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; expected one of {list(allowed)}")
