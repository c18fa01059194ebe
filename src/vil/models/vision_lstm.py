"""VisionLSTM: the ViL backbone and classifier with timm's model API."""

from __future__ import annotations

import logging

import torch
from timm.models._features import feature_take_indices
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..layers.embed import PatchEmbed, PosEmbed2d
from ..layers.mlstm_layer import MLSTMCell, ViLBlock
from ..layers.norm import ResidualLayerNorm
from ..layers.pooling import pool_tokens, pooled_dim
from ..layers.traversal import block_traversals
from ..utils.cpu_allocator import release_when_reached, tune_on_first_use
from ..utils.gradient_buffer import allocate_gradients_when_reached
from .config import ViLConfig, check_image_size

logger = logging.getLogger(__name__)


class VisionLSTM(nn.Module):
    """Vision-LSTM (arXiv 2406.04303), both generations, all block and classification designs of the paper.

    The token grid is derived from the input in every forward pass: any image size that the patch tiles works
    (non-square too), with the position embedding resampled bicubically.
    """

    def __init__(self, config: ViLConfig | None = None, **overrides):
        super().__init__()
        tune_on_first_use()  # malloc keeps freed tensors for reuse (vil.utils.cpu_allocator; VIL_MALLOC_TUNING=0: off)
        config = (config or ViLConfig()).replace(**overrides) if overrides else (config or ViLConfig())
        self.config = config
        self.num_classes = config.num_classes
        self.num_features = self.embed_dim = config.dim
        self.head_hidden_size = pooled_dim(config.pooling, config.dim)
        self.grad_checkpointing = False
        v2 = config.version == 2

        self.patch_embed = PatchEmbed(config.in_chans, config.dim, config.patch_size, config.patch_stride)
        self.pos_embed = PosEmbed2d(config.pos_embed_grid, config.dim)
        if config.pooling == "middle_cls":
            self.cls_token = nn.Parameter(torch.zeros(1, 1, config.dim))
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        else:
            self.cls_token = None

        blocks = []
        for index in range(config.depth):
            traversals, shared = block_traversals(config.block_design, index)
            blocks.append(
                ViLBlock(
                    config.dim,
                    drop_path=config.drop_path_rate,
                    norm_bias=config.bias,
                    traversals=traversals,
                    shared=shared,
                    num_blocks=config.depth,
                    expansion=config.expansion,
                    num_heads=config.num_heads,
                    qkv_block_size=config.qkv_block_size,
                    conv_kind=config.conv_kind,
                    conv_kernel_size=config.conv_kernel_size,
                    backend=config.mlstm_backend,
                    chunk_size=config.chunk_size,
                    init=config.init,
                )
            )
        self.blocks = nn.ModuleList(blocks)
        # v2: norm over all tokens with bias (eps 1e-6); v1: bias-free (eps 1e-5). Both as the released weights.
        self.norm = ResidualLayerNorm(config.dim, bias=config.bias, eps=1e-6 if v2 else 1e-5)
        self.fc_norm = nn.LayerNorm(self.head_hidden_size, eps=1e-5 if v2 else 1e-6)
        self.head = self._new_head(config.num_classes)

    # ----------------------------------------------------------------------------------------------------------
    # forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images -> (B, num_classes) logits (or pooled features if num_classes == 0)."""
        return self.forward_head(self.forward_features(x))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> tokens after the final norm, (B, N, D), row-major (with [CLS] in the middle if any)."""
        x, grid = self._embed(x)
        for block in self.blocks:
            x = self._run_block(block, x, grid)
        _ready_heap_for_backward(x, self.blocks)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Tokens (B, N, D) -> pooled and normed (B, head_hidden_size) if pre_logits, else logits."""
        x = self.fc_norm(pool_tokens(x, self.config.pooling))
        return x if pre_logits else self.head(x)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Feature maps after the chosen mLSTM blocks, for dense tasks (timm's API).

        indices: an int n takes the last n blocks, a list takes those block indices (negative from the end).
        Returns the maps (B, D, h, w) (or (B, h, w, D) for output_fmt="NHWC"), and first the final tokens
        after the norm unless ``intermediates_only``.
        """
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        x, grid = self._embed(x)
        blocks = self.blocks[: max_index + 1] if stop_early and not torch.jit.is_scripting() else self.blocks
        intermediates = []
        for index, block in enumerate(blocks):
            x = self._run_block(block, x, grid)
            if index in take_indices:
                intermediates.append(self._to_feature_map(self.norm(x) if norm else x, grid, output_fmt))
            if index == max_index:  # a gradient through the last tap reaches every block up to it
                _ready_heap_for_backward(x, blocks[: index + 1])
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates

    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Images (B, C, H, W) -> tokens (B, N, D) with position embedding, and the token grid (h, w)."""
        if x.ndim != 4:
            raise ValueError(f"expected images of shape (B, C, H, W), got a tensor of shape {tuple(x.shape)}")
        if x.shape[1] != self.config.in_chans:
            raise ValueError(
                f"expected {self.config.in_chans} input channels, got {x.shape[1]} (input shape {tuple(x.shape)})"
            )
        if not x.is_floating_point():  # e.g. uint8 pixels straight from a decoder
            raise ValueError(
                f"expected floating-point images, got dtype {x.dtype}: scale and normalise them first, e.g. with "
                "timm.data.resolve_data_config + create_transform, or x.float() / 255 and the model's mean and std"
            )
        check_image_size(tuple(x.shape[-2:]), self.config.patch_size, self.config.patch_stride)
        x = self.pos_embed(self.patch_embed(x))  # (B, h, w, D)
        grid = (x.shape[1], x.shape[2])
        x = x.flatten(1, 2)  # (B, h*w, D)
        if self.cls_token is not None:
            middle = grid[0] * grid[1] // 2
            cls = self.cls_token.expand(x.shape[0], -1, -1)
            x = torch.cat([x[:, :middle], cls, x[:, middle:]], dim=1)  # (B, h*w + 1, D)
        return x, grid

    def _run_block(self, block: ViLBlock, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        has_cls = self.cls_token is not None
        if self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
            return checkpoint(block, x, grid, has_cls, use_reentrant=False)
        return block(x, grid, has_cls)

    def _to_feature_map(self, x: torch.Tensor, grid: tuple[int, int], output_fmt: str) -> torch.Tensor:
        if self.cls_token is not None:
            middle = grid[0] * grid[1] // 2
            x = torch.cat([x[:, :middle], x[:, middle + 1 :]], dim=1)
        x = x.reshape(x.shape[0], grid[0], grid[1], x.shape[-1])  # (B, h, w, D)
        return x.permute(0, 3, 1, 2) if output_fmt == "NCHW" else x

    # ----------------------------------------------------------------------------------------------------------
    # timm model API

    def _new_head(self, num_classes: int) -> nn.Module:
        if num_classes == 0:
            return nn.Identity()
        head = nn.Linear(self.head_hidden_size, num_classes)
        nn.init.trunc_normal_(head.weight, std=2e-5)  # as MAE / the official ViL
        nn.init.zeros_(head.bias)
        return head

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """New, freshly initialised head for ``num_classes`` (0: none); optionally a new pooling (``global_pool``)."""
        if not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes must be an int >= 0, got {num_classes!r}")
        if global_pool is not None and global_pool != self.config.pooling:
            if "middle_cls" in (global_pool, self.config.pooling):
                raise ValueError("cannot switch to or from 'middle_cls' pooling after construction: it adds a token")
            self.config = self.config.replace(pooling=global_pool)
            width = pooled_dim(global_pool, self.config.dim)
            if width != self.head_hidden_size:
                logger.info("pooling %r has width %d: fc_norm re-initialised", global_pool, width)
                self.head_hidden_size = width
                self.fc_norm = nn.LayerNorm(width, eps=self.fc_norm.eps).to(self.fc_norm.weight.device)
        self.num_classes = num_classes
        self.config = self.config.replace(num_classes=num_classes)
        self.head = self._new_head(num_classes).to(self.pos_embed.embed.device)

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the blocks after the last of ``indices`` (and the final norm and the head) that a dense model fed by
        ``forward_intermediates(..., intermediates_only=True)`` never runs (timm's API); returns the kept indices.
        """
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[: max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.fc_norm = nn.Identity()
            self.reset_classifier(0)
        return take_indices

    def set_mlstm_backend(self, backend: str, chunk_size: int | None = None) -> None:
        """Switch every mLSTM cell to another form (see ``vil.ops.mlstm``); the weights are unchanged."""
        self.config = self.config.replace(mlstm_backend=backend, chunk_size=chunk_size)
        for module in self.modules():
            if isinstance(module, MLSTMCell):
                module.backend, module.chunk_size = backend, chunk_size

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in the backward pass instead of storing its activations."""
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"pos_embed.embed", "cls_token"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups for layer-wise lr decay: the stem, each mLSTM block, then the final norm and head."""
        return dict(
            stem=r"^cls_token|^pos_embed|^patch_embed",
            blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))],
        )


def _ready_heap_for_backward(x: torch.Tensor, blocks: nn.ModuleList) -> None:
    """When the backward pass reaches the output x of ``blocks``: their gradients in one buffer
    (vil.utils.gradient_buffer) and, for long sequences, the forward pass's heap holes handed back to the OS
    (vil.utils.cpu_allocator).

    The hooks run in this order: the buffer is allocated first, into the space the previous step's gradients freed,
    whose pages are still mapped; trimmed first, that space went back to the OS and zeroing the new buffer
    page-faulted it in again (ViL-T at 224 x 8: 14-16 ms against 1.6 ms per step; the 1024 px memory growth did not
    rise, 808-813 MiB against 827-849 MiB, benchmarks/user_script.py --memory-child)."""
    allocate_gradients_when_reached(x, blocks.parameters())
    release_when_reached(x)
