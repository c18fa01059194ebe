"""The paper's classification designs: how the token sequence becomes one vector."""

from __future__ import annotations

import torch

POOLINGS = ("bilateral_concat", "bilateral_avg", "mean", "middle_patch", "middle_cls", "last")


def pooled_dim(pooling: str, dim: int) -> int:
    return 2 * dim if pooling == "bilateral_concat" else dim


def pool_tokens(x: torch.Tensor, pooling: str) -> torch.Tensor:
    """x: (B, N, D) row-major tokens (with the [CLS] token in the middle for "middle_cls") -> (B, D or 2D)."""
    if pooling == "bilateral_concat":
        return torch.cat([x[:, 0], x[:, -1]], dim=-1)  # first token of the forward and of the backward scan
    if pooling == "bilateral_avg":
        return (x[:, 0] + x[:, -1]) / 2
    if pooling == "mean":
        return x.mean(dim=1)
    if pooling == "middle_patch":
        return x[:, x.shape[1] // 2]
    if pooling == "middle_cls":
        return x[:, (x.shape[1] - 1) // 2]  # the [CLS] token sits at index num_patches // 2
    if pooling == "last":
        return x[:, -1]
    raise ValueError(f"unknown pooling {pooling!r}; expected one of {POOLINGS}")
