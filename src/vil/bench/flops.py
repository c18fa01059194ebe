"""Multiply-accumulates (MACs) of a ViL forward pass: counted by torch's flop counter, and in the paper's convention.

Convention: 1 MAC = 2 FLOPs. ``torch.utils.flop_counter.FlopCounterMode`` counts 2 FLOPs per multiply-add of matrix
products and convolutions (bias additions, norms and elementwise ops are not counted); we report its count / 2.

:func:`count_macs` counts what our implementation executes, for one image, on the meta device (shapes only, no
data, no memory). The counter sees the matrix products inside the cell's custom autograd Functions like any
other op; the result differs from the paper's convention where our kernels do different work than the textbook
formula:

- q, k, v: the PyTorch path computes the 4 x 4 headwise blocks as dense block-diagonal groups of 4 blocks (16 x 16,
  see ``vil.layers.headwise``): 4x the nominal MACs, zeros included, because that is faster than many tiny
  products. Where the fused CPU kernels run (``vil.kernels``, the default on a CPU with a C compiler) they do the
  nominal 4 x 4 MACs, out of the counter's sight; the count here is the PyTorch path's (meta device).
- gates: folded into two products of width E instead of one on cat(q, k, v) of width 3E (``MLSTMCell``).
- the cell: the parallel form computes both S x S products (q k^T and the weighted sum of v) in row tiles up to
  the diagonal, about (S^2 / 2 + S * 32) * E MACs each; the chunkwise form costs 2 S L E + 2 S E DH (L: chunk size,
  DH: head size), linear in S.

:func:`paper_macs` is the hand count in the paper's convention (the architecture's nominal products; the mLSTM
cell counted as S^2 * E per traversal and block), which reproduces the published v2 numbers (1.5 / 5.1 / 18.6 G).

Counting is fast (~0.05 s a model): every block does the same work, so one block is counted and multiplied by the
depth; and the cell, whose parallel form loops over row tiles (196 tiles at 1792 px, slow to count op by op), is
recorded during the model's pass and counted once per distinct call shape, with the counter, cached.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from dataclasses import dataclass, field
from unittest import mock

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..layers.pooling import pooled_dim
from ..layers.traversal import block_traversals
from ..models.config import ViLConfig, patch_grid
from ..models.vision_lstm import VisionLSTM
from ..ops import backend as ops_backend
from ..ops import projected as ops_projected
from ..ops import triton_cell

COMPONENTS = ("patch_embed", "projections", "conv", "qkv_gates", "cell", "head", "other")
PER_BLOCK = ("projections", "conv", "qkv_gates", "cell")
COMPONENT_HELP = {
    "patch_embed": "patch embedding (a strided conv)",
    "projections": "proj_up (D -> 2E) and proj_down (E -> D) of every block",
    "conv": "the short conv in front of q and k (depthwise)",
    "qkv_gates": "headwise q, k, v projections and the input/forget gates",
    "cell": "the mLSTM cell",
    "head": "the classifier",
    "other": "anything else the counter saw (outside the blocks)",
}

# The paper's published GMACs (VisionLSTM2 table of arXiv 2406.04303v2, ImageNet-1K at 224 px).
PAPER_GMACS = {"vil2_tiny_patch16_224": 1.5, "vil2_small_patch16_224": 5.1, "vil2_base_patch16_224": 18.6}


@dataclass(frozen=True)
class MacCount:
    """MACs of one forward pass of one image, by component."""

    components: dict[str, int]
    tokens: int  # sequence length S the mLSTM reads (patches, plus the [CLS] token of "middle_cls")
    cell_forms: tuple[str, ...] = field(default=())  # the form(s) the cell ran in: "parallel", "chunkwise (L=64)", ...

    @property
    def total(self) -> int:
        return sum(self.components.values())

    @property
    def gmacs(self) -> float:
        return self.total / 1e9


@dataclass(frozen=True)
class _CellCall:
    """The shape and form of one call of the mLSTM cell: all its MAC count depends on."""

    shape: tuple[int, int, int, int]  # q: (B, NH, S, DH)
    value_dim: int
    form: str  # "parallel" or "chunkwise" (recurrent counted as it runs)
    chunk_size: int | None

    @property
    def label(self) -> str:
        return f"chunkwise (L={self.chunk_size})" if self.form == "chunkwise" else self.form


def count_macs(
    config: ViLConfig, image_size: int | tuple[int, int] | None = None, backend: str | None = None
) -> MacCount:
    """MACs of one image through the model, counted by ``FlopCounterMode`` on the meta device.

    image_size: the input (default: the config's img_size); any size the patch tiles.
    backend: the form of the mLSTM cell ("parallel", "chunkwise", "auto", "recurrent"; default: the config's).
    """
    if backend is not None:
        config = config.replace(mlstm_backend=backend)
    height, width = _pair(image_size or config.img_size)
    # Every block does the same work: the same products on the same shapes, only the token order differs between
    # traversals. So one block is counted and multiplied by the depth (the counter's bookkeeping costs ~10 ms/block).
    traversals_per_block = {len(block_traversals(config.block_design, i)[0]) for i in range(config.depth)}
    assert len(traversals_per_block) == 1, "blocks with different work: count them one by one"
    with torch.device("meta"):  # shapes only: nothing allocated, nothing computed
        model = VisionLSTM(config.replace(depth=1)).eval()
        images = torch.empty(1, config.in_chans, height, width)
    # The cell is swapped for a recorder during the pass (the model calls it through vil.ops.projected.mlstm) and
    # counted separately per distinct call; the patch is undone on exit (not thread-safe: count in one thread).
    calls: list[_CellCall] = []
    recorder = mock.patch.object(ops_projected, "mlstm", _cell_recorder(calls))
    with torch.no_grad(), recorder, FlopCounterMode(display=False) as counter:
        model(images)
    if not calls:  # internal: the model no longer calls the cell through vil.ops.projected.mlstm
        raise AssertionError("no mLSTM cell call was recorded: the cell would be missing from the count")
    components = _attribute(counter, type(model).__name__)
    components["cell"] = sum(count * _count_cell(call) for call, count in Counter(calls).items())
    for name in PER_BLOCK:
        components[name] *= config.depth
    forms = tuple(dict.fromkeys(call.label for call in calls))
    return MacCount(components=components, tokens=calls[0].shape[2], cell_forms=forms)


def paper_macs(config: ViLConfig, image_size: int | tuple[int, int] | None = None) -> MacCount:
    """MACs in the paper's convention, by hand: the nominal size of every product, the cell as S^2 * E."""
    height, width = _pair(image_size or config.img_size)
    rows, columns = patch_grid((height, width), config.patch_size, config.patch_stride)
    patches = rows * columns
    tokens = patches + (config.pooling == "middle_cls")
    dim, inner = config.dim, config.inner_dim
    branches = _cell_calls(config)
    kernel = config.conv_kernel_size ** (2 if config.conv_kind == "2d" else 1)
    qkv = 3 * inner * config.qkv_block_size  # three headwise projections, blocks of qkv_block_size
    gates = 2 * config.num_heads * 3 * inner  # igate and fgate: Linear(3E -> NH) on cat(q, k, v)
    components = dict(
        patch_embed=patches * dim * config.in_chans * config.patch_size[0] * config.patch_size[1],
        projections=config.depth * tokens * (dim * 2 * inner + inner * dim),
        conv=branches * tokens * inner * kernel,
        qkv_gates=branches * tokens * (qkv + gates),
        cell=branches * tokens**2 * inner,
        head=pooled_dim(config.pooling, dim) * config.num_classes,
        other=0,
    )
    return MacCount(components=components, tokens=tokens, cell_forms=("S^2 * E",))


def _cell_calls(config: ViLConfig) -> int:
    """Cell calls in the whole model: every traversal of every block runs the cell (shared weights or not)."""
    return sum(len(block_traversals(config.block_design, index)[0]) for index in range(config.depth))


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else tuple(size)


def _cell_recorder(calls: list[_CellCall]):
    """A stand-in for ``vil.ops.mlstm`` that records the call (shape and the form it would run in) and returns an
    empty output of the right shape."""

    def record(q, k, v, igate, fgate, backend="auto", chunk_size=None, **kwargs):
        form, auto_chunk = ops_backend.choose_backend(q.shape[2], q.shape[3], needs_grad=False, stateful=False)
        form = form if backend == "auto" else backend
        if form == "triton":  # the chunkwise form's arithmetic, in Triton kernels
            form, auto_chunk = "chunkwise", triton_cell.DEFAULT_CHUNK
        chunk = (chunk_size or auto_chunk) if form == "chunkwise" else None
        calls.append(_CellCall(tuple(q.shape), v.shape[-1], form, chunk))
        return v.new_empty(v.shape, dtype=q.dtype)

    return record


@functools.lru_cache(maxsize=256)
def _count_cell(call: _CellCall) -> int:
    """MACs of one call of the cell, counted by ``FlopCounterMode`` on meta tensors of the call's shape."""
    batch, heads, seq_len, head_dim = call.shape
    with torch.device("meta"):
        q, k = torch.empty(call.shape), torch.empty(call.shape)
        v = torch.empty(batch, heads, seq_len, call.value_dim)
        igate, fgate = torch.empty(batch, heads, seq_len), torch.empty(batch, heads, seq_len)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        ops_backend.mlstm(q, k, v, igate, fgate, backend=call.form, chunk_size=call.chunk_size)
    return counter.get_total_flops() // 2


def _attribute(counter: FlopCounterMode, root: str) -> dict[str, int]:
    """Split the counter's per-module counts into components (the cell is counted separately)."""
    per_module = {name: sum(ops.values()) // 2 for name, ops in counter.get_flop_counts().items()}
    block = re.escape(root) + r"\.blocks\.\d+\.layer"
    branch = block + r"\.branches\.\d+"

    def total(pattern: str) -> int:
        return sum(macs for name, macs in per_module.items() if re.fullmatch(pattern, name))

    conv, qkv_gates = total(branch + r"\.conv"), total(branch + r"\.mlstm_cell")
    components = dict(
        patch_embed=total(re.escape(root) + r"\.patch_embed"),
        projections=total(block) - conv - qkv_gates,  # the layer's own products: what it counts beyond those two
        conv=conv,
        qkv_gates=qkv_gates,
        cell=0,
        head=total(re.escape(root) + r"\.head"),
    )
    components["other"] = per_module.get("Global", 0) - sum(components.values())
    return components
