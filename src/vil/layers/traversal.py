"""Orders in which an mLSTM reads the token grid, and the paper's block designs built from them.

A sequence of H*W patch tokens is stored row-major (top-left to bottom-right). A traversal reorders it:
row-wise or column-wise, forward or reversed. A [CLS] token in the middle of the sequence (index H*W // 2)
stays in the middle of every traversal.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class Traversal(NamedTuple):
    column_wise: bool  # read the grid column by column instead of row by row
    reverse: bool  # start at the bottom-right instead of the top-left

    @property
    def name(self) -> str:
        return ("col" if self.column_wise else "row") + ("_reverse" if self.reverse else "_forward")


ROW_FORWARD = Traversal(column_wise=False, reverse=False)
ROW_REVERSE = Traversal(column_wise=False, reverse=True)
COL_FORWARD = Traversal(column_wise=True, reverse=False)
COL_REVERSE = Traversal(column_wise=True, reverse=True)
QUAD = (ROW_FORWARD, ROW_REVERSE, COL_FORWARD, COL_REVERSE)

# block design -> (traversals of block i, whether the traversals of one block share parameters)
BLOCK_DESIGNS = {
    "alternating": (lambda i: (ROW_FORWARD if i % 2 == 0 else ROW_REVERSE,), False),
    "unidirectional": (lambda i: (ROW_FORWARD,), False),
    "bidirectional": (lambda i: (ROW_FORWARD, ROW_REVERSE), False),
    "bidirectional_shared": (lambda i: (ROW_FORWARD, ROW_REVERSE), True),
    "quad": (lambda i: QUAD, False),
    "quad_shared": (lambda i: QUAD, True),
    "quad_alternating": (lambda i: (QUAD[i % 4],), False),
}


def block_traversals(design: str, block_index: int) -> tuple[tuple[Traversal, ...], bool]:
    """The traversals of one block and whether they share one set of mLSTM parameters."""
    traversals_of, shared = BLOCK_DESIGNS[design]
    return traversals_of(block_index), shared


def traversal_grid(grid: tuple[int, int], traversal: Traversal) -> tuple[int, int]:
    """The grid the traversed sequence forms when read row-major (transposed for column-wise traversals)."""
    return (grid[1], grid[0]) if traversal.column_wise else grid


def to_traversal(x: torch.Tensor, grid: tuple[int, int], traversal: Traversal, has_cls: bool) -> torch.Tensor:
    """Reorder (B, N, C) row-major tokens into the traversal's order."""
    return _reorder(x, grid, traversal, has_cls, inverse=False)


def from_traversal(x: torch.Tensor, grid: tuple[int, int], traversal: Traversal, has_cls: bool) -> torch.Tensor:
    """Undo :func:`to_traversal`: (B, N, C) in traversal order -> row-major."""
    return _reorder(x, grid, traversal, has_cls, inverse=True)


def _reorder(x: torch.Tensor, grid: tuple[int, int], traversal: Traversal, has_cls: bool, inverse: bool):
    if traversal == ROW_FORWARD:
        return x
    if has_cls:
        middle = grid[0] * grid[1] // 2
        patches = torch.cat([x[:, :middle], x[:, middle + 1 :]], dim=1)
        patches = _reorder(patches, grid, traversal, has_cls=False, inverse=inverse)
        return torch.cat([patches[:, :middle], x[:, middle : middle + 1], patches[:, middle:]], dim=1)
    if inverse and traversal.reverse:
        x = x.flip(1)
    if traversal.column_wise:
        batch, num_tokens, channels = x.shape
        rows, cols = traversal_grid(grid, traversal) if inverse else grid
        x = x.reshape(batch, rows, cols, channels).transpose(1, 2).reshape(batch, num_tokens, channels)
    if not inverse and traversal.reverse:
        x = x.flip(1)
    return x
