"""The fused CPU kernels (vil.kernels): same numbers as the PyTorch expressions they replace, and a clean fallback."""

import logging
import platform

import pytest
import torch
import torch.nn.functional as F

from vil import ViLConfig, VisionLSTM, kernels
from vil.layers.conv import SequenceConv2d
from vil.layers.headwise import headwise_linear
from vil.layers.norm import multi_head_norm
from vil.ops import MLSTMState, mlstm
from vil.ops.parallel import (
    parallel_backward,
    parallel_backward_projected,
    parallel_forward,
    parallel_forward_projected,
)

# (B, H, W, NH, DH): ViL-T's head size; and one whose widths leave a remainder after the vector loops
SHAPES = [(2, 4, 5, 4, 96), (3, 3, 3, 2, 20)]
pytestmark = pytest.mark.skipif(kernels.library() is None, reason="the kernels could not be built here")


@pytest.fixture
def fresh_kernels(tmp_path, monkeypatch):
    """A private cache directory and a library that is looked up again; the shared one is restored afterwards."""
    monkeypatch.setenv(kernels.CACHE, str(tmp_path / "cache"))
    kernels.reset()
    yield tmp_path / "cache"
    monkeypatch.undo()
    kernels.reset()


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
def test_headwise_qkv_matches_the_grouped_products(shape, with_bias):
    batch, height, width, heads, head_dim = shape
    qk_in, v_in = (torch.randn(batch, height * width, heads * head_dim) for _ in range(2))
    weights = [torch.randn(heads * head_dim // 4, 4, 4) for _ in range(3)]
    biases = [torch.randn(heads * head_dim) if with_bias else None for _ in range(3)]
    q, k, v = kernels.headwise_qkv(qk_in, v_in, weights, biases, heads)
    expected = headwise_linear(qk_in, weights[:2], biases[:2], heads)
    expected += headwise_linear(v_in, weights[2:], biases[2:], heads)
    for got, want in zip((q, k, v), expected, strict=True):
        assert got.shape == (batch, heads, height * width, head_dim)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # the gate pre-activations read in the same pass: two linear maps of the inputs
    gate_weights = (torch.randn(6, heads * head_dim), torch.randn(6, heads * head_dim), torch.randn(6))
    *_, gates = kernels.headwise_qkv(qk_in, v_in, weights, biases, heads, gates=gate_weights)
    expected_gates = F.linear(qk_in, gate_weights[0], gate_weights[2]) + F.linear(v_in, gate_weights[1])
    torch.testing.assert_close(gates, expected_gates.transpose(1, 2), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("num_gates", [0, 6, 8, 12])  # none; partial, one full (ViL's 2 NH) and 1.5 register tiles
@pytest.mark.parametrize("shape", SHAPES)
def test_headwise_qkv_backward_matches_autograd(shape, num_gates):
    batch, height, width, heads, head_dim = shape
    dim, seq_len = heads * head_dim, height * width

    def leaf(*size):
        return torch.randn(*size, requires_grad=True)

    qk_in, v_in = leaf(batch, seq_len, dim), leaf(batch, seq_len, dim)
    weights, biases = [leaf(dim // 4, 4, 4) for _ in range(3)], [leaf(dim) for _ in range(3)]
    gates = [leaf(num_gates, dim), leaf(num_gates, dim), leaf(num_gates)]
    q, k = headwise_linear(qk_in, weights[:2], biases[:2], heads)
    (v,) = headwise_linear(v_in, weights[2:], biases[2:], heads)
    outputs, leaves = [q, k, v], [qk_in, v_in, *weights, *biases]
    if num_gates:
        outputs.append((F.linear(qk_in, gates[0], gates[2]) + F.linear(v_in, gates[1])).transpose(1, 2))
        leaves += gates
    grads = [torch.randn_like(t) for t in outputs]
    expected = torch.autograd.grad(outputs, leaves, grads)
    with torch.no_grad():
        got = kernels.headwise_qkv_backward(
            qk_in, v_in, weights, grads[:3], *((gates[:2], grads[3]) if num_gates else ())
        )
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item())


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
def test_parallel_cell_projecting_inside_gives_the_same_bits(shape, with_bias, monkeypatch):
    # q, k, v made inside the cell kernel, matrix by matrix, never materialised: the same values as projecting
    # first (headwise_qkv) and running the cell on them (mlstm_parallel)
    batch, height, width, heads, head_dim = shape
    dim, seq_len = heads * head_dim, height * width
    qk_in, v_in = (torch.randn(batch, seq_len, dim) for _ in range(2))
    weights = [torch.randn(dim // 4, 4, 4) * 0.3 for _ in range(3)]
    biases = [torch.randn(dim) if with_bias else None for _ in range(3)]
    gate_weights = (torch.randn(2 * heads, dim) * 0.1, torch.randn(2 * heads, dim) * 0.1, torch.randn(2 * heads) + 1)
    q, k, v, gates = kernels.headwise_qkv(qk_in, v_in, weights, biases, heads, gates=gate_weights)
    assert torch.equal(kernels.headwise_gates(qk_in, v_in, gate_weights), gates)
    igate, fgate = gates.chunk(2, dim=1)
    want_h, (_, want_den) = parallel_forward(q, k, v, igate, fgate)

    def cell(*rows):
        return kernels.mlstm_parallel_headwise(qk_in, v_in, weights, biases, heads, *rows)

    monkeypatch.setattr(kernels, "HEADWISE_CELL_MATRICES_PER_THREAD", 1)  # the few matrices of these shapes
    got_h, (_, got_den) = parallel_forward_projected(cell, igate, fgate, head_dim)
    assert torch.equal(got_h, want_h) and torch.equal(got_den, want_den)
    # and the backward pass, projecting again inside its kernel, and the projections' backward pass there too: the
    # same input and gate gradients as the cell's backward pass followed by the projections'; the weight sums are
    # grouped differently (per matrix, not per part of PART_ROWS tokens)
    d_h = torch.randn(*want_h.shape)
    dq, dk, dv, *want_gate_grads = parallel_backward(q, k, v, igate, fgate, (want_h, want_den), d_h)
    want_projected = kernels.headwise_qkv_backward(qk_in, v_in, weights, [dq, dk, dv])
    want_input_grads, want_param_grads = want_projected[:2], want_projected[2:]

    def cell_backward(*tensors):
        return kernels.mlstm_parallel_backward_headwise(qk_in, v_in, weights, biases, heads, *tensors)

    got = parallel_backward_projected(cell_backward, igate, fgate, head_dim, (got_h, got_den), d_h)
    got_exact, got_param_grads = [*got[:2], *got[-2:]], got[2:-2]  # input and gate gradients; the weight sums
    for got_grad, want_grad in zip(got_exact, [*want_input_grads, *want_gate_grads], strict=True):
        assert torch.equal(got_grad, want_grad)
    for got_param, want_param in zip(got_param_grads, want_param_grads, strict=True):
        torch.testing.assert_close(got_param, want_param, rtol=1e-5, atol=1e-5 * want_param.abs().max().item())
    # then the gates' share, added into those input gradients: as the one-pass projection backward with the gates
    # gives it; dL/d qk_input adds it after both q's and k's shares instead of between them (the last bits differ)
    d_gates = torch.cat(got[-2:], dim=1)
    want = kernels.headwise_qkv_backward(qk_in, v_in, weights, [dq, dk, dv], gates=gate_weights[:2], d_gates=d_gates)
    d_qk, d_v = got[0].clone(), got[1].clone()
    got_gate_sums = kernels.headwise_gates_backward(qk_in, v_in, gate_weights[:2], d_gates, d_qk, d_v)
    assert torch.equal(d_v, want[1])
    torch.testing.assert_close(d_qk, want[0], rtol=1e-5, atol=1e-5 * want[0].abs().max().item())
    for got_sum, want_sum in zip(got_gate_sums, want[-3:], strict=True):
        assert torch.equal(got_sum, want_sum)
    # too few matrices for the threads: it steps aside (the strips of mlstm_parallel spread better)
    monkeypatch.setattr(kernels, "HEADWISE_CELL_MATRICES_PER_THREAD", batch * heads + 1)
    assert parallel_forward_projected(cell, igate, fgate, head_dim) is None


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
def test_gated_branch_output_matches_norm_skip_and_gate(shape, with_bias):
    batch, height, width, heads, head_dim = shape
    dim, tokens = heads * head_dim, height * width
    h = torch.randn(batch, heads, tokens, head_dim) * 3 + 1
    c, z = torch.randn(batch, tokens, dim), torch.randn(batch, tokens, dim) * 8  # SiLU far into both tails
    skip, weight = torch.randn(dim), torch.randn(dim)
    bias = torch.randn(dim) if with_bias else None
    got = kernels.gated_branch_output(z, h, c, skip, weight, bias, 1e-5)
    base = c * skip if bias is None else torch.addcmul(bias, c, skip)
    torch.testing.assert_close(got, multi_head_norm(h, weight, base, 1e-5) * F.silu(z), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel_size", [3, 5])
@pytest.mark.parametrize("shape", [*SHAPES, (2, 3, 4, 1, 44)])  # 44 channels: register blocks, a vector, a tail
def test_conv2d_silu_matches_the_depthwise_conv(shape, kernel_size):
    batch, height, width, heads, head_dim = shape
    conv = SequenceConv2d(heads * head_dim, kernel_size)
    x = torch.randn(batch, height * width, heads * head_dim)
    with torch.no_grad():
        torch.testing.assert_close(
            kernels.conv2d_silu(x, (height, width), conv.weight, conv.bias),
            F.silu(conv(x, (height, width))),
            rtol=1e-5,
            atol=1e-5,
        )


def test_kernels_step_aside_where_they_do_not_apply():
    x = torch.randn(1, 4, 8)
    weights, biases = [torch.randn(2, 4, 4)] * 3, [None] * 3
    assert kernels.headwise_qkv(x, x, weights, biases, 2) is not None
    assert kernels.headwise_qkv(x.double(), x.double(), [w.double() for w in weights], biases, 2) is None
    assert kernels.headwise_qkv(x.requires_grad_(), x, weights, biases, 2) is None  # autograd needs torch ops
    with torch.no_grad():
        assert kernels.headwise_qkv(x, x, weights, biases, 2) is not None
        assert kernels.headwise_qkv(x, x, [torch.randn(1, 8, 8)] * 3, biases, 2) is None  # blocks of 8, not 4
        wide = torch.randn(1, 4, 12)  # 3 heads of 4 tile the 4 x 4 blocks, 2 heads of 6 would split one
        assert kernels.headwise_qkv(wide, wide, [torch.randn(3, 4, 4)] * 3, biases, 3) is not None
        assert kernels.headwise_qkv(wide, wide, [torch.randn(3, 4, 4)] * 3, biases, 2) is None
        assert not kernels.headwise_backward_applies(wide, wide, [torch.randn(3, 4, 4)] * 3, 2)
        with kernels.disabled():
            assert kernels.headwise_qkv(x, x, weights, biases, 2) is None


@pytest.mark.parametrize("version", [1, 2])
def test_model_gives_the_same_outputs_and_gradients_with_and_without_kernels(version, recompute_mode):
    _check_model_with_and_without_kernels(version)


def _check_model_with_and_without_kernels(version: int) -> None:
    config = ViLConfig(dim=32, depth=2, img_size=32, patch_size=8, num_classes=5, version=version)
    model = VisionLSTM(config)
    images = torch.randn(2, 3, 32, 32)

    def run():
        model.zero_grad()
        model(images).square().sum().backward()
        with torch.no_grad():
            return model.eval()(images), [p.grad.clone() for p in model.train().parameters()]

    with_kernels = run()
    with kernels.disabled():
        without = run()
    torch.testing.assert_close(with_kernels[0], without[0], rtol=1e-5, atol=1e-5)
    for got, want in zip(with_kernels[1], without[1], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_build_is_cached_and_reused(fresh_kernels):
    assert kernels.library() is not None
    (built,) = fresh_kernels.glob("*.so")
    stamp = built.stat().st_mtime_ns
    kernels.reset()
    assert kernels.library() is not None
    assert [p.name for p in fresh_kernels.iterdir()] == [built.name]  # no second build, no temporary left over
    assert built.stat().st_mtime_ns == stamp


def test_failed_build_falls_back_to_torch_with_a_warning(fresh_kernels, monkeypatch, caplog):
    monkeypatch.setenv("CC", "false")  # a "compiler" that always fails
    with caplog.at_level(logging.WARNING, logger="vil.kernels"):
        assert kernels.library() is None
    assert "building the fused CPU kernels failed" in caplog.text
    assert not list(fresh_kernels.glob("*"))  # nothing half-written in the cache
    model = VisionLSTM(ViLConfig(dim=32, depth=2, img_size=32, patch_size=8, num_classes=5)).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 5)


def test_switched_off_by_the_environment(fresh_kernels, monkeypatch):
    monkeypatch.setenv(kernels.SWITCH, "0")
    assert kernels.library() is None
    assert not fresh_kernels.exists()


# (S, DH, DHV): several row strips and tiles with a padded last chunk of 16 (chunkwise); head sizes that leave
# remainders after the vector loops and the register tiles, and value heads of another size than q/k's
CELL_SHAPES = [(150, 24, 24), (37, 96, 20), (70, 20, 100)]


def _cell_inputs(seq_len, head_dim, value_dim, gate_scale):
    q, k = (torch.randn(2, 3, seq_len, head_dim) for _ in range(2))
    v = torch.randn(2, 3, seq_len, value_dim)
    return [q, k, v] + [torch.randn(2, 3, seq_len) * gate_scale for _ in range(2)]


def _assert_as_accurate(got, want, exact):
    """The kernels' float32 results are no further from float64's than the PyTorch expression's (with large gates
    either path rounds at ~1e-5 of the largest value, differently on AVX-512, AVX2 and plain C)."""
    assert torch.isfinite(got).all()  # float32's exp(-M) overflows for M < -88: results must not
    scale = exact.abs().max().item()
    kernel_error, torch_error = ((y.double() - exact).abs().max().item() for y in (got, want))
    assert kernel_error <= 2 * torch_error + 1e-5 * scale  # float32: ~1e-5 relative (docs/design.md §2)


@pytest.mark.parametrize("backend", ["parallel", "chunkwise"])
@pytest.mark.parametrize("gate_scale", [1.0, 50.0])  # large gates stress the clamped exponent
@pytest.mark.parametrize("shape", CELL_SHAPES)
def test_cell_kernels_are_as_accurate_as_torch(backend, gate_scale, shape):
    inputs = _cell_inputs(*shape, gate_scale)
    with torch.no_grad():
        exact = mlstm(*(x.double() for x in inputs), backend=backend, chunk_size=16)
        got = mlstm(*inputs, backend=backend, chunk_size=16)
        with kernels.disabled():
            want = mlstm(*inputs, backend=backend, chunk_size=16)
    _assert_as_accurate(got, want, exact)


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86 instruction sets")
@pytest.mark.parametrize("isa_flags", [("-mavx2", "-mfma"), ("-mno-avx",)], ids=["avx2", "plain-c"])
def test_narrower_instruction_sets_compute_the_same(fresh_kernels, monkeypatch, isa_flags):
    # the AVX2 and the plain C paths of the kernels, built here in place of -march=native's
    flags = tuple(f for f in kernels.build.FLAGS if f != "-march=native") + isa_flags
    monkeypatch.setattr(kernels.build, "FLAGS", flags)
    assert kernels.library() is not None
    for version in (1, 2):
        _check_model_with_and_without_kernels(version)
    for backend in ("parallel", "chunkwise"):
        test_cell_kernels_are_as_accurate_as_torch(backend, 50.0, CELL_SHAPES[2])
        test_cell_backward_kernels_are_as_accurate_as_torch(backend, 50.0, CELL_SHAPES[1])


@pytest.mark.parametrize("shape", CELL_SHAPES)
def test_chunkwise_kernel_carries_the_state_as_torch_does(shape):
    q, k, v, igate, fgate = _cell_inputs(*shape, 3.0)
    batch, heads, _, head_dim = q.shape
    state = MLSTMState(
        c=torch.randn(batch, heads, head_dim, v.shape[-1]), n=torch.randn(batch, heads, head_dim),
        m=torch.randn(batch, heads),
    )  # fmt: skip
    with torch.no_grad():
        got = mlstm(q, k, v, igate, fgate, backend="chunkwise", chunk_size=16, initial_state=state, return_state=True)
        with kernels.disabled():
            want = mlstm(q, k, v, igate, fgate, "chunkwise", chunk_size=16, initial_state=state, return_state=True)
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)
    for g, w in zip(got[1], want[1], strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["parallel", "chunkwise"])
@pytest.mark.parametrize("gate_scale", [5.0, 50.0])
@pytest.mark.parametrize("shape", CELL_SHAPES)
def test_cell_backward_kernels_are_as_accurate_as_torch(backend, gate_scale, shape):
    # large gates make gradients of 1e4 whose float32 rounding is ~1e-4 of that in either path: both are measured
    # against float64 (where the kernels step aside)
    inputs = _cell_inputs(*shape, gate_scale)
    d_h = torch.randn(*inputs[2].shape)

    def gradients(dtype=torch.float32):
        leaves = [x.to(dtype, copy=True).requires_grad_() for x in inputs]
        mlstm(*leaves, backend=backend, chunk_size=16).backward(d_h.to(dtype))
        return [x.grad for x in leaves]

    exact, got = gradients(torch.float64), gradients()
    with kernels.disabled():
        want = gradients()
    for g, w, x in zip(got, want, exact, strict=True):
        _assert_as_accurate(g, w, x)


@pytest.mark.parametrize("shape", CELL_SHAPES)
def test_chunkwise_state_gradients_are_as_accurate_as_torch(shape):
    # the state recurrence's backward pass (kernels.mlstm_state_backward) with a state in and out: the loss reads
    # the final state too, so dL/d(c, n, m) of the initial state and the final state's gradients all take part
    inputs = _cell_inputs(*shape, 3.0)
    batch, heads, _, head_dim = inputs[0].shape
    state = [torch.randn(batch, heads, head_dim, inputs[2].shape[-1]), torch.randn(batch, heads, head_dim),
             torch.randn(batch, heads)]  # fmt: skip
    weights = [torch.randn(*x.shape) for x in (inputs[2], *state)]

    def gradients(dtype=torch.float32):
        leaves = [x.to(dtype, copy=True).requires_grad_() for x in (*inputs, *state)]
        h, final = mlstm(*leaves[:5], backend="chunkwise", chunk_size=16, initial_state=MLSTMState(*leaves[5:]),
                         return_state=True)  # fmt: skip
        sum((y * w.to(dtype)).sum() for y, w in zip((h, *final), weights, strict=True)).backward()
        return [x.grad for x in leaves]

    exact, got = gradients(torch.float64), gradients()
    with kernels.disabled():
        want = gradients()
    for g, w, x in zip(got, want, exact, strict=True):
        _assert_as_accurate(g, w, x)


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
def test_gated_branch_output_backward_matches_autograd(shape, with_bias):
    batch, height, width, heads, head_dim = shape
    dim, tokens = heads * head_dim, height * width
    inputs = [torch.randn(batch, tokens, dim) * 4, torch.randn(batch, heads, tokens, head_dim) * 3 + 1]
    inputs += [torch.randn(batch, tokens, dim), torch.randn(dim), torch.randn(dim)]
    inputs += [torch.randn(dim)] if with_bias else [None]
    d_out = torch.randn(batch, tokens, dim)
    with torch.no_grad():  # as in a backward pass
        gated, grads = kernels.gated_branch_output_backward(*inputs, 1e-5, d_out)

    leaves = [None if x is None else x.clone().requires_grad_() for x in inputs]
    z, h, c, skip, weight, bias = leaves
    base = c * skip if bias is None else torch.addcmul(bias, c, skip)
    expected = multi_head_norm(h, weight, base, 1e-5) * F.silu(z)
    expected.backward(d_out)
    torch.testing.assert_close(gated, expected.detach(), rtol=1e-5, atol=1e-5)
    for got, leaf in zip(grads, leaves, strict=True):
        if leaf is None:
            assert got is None
        else:
            torch.testing.assert_close(got, leaf.grad, rtol=1e-4, atol=1e-4)


def test_conv_kernels_step_aside_for_kernels_their_stack_arrays_do_not_hold():
    conv = SequenceConv2d(8, kernels.MAX_CONV_KERNEL + 2)
    x = torch.randn(1, 20 * 20, 8)
    assert kernels.conv2d_silu(x, (20, 20), conv.weight, conv.bias) is None
    assert conv.fused_silu(x, (20, 20)) is None  # the block then computes the PyTorch expression


# kernel 5: 25 taps, more than the weight sums keep in registers at once; 44 channels: a tail past the vectors
@pytest.mark.parametrize(("with_bias", "kernel_size", "channels"), [(True, 3, 40), (False, 3, 40), (True, 5, 44)])
def test_fused_conv_silu_gradients_match_torch(with_bias, kernel_size, channels):
    conv = SequenceConv2d(channels, kernel_size, bias=with_bias)
    x = torch.randn(2, 4 * 5, channels, requires_grad=True)
    d_out = torch.randn(2, 20, channels)
    conv.fused_silu(x, (4, 5)).backward(d_out)
    fused = [x.grad] + [p.grad for p in conv.parameters()]
    x.grad = None
    conv.zero_grad()
    F.silu(conv(x, (4, 5))).backward(d_out)
    for got, want in zip(fused, [x.grad] + [p.grad for p in conv.parameters()], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
