"""Block-diagonal ("headwise") linear projections of the mLSTM layer, computed as a few dense group products.

The official layer applies E/4 independent 4x4 blocks with an einsum, which on CPU becomes hundreds of tiny
matrix products and costs more than the mLSTM cell itself at 224 pixels. Here neighbouring blocks are merged
into dense block-diagonal groups (4 blocks = 16 x 16), so one batched product over E/16 groups does the work;
projections of the same input (q and k) share that product. Wider groups waste multiply-adds on zeros, narrower
ones run the product far below the CPU's peak: 4 blocks beat 8 by 1.2-1.6x and 2 by 1.1-1.5x at ViL-T's shapes
(one thread, with and without gradients).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

BLOCKS_PER_GROUP = 4


class HeadwiseLinear(nn.Module):
    """Linear map with a block-diagonal weight of ``dim // block_size`` blocks of ``block_size x block_size``.

    Output channel o of block h: ``out[h*bs + o] = sum_d weight[h, o, d] * in[h*bs + d] (+ bias)``; the weight
    has the official shape (num_blocks, block_size, block_size).
    """

    def __init__(self, dim: int, block_size: int = 4, bias: bool = True):
        super().__init__()
        if dim % block_size:
            raise ValueError(f"dim {dim} is not divisible by the headwise block size {block_size}")
        self.dim = dim
        self.block_size = block_size
        self.weight = nn.Parameter(torch.empty(dim // block_size, block_size, block_size))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None
        nn.init.normal_(self.weight, std=(2 / 5 / block_size) ** 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return headwise_linear(x, [self.weight], [self.bias])[0]

    def extra_repr(self) -> str:
        return f"{self.dim}, block_size={self.block_size}, bias={self.bias is not None}"


def headwise_linear(
    x: torch.Tensor,
    weights: Sequence[torch.Tensor],
    biases: Sequence[torch.Tensor | None],
    num_heads: int | None = None,
) -> list[torch.Tensor]:
    """Apply several headwise projections (weights (NB, bs, bs), biases (E,) or None) to the same x: (B, S, E).

    Returns one tensor per projection: (B, S, E), or with ``num_heads`` (B, NH, S, E / NH) contiguous: the layout
    the mLSTM cell reads, produced by the same single copy that the token layout would cost.
    """
    batch, seq_len, dim = x.shape
    num_blocks, block_out, block_in = weights[0].shape
    head_dim = dim // (num_heads or 1)
    group_blocks = _group_size(num_blocks, head_dim // block_out)
    num_groups = num_blocks // group_blocks
    weight = torch.cat([_group_weight(w, group_blocks) for w in weights], dim=1)  # (G, n*gw, gw)
    group_width = group_blocks * block_out
    x_groups = x.reshape(batch * seq_len, num_groups, group_blocks * block_in).transpose(0, 1)  # (G, B*S, gw)
    if biases[0] is None:
        out = torch.bmm(x_groups, weight.transpose(1, 2))  # (G, B*S, n*gw)
    else:
        bias = torch.cat([b.view(num_groups, 1, group_width) for b in biases], dim=-1)
        out = torch.baddbmm(bias, x_groups, weight.transpose(1, 2))
    results = []
    for index in range(len(weights)):
        y = out[:, :, index * group_width : (index + 1) * group_width]  # (G, B*S, gw)
        if num_heads is None:
            results.append(y.transpose(0, 1).reshape(batch, seq_len, dim))
        else:  # group g belongs to head g // (G / NH)
            y = y.view(num_heads, num_groups // num_heads, batch, seq_len, group_width)
            results.append(y.permute(2, 0, 3, 1, 4).reshape(batch, num_heads, seq_len, head_dim).contiguous())
    return results


def fold_into_linear(
    weight: torch.Tensor, projections: Sequence[HeadwiseLinear]
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``x_1, .., x_n -> weight @ cat(projection_1(x_1), .., projection_n(x_n))`` as linear maps of each x_i: weight
    (O, n E) -> the folded weights (n, O, E) and the bias they contribute (O,), or None without biases.

    Written as one batched product over (projection, block) rather than an einsum per projection: in training the
    fold runs with autograd on every forward pass, where a dozen tiny ops per projection cost more than the
    arithmetic (and a broadcast product and sum, as before, ~20 % more than this in a ViL-T block, forward and
    backward; the same forward values)."""
    blocks = torch.stack([p.weight for p in projections])  # (n, NB, o, i)
    count, num_blocks, out_size, in_size = blocks.shape
    per_block = weight.view(-1, count, num_blocks, out_size).permute(1, 2, 0, 3)  # (n, NB, O, o)
    folded = torch.matmul(per_block, blocks)  # (n, NB, O, i)
    folded = folded.transpose(1, 2).reshape(count, -1, num_blocks * in_size)  # (n, O, E), contiguous
    if projections[0].bias is None:
        return folded, None
    return folded, weight @ torch.cat([p.bias for p in projections])


def _group_size(num_blocks: int, blocks_per_head: int) -> int:
    """The most blocks per group (up to BLOCKS_PER_GROUP) such that groups tile both the blocks and each head."""
    for size in (BLOCKS_PER_GROUP, 4, 2):
        if num_blocks % size == 0 and blocks_per_head % size == 0:
            return size
    return 1


def _group_weight(weight: torch.Tensor, group_blocks: int) -> torch.Tensor:
    """(NB, o, i) blocks -> (NB / g, g*o, g*i) dense block-diagonal groups of g blocks."""
    num_blocks, out_size, in_size = weight.shape
    eye = torch.eye(group_blocks, dtype=weight.dtype, device=weight.device)
    grouped = torch.einsum("gboi,bc->gboci", weight.view(-1, group_blocks, out_size, in_size), eye)
    return grouped.reshape(num_blocks // group_blocks, group_blocks * out_size, group_blocks * in_size)
