"""The ViL block: pre-norm residual around an mLSTM layer (docs/design.md §1)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import nn
from torch.utils.checkpoint import checkpoint

from .. import kernels
from ..ops.parallel import parallel_backward_projected, parallel_forward_projected
from ..ops.projected import hand_recompute_applies, mlstm_projected, recompute_pays_off
from .conv import CausalConv1d, SequenceConv2d
from .gated_projection import gated_projection, linear_parameter_grads
from .headwise import HeadwiseLinear, fold_into_linear, headwise_linear
from .norm import MultiHeadNorm, ResidualLayerNorm, multi_head_norm
from .traversal import Traversal, from_traversal, to_traversal, traversal_grid

OUTNORM_EPS = 1e-5


class MLSTMCell(nn.Module):
    """Gates, the mLSTM cell and its per-head output norm.

    The gate pre-activations are linear in cat(q, k, v) (official: ``igate(cat(q, k, v))``). Since q, k, v are
    themselves headwise projections, :meth:`gate_weights` folds those projections into the gate weights
    and reads the gates straight from their inputs: no (B, S, 3E) concatenation, a third of the work.
    """

    def __init__(self, inner_dim: int, num_heads: int, norm_bias: bool, backend: str, chunk_size: int | None):
        super().__init__()
        self.num_heads = num_heads
        self.backend = backend
        self.chunk_size = chunk_size
        self.igate = nn.Linear(3 * inner_dim, num_heads)
        self.fgate = nn.Linear(3 * inner_dim, num_heads)
        self.outnorm = MultiHeadNorm(inner_dim, bias=norm_bias, eps=OUTNORM_EPS)
        self.project = _HeadwiseQKV(num_heads)
        self._gate_cache: tuple | None = None  # (parameters, their versions, gate_weights) in inference
        nn.init.zeros_(self.fgate.weight)
        with torch.no_grad():
            self.fgate.bias.copy_(torch.linspace(3.0, 6.0, num_heads))
        nn.init.zeros_(self.igate.weight)
        nn.init.normal_(self.igate.bias, std=0.1)

    def gate_weights(self, q_proj, k_proj, v_proj) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The gates as linear maps of the projections' inputs: weights for qk_input and v_input (2 NH, E) and the
        bias (2 NH,), such that cat(igate, fgate) = W_qk qk_input + W_v v_input + b.

        Without gradients (inference) the result is kept until a parameter is replaced, changed in place (its
        version counter, which every in-place update such as an optimizer step or load_state_dict bumps) or given
        new storage (``model.double()``, ``.to(dtype)``): else a
        dozen small ops per block and call (234 against 19 us per ViL-T block, ~1.4 % of its inference at 224 x 8)."""
        if torch.is_grad_enabled() or torch.compiler.is_compiling():
            return self._fold_gate_weights(q_proj, k_proj, v_proj)
        params = [self.igate.weight, self.igate.bias, self.fgate.weight, self.fgate.bias]
        params += [t for proj in (q_proj, k_proj, v_proj) for t in (proj.weight, proj.bias) if t is not None]
        # the storage too: assigning .data (as module.to(dtype) does) replaces it without bumping the version
        versions = [(t._version, t.data_ptr(), t.dtype, t.device) for t in params]
        cached = self._gate_cache
        if cached is None or not all(a is b for a, b in zip(cached[0], params, strict=True)) or cached[1] != versions:
            # the parameters themselves are kept with the result: a new parameter never matches a stale entry
            self._gate_cache = cached = (params, versions, self._fold_gate_weights(q_proj, k_proj, v_proj))
        return cached[2]

    def _fold_gate_weights(self, q_proj, k_proj, v_proj) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        weight = torch.cat([self.igate.weight, self.fgate.weight])  # (2 NH, 3E)
        bias = torch.cat([self.igate.bias, self.fgate.bias])  # (2 NH,)
        (w_q, w_k, w_v), folded_bias = fold_into_linear(weight, [q_proj, k_proj, v_proj])  # (2 NH, E) each
        return w_q + w_k, w_v, bias if folded_bias is None else bias + folded_bias

    def forward(self, qk_input: torch.Tensor, v_input: torch.Tensor, q_proj, k_proj, v_proj) -> torch.Tensor:
        """q = q_proj(qk_input), k = k_proj(qk_input), v = v_proj(v_input): (B, S, E) each -> (B, NH, S, DH),
        before the output norm."""
        weights = [q_proj.weight, k_proj.weight, v_proj.weight]
        biases = [q_proj.bias, k_proj.bias, v_proj.bias] if q_proj.bias is not None else []
        inputs = [qk_input, v_input, *self.gate_weights(q_proj, k_proj, v_proj), *weights, *biases]
        # in training q, k, v and the gates are recomputed from their inputs in the backward pass rather than kept
        # (see vil.ops.projected)
        return mlstm_projected(self.project, inputs, self.backend, self.chunk_size)  # (B, NH, S, DH)


class _HeadwiseQKV:
    """q, k from qk_input and v from v_input, in the (B, NH, S, DH) layout of the cell, and the gates from both: the
    projection that :func:`mlstm_projected` recomputes in the backward pass, with a hand-written backward where the
    kernels apply."""

    def __init__(self, num_heads: int):
        self.num_heads = num_heads

    def __call__(self, qk_input, v_input, gate_wqk, gate_wv, gate_bias, *weights_and_biases):
        """-> q, k, v (B, NH, S, DH) and the input and forget gates' pre-activations (B, NH, S); ``gate_*`` as
        :meth:`MLSTMCell.gate_weights` gives them, then the q, k, v weights and (if any) biases."""
        weights, biases = list(weights_and_biases[:3]), list(weights_and_biases[3:]) or [None] * 3
        # without autograd (inference, mlstm_projected's forward pass and its recomputation) q, k, v are dead after
        # the cell: one set of buffers for all blocks
        fused = kernels.headwise_qkv(
            qk_input, v_input, weights, biases, self.num_heads, gates=(gate_wqk, gate_wv, gate_bias),
            reuse=not torch.is_grad_enabled(),
        )  # fmt: skip
        if fused is not None:  # all in one pass
            q, k, v, gates = fused
        else:
            q, k = headwise_linear(qk_input, weights[:2], biases[:2], self.num_heads)
            (v,) = headwise_linear(v_input, weights[2:], biases[2:], self.num_heads)
            gates = (F.linear(qk_input, gate_wqk, gate_bias) + F.linear(v_input, gate_wv)).transpose(1, 2)
        return q, k, v, *gates.chunk(2, dim=1)  # gates (B, 2 NH, S): igate, fgate

    def cell_shape(self, qk_input, *_) -> tuple[int, int, int, int]:
        """(B, NH, S, DH) of q, k and v."""
        batch, seq_len, dim = qk_input.shape
        return batch, self.num_heads, seq_len, dim // self.num_heads

    def parallel_forward(self, inputs, eps: float):
        """The parallel form's forward pass on q, k, v projected inside the cell kernel, never materialised (see
        :func:`vil.kernels.mlstm_parallel_headwise`): -> h and what :meth:`parallel_backward` needs (the cell's
        saved tensors, then the gates), or None where the kernels do not apply."""
        qk_input, v_input, weights, biases = self._split(inputs)
        if not kernels.headwise_cell_has_work_for_the_threads(qk_input.shape[0], self.num_heads):
            return None
        gates = kernels.headwise_gates(qk_input, v_input, tuple(inputs[2:5]))
        if gates is None:
            return None

        def cell(*gate_rows_and_options):
            return kernels.mlstm_parallel_headwise(
                qk_input, v_input, weights, biases, self.num_heads, *gate_rows_and_options
            )

        igate, fgate = gates.chunk(2, dim=1)
        result = parallel_forward_projected(cell, igate, fgate, self.cell_shape(qk_input)[3], eps)
        if result is None:
            return None
        h, saved = result
        return h, (*saved, igate, fgate)  # the gates too: the backward pass then makes no projection at all

    def parallel_backward(self, inputs, saved, dh, eps: float):
        """The backward pass of :meth:`parallel_forward`, q, k, v projected inside the kernel again and their
        projections' backward pass made there too: -> dL/d inputs, or None where the kernels do not apply."""
        qk_input, v_input, weights, biases = self._split(inputs)
        *cell_saved, igate, fgate = saved

        def cell_backward(*tensors_and_options):
            return kernels.mlstm_parallel_backward_headwise(
                qk_input, v_input, weights, biases, self.num_heads, *tensors_and_options
            )

        grads = parallel_backward_projected(
            cell_backward, igate, fgate, self.cell_shape(qk_input)[3], cell_saved, dh, eps
        )
        if grads is None:
            return None
        d_qk, d_v, *d_qkv_params, d_igate, d_fgate = grads
        d_gates = torch.cat([d_igate, d_fgate], dim=1)  # (B, 2 NH, S)
        d_gate_weights = kernels.headwise_gates_backward(qk_input, v_input, tuple(inputs[2:4]), d_gates, d_qk, d_v)
        return self._input_grads(inputs, d_qk, d_v, d_gate_weights, d_qkv_params[:3], d_qkv_params[3:])

    @staticmethod
    def _split(inputs):
        """(qk_input, v_input, the q, k, v weights, their biases or Nones) of the projection's inputs"""
        qk_input, v_input, _, _, _, *weights_and_biases = inputs
        return qk_input, v_input, list(weights_and_biases[:3]), list(weights_and_biases[3:]) or [None] * 3

    def hand_backward_applies(self, qk_input, v_input, *gates_weights_and_biases) -> bool:
        gates, weights = tuple(gates_weights_and_biases[:3]), list(gates_weights_and_biases[3:6])
        return kernels.headwise_backward_applies(qk_input, v_input, weights, self.num_heads, gates)

    @staticmethod
    def hand_backward(inputs, grads) -> list[torch.Tensor | None]:
        """dL/d inputs for dL/d (q, k, v, igate, fgate) ``grads`` (where :meth:`hand_backward_applies`)."""
        qk_input, v_input, gate_wqk, gate_wv, _, *weights = inputs[:8]
        dq, dk, dv, d_igate, d_fgate = grads
        d_gates = torch.cat([d_igate, d_fgate], dim=1)  # (B, 2 NH, S)
        d_qk, d_v, *d_weights = kernels.headwise_qkv_backward(
            qk_input, v_input, weights, [dq, dk, dv], gates=(gate_wqk, gate_wv), d_gates=d_gates
        )
        return _HeadwiseQKV._input_grads(inputs, d_qk, d_v, d_weights[6:], d_weights[:3], d_weights[3:6])

    @staticmethod
    def _input_grads(inputs, d_qk, d_v, d_gate_weights, d_qkv_weights, d_qkv_biases) -> list[torch.Tensor]:
        """The gradients in the inputs' order; without the bias gradients when there are no biases."""
        return [d_qk, d_v, *d_gate_weights, *d_qkv_weights, *d_qkv_biases][: len(inputs)]


class MLSTMBranch(nn.Module):
    """What one traversal direction owns: the short conv, q/k/v projections, the cell and the learnable skip."""

    def __init__(
        self,
        dim: int,
        inner_dim: int,
        num_heads: int,
        qkv_block_size: int,
        bias: bool,
        conv_kind: str,
        conv_kernel_size: int,
        backend: str,
        chunk_size: int | None,
    ):
        super().__init__()
        if conv_kind == "2d":
            self.conv = SequenceConv2d(inner_dim, conv_kernel_size)
        else:
            self.conv = CausalConv1d(inner_dim, conv_kernel_size)
        self.q_proj, self.k_proj, self.v_proj = (HeadwiseLinear(inner_dim, qkv_block_size, bias) for _ in range(3))
        self.mlstm_cell = MLSTMCell(inner_dim, num_heads, bias, backend, chunk_size)
        self.learnable_skip = nn.Parameter(torch.ones(inner_dim))
        for proj in (self.q_proj, self.k_proj, self.v_proj):
            nn.init.normal_(proj.weight, std=math.sqrt(2 / (5 * dim)))  # scaled by the model width, not E

    def forward(self, x: torch.Tensor, grid: tuple[int, int], has_cls: bool) -> torch.Tensor:
        """x: (B, S, E) in traversal order, read as an image of ``grid`` -> (B, S, E), before the output gate."""
        return branch_output(*self.output_inputs(x, grid, has_cls))

    def output_inputs(self, x: torch.Tensor, grid: tuple[int, int], has_cls: bool) -> list[torch.Tensor]:
        """The arguments of :func:`branch_output`: the cell output and what the norm and the skip need."""
        c = self._conv_silu(x, grid, has_cls)  # (B, S, E)
        h = self.mlstm_cell(c, x, self.q_proj, self.k_proj, self.v_proj)  # (B, NH, S, DH)
        norm = self.mlstm_cell.outnorm
        return [h, c, self.learnable_skip, norm.weight] + ([] if norm.bias is None else [norm.bias])

    def _conv_silu(self, x: torch.Tensor, grid: tuple[int, int], has_cls: bool) -> torch.Tensor:
        fused = self.conv.fused_silu(x, grid, has_cls) if isinstance(self.conv, SequenceConv2d) else None
        if fused is not None:
            return fused
        if x.requires_grad and recompute_pays_off(x):
            # recomputed in the backward pass: keeps the E-wide conv output out of the saved activations
            return checkpoint(_conv_silu, self.conv, x, grid, has_cls, use_reentrant=False)
        return _conv_silu(self.conv, x, grid, has_cls)


def _conv_silu(conv: nn.Module, x: torch.Tensor, grid: tuple[int, int], has_cls: bool) -> torch.Tensor:
    return F.silu(conv(x, grid, has_cls))


def branch_output(h, c, skip, norm_weight, norm_bias=None) -> torch.Tensor:
    """outnorm(h) + skip * c: h (B, NH, S, DH), c (B, S, E) -> (B, S, E)."""
    skip_part = c * skip if norm_bias is None else torch.addcmul(norm_bias, c, skip)  # (B, S, E), bias folded in
    return multi_head_norm(h, norm_weight, skip_part, OUTNORM_EPS)


class _GatedBranchOutput:
    """branch_output(h, c, skip, norm_weight, norm_bias) * silu(z): the single direction's input to proj_down,
    with a fused kernel for the forward and the backward pass where the kernels apply."""

    def __call__(self, z, h, c, skip, norm_weight, norm_bias=None) -> torch.Tensor:
        # without autograd the result goes straight into proj_down (gated_projection): one buffer for all blocks
        reuse = not torch.is_grad_enabled()
        fused = kernels.gated_branch_output(z, h, c, skip, norm_weight, norm_bias, OUTNORM_EPS, reuse=reuse)
        if fused is not None:
            return fused
        return branch_output(h, c, skip, norm_weight, norm_bias) * F.silu(z)

    @staticmethod
    def hand_backward(inputs, d_gated):
        z, h, c, skip, norm_weight, *norm_bias = inputs
        norm_bias = norm_bias[0] if norm_bias else None
        result = kernels.gated_branch_output_backward(
            z, h, c, skip, norm_weight, norm_bias, OUTNORM_EPS, d_gated, reuse=True
        )
        if result is None:
            return None
        gated, grads = result
        return gated, grads[: len(inputs)]


gated_branch_output = _GatedBranchOutput()


class _GateProjectedInside:
    """gated_branch_output with the output gate's pre-activation z = linear(x, z_weight, z_bias) computed inside it:
    the layer then keeps x (the normed block input, which proj_up keeps for its own backward pass anyway) instead
    of the E-wide z, and the backward pass recomputes z, at the price of one (B N, D) x (D, E) product."""

    def __init__(self, has_bias: bool):
        self.has_bias = has_bias

    def _split(self, inputs):
        """(x, z_weight, z_bias or None, the other inputs of gated_branch_output)"""
        x, z_weight, *rest = inputs
        z_bias = rest.pop(0) if self.has_bias else None
        return x, z_weight, z_bias, rest

    def __call__(self, *inputs) -> torch.Tensor:
        x, z_weight, z_bias, rest = self._split(inputs)
        return gated_branch_output(F.linear(x, z_weight, z_bias), *rest)

    def hand_backward(self, inputs, d_gated):
        x, z_weight, z_bias, rest = self._split(inputs)
        result = gated_branch_output.hand_backward([F.linear(x, z_weight, z_bias), *rest], d_gated)
        if result is None:
            return None
        gated, (dz, *d_rest) = result
        d_z_weight, d_z_bias = linear_parameter_grads(dz, x, self.has_bias)
        return gated, [dz @ z_weight, d_z_weight, *([d_z_bias] if self.has_bias else []), *d_rest]


# From this many tokens per image on, training recomputes the output gate's z in the backward pass instead of keeping
# it (a sixth of what a block keeps): at 1024 px (4096 tokens) this lowered ViL-T's training-step memory growth from
# ~1054 to ~967 MiB for ~5 % more time per step (one more (D x E) product per block), measured with
# benchmarks/user_script.py; at high resolution memory is what limits the image size. Shorter sequences keep z.
RECOMPUTE_Z_MIN_TOKENS = 1024


def _gate(z: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    return h * F.silu(z)


class MLSTMLayer(nn.Module):
    """proj_up -> one branch per traversal (summed) -> output gate SiLU(z) -> proj_down."""

    def __init__(
        self,
        dim: int,
        traversals: tuple[Traversal, ...],
        shared: bool,
        num_blocks: int,
        expansion: int = 2,
        num_heads: int = 4,
        qkv_block_size: int = 4,
        bias: bool = True,
        conv_kind: str = "2d",
        conv_kernel_size: int = 3,
        backend: str = "auto",
        chunk_size: int | None = None,
        init: str = "original",
    ):
        super().__init__()
        inner_dim = expansion * dim
        self.traversals = traversals
        self.shared = shared
        self.proj_up = nn.Linear(dim, 2 * inner_dim, bias=bias)
        num_branches = 1 if shared else len(traversals)
        self.branches = nn.ModuleList(
            MLSTMBranch(
                dim, inner_dim, num_heads, qkv_block_size, bias, conv_kind, conv_kernel_size, backend, chunk_size
            )
            for _ in range(num_branches)
        )
        self.proj_down = nn.Linear(inner_dim, dim, bias=bias)

        nn.init.normal_(self.proj_up.weight, std=math.sqrt(2 / (5 * dim)))
        # "original" is what the released weights used; "original-fixed" scales with the number of mLSTM blocks
        down_std = 2 / math.sqrt(dim) / (num_blocks if init == "original-fixed" else 1)
        nn.init.normal_(self.proj_down.weight, std=down_std)
        for linear in (self.proj_up, self.proj_down):
            if linear.bias is not None:
                nn.init.zeros_(linear.bias)

    def forward(self, x: torch.Tensor, grid: tuple[int, int], has_cls: bool) -> torch.Tensor:
        """x: (B, N, D) row-major tokens on ``grid`` -> (B, N, D)."""
        if len(self.traversals) == 1:
            # one direction: reorder the narrow (D-wide) input and output instead of the E-wide branch tensors
            traversal = self.traversals[0]
            x = to_traversal(x, grid, traversal, has_cls)
            (x_weight, z_weight), (x_bias, z_bias) = self._up_halves()
            x_mlstm = F.linear(x, x_weight, x_bias)
            h_inputs = self.branches[0].output_inputs(x_mlstm, traversal_grid(grid, traversal), has_cls)
            if x.shape[1] >= RECOMPUTE_Z_MIN_TOKENS and hand_recompute_applies(x_mlstm):
                make_gated = _GateProjectedInside(z_bias is not None)
                gated_inputs = [x, z_weight, *([] if z_bias is None else [z_bias]), *h_inputs]
            else:
                make_gated, gated_inputs = gated_branch_output, [F.linear(x, z_weight, z_bias), *h_inputs]
            out = gated_projection(make_gated, gated_inputs, self.proj_down.weight, self.proj_down.bias)
            return from_traversal(out, grid, traversal, has_cls)
        x_mlstm, z = self._project_up(x)
        h = None
        for index, traversal in enumerate(self.traversals):
            branch = self.branches[0 if self.shared else index]
            h_t = branch(to_traversal(x_mlstm, grid, traversal, has_cls), traversal_grid(grid, traversal), has_cls)
            h_t = from_traversal(h_t, grid, traversal, has_cls)
            h = h_t if h is None else h + h_t
        # the output gate is per token, so it commutes with the reordering and is applied once to the sum
        return gated_projection(_gate, [z, h], self.proj_down.weight, self.proj_down.bias)

    def _up_halves(self):
        """proj_up's weight and bias as the halves that make x_mlstm and z: ((W_x, W_z), (b_x, b_z))."""
        weights = self.proj_up.weight.chunk(2, dim=0)
        return weights, (None, None) if self.proj_up.bias is None else self.proj_up.bias.chunk(2)

    def _project_up(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """proj_up as two products, so that x_mlstm and z each come out contiguous (B, N, E): the conv then reads
        x_mlstm in place instead of copying a strided half of the (B, N, 2E) output."""
        (x_weight, z_weight), (x_bias, z_bias) = self._up_halves()
        return F.linear(x, x_weight, x_bias), F.linear(x, z_weight, z_bias)


class ViLBlock(nn.Module):
    """x + drop_path(MLSTMLayer(LayerNorm(x)))."""

    def __init__(self, dim: int, drop_path: float = 0.0, norm_bias: bool = True, **layer_kwargs):
        super().__init__()
        self.norm = ResidualLayerNorm(dim, bias=norm_bias)
        self.layer = MLSTMLayer(dim, bias=norm_bias, **layer_kwargs)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, grid: tuple[int, int], has_cls: bool = False) -> torch.Tensor:
        return x + self.drop_path(self.layer(self.norm(x), grid, has_cls))
