"""The three forms of the mLSTM cell compute one function (docs/design.md §2)."""

import pytest
import torch

from vil.ops import MLSTMState, choose_backend, empty_state, mlstm, mlstm_recurrent_step

FORMS = ("parallel", "chunkwise", "recurrent")


def make_inputs(batch=2, heads=3, seq_len=37, head_dim=8, gate_scale=1.0, dtype=torch.float64, value_dim=None):
    q, k = (torch.randn(batch, heads, seq_len, head_dim, dtype=dtype) for _ in range(2))
    v = torch.randn(batch, heads, seq_len, value_dim or head_dim, dtype=dtype)
    igate = (torch.rand(batch, heads, seq_len, dtype=dtype) * 2 - 1) * gate_scale
    fgate = (torch.rand(batch, heads, seq_len, dtype=dtype) * 2 - 1) * gate_scale + 3.0
    return [t.requires_grad_() for t in (q, k, v, igate, fgate)]


def forward_backward(inputs, **kwargs):
    h = mlstm(*inputs, **kwargs)
    weights = torch.linspace(-1, 1, h.shape[-1], dtype=h.dtype)  # a loss that mixes all outputs
    grads = torch.autograd.grad((h * weights).sum(), inputs)
    return h, grads


def rel_err(a, b):
    """Largest deviation relative to the largest reference value (0 when both are exactly zero)."""
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()


@pytest.mark.parametrize("form", ["chunkwise", "recurrent"])
@pytest.mark.parametrize(
    "seq_len,chunk_size,gate_scale",
    [(37, 8, 1.0), (64, 16, 1.0), (50, 16, 50.0), (5, 64, 1.0), (100, 7, 10.0), (1, 4, 50.0)],
)
def test_forms_agree_float64_forward_and_backward(form, seq_len, chunk_size, gate_scale):
    inputs = make_inputs(seq_len=seq_len, gate_scale=gate_scale)
    h_ref, g_ref = forward_backward(inputs, backend="parallel")
    h, g = forward_backward(inputs, backend=form, chunk_size=chunk_size)
    assert rel_err(h, h_ref) < 1e-10
    # relative to the largest gradient of any input: some are ~0 (the first token's forget gate does nothing)
    scale = max(b.abs().max().item() for b in g_ref)
    for name, a, b in zip(["q", "k", "v", "igate", "fgate"], g, g_ref, strict=True):
        assert (a - b).abs().max().item() < 1e-10 * scale, name


@pytest.mark.parametrize("form", FORMS)
def test_float32_matches_float64_truth(form):
    inputs64 = [t.detach() for t in make_inputs(seq_len=150, head_dim=16)]
    truth = mlstm(*inputs64, backend="recurrent")
    h = mlstm(*(t.float() for t in inputs64), backend=form, chunk_size=32)
    assert h.dtype == torch.float32
    assert rel_err(h.double(), truth) < 1e-5


def test_extreme_gates_stay_finite_in_float32():
    inputs = [t.detach().float() for t in make_inputs(seq_len=300, gate_scale=50.0)]
    for form in FORMS:
        h = mlstm(*inputs, backend=form, chunk_size=64)
        assert torch.isfinite(h).all(), form


def test_value_dim_may_differ_from_head_dim():
    inputs = make_inputs(seq_len=20, head_dim=8, value_dim=5)
    h_ref, _ = forward_backward(inputs, backend="parallel")
    h, _ = forward_backward(inputs, backend="chunkwise", chunk_size=6)
    assert h.shape == (2, 3, 20, 5)
    assert rel_err(h, h_ref) < 1e-10


@pytest.mark.parametrize("form", ["chunkwise", "recurrent"])
def test_state_carries_a_split_sequence(form):
    q, k, v, i, f = (t.detach() for t in make_inputs(seq_len=45))
    whole = mlstm(q, k, v, i, f, backend="parallel")
    cut = 19
    first, state = mlstm(q[:, :, :cut], k[:, :, :cut], v[:, :, :cut], i[..., :cut], f[..., :cut],
                         backend=form, chunk_size=8, return_state=True)  # fmt: skip
    second, final = mlstm(q[:, :, cut:], k[:, :, cut:], v[:, :, cut:], i[..., cut:], f[..., cut:],
                          backend=form, chunk_size=8, initial_state=state, return_state=True)  # fmt: skip
    assert rel_err(torch.cat([first, second], dim=2), whole) < 1e-10
    _, final_whole = mlstm(q, k, v, i, f, backend="recurrent", return_state=True)
    for a, b in zip(final, final_whole, strict=True):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


def test_chunkwise_and_recurrent_final_states_agree():
    inputs = [t.detach() for t in make_inputs(seq_len=70, gate_scale=20.0)]
    _, s_chunk = mlstm(*inputs, backend="chunkwise", chunk_size=16, return_state=True)
    _, s_rec = mlstm(*inputs, backend="recurrent", return_state=True)
    # states are stabilised by m: compare the unstabilised memory c * exp(m) relative to its size
    for a, b in ((s_chunk.c, s_rec.c), (s_chunk.n, s_rec.n)):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)
    assert torch.allclose(s_chunk.m, s_rec.m, rtol=1e-12)


def test_streaming_steps_equal_the_sequence():
    q, k, v, i, f = (t.detach() for t in make_inputs(seq_len=12))
    state = empty_state(q, v)
    outputs = []
    for t in range(12):
        h, state = mlstm_recurrent_step(state, q[:, :, t], k[:, :, t], v[:, :, t], i[..., t], f[..., t])
        outputs.append(h)
    assert rel_err(torch.stack(outputs, dim=2), mlstm(q, k, v, i, f, backend="parallel")) < 1e-10


def test_empty_state_means_no_past():
    state = empty_state(torch.zeros(2, 3, 5, 4), torch.zeros(2, 3, 5, 6))
    assert state.c.shape == (2, 3, 4, 6) and state.n.shape == (2, 3, 4)
    assert torch.isneginf(state.m).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_computes_in_float32(dtype):
    inputs = [t.detach().float() for t in make_inputs(seq_len=40, head_dim=16)]
    low = [t.to(dtype) for t in inputs]
    expected = mlstm(*(t.float() for t in low), backend="chunkwise", chunk_size=16).to(dtype)
    with torch.autocast("cpu", dtype=dtype):
        h = mlstm(*low, backend="chunkwise", chunk_size=16)
    assert h.dtype == dtype
    assert torch.equal(h, expected)


def test_auto_picks_parallel_for_short_and_chunkwise_for_long_sequences():
    assert choose_backend(196, 96, needs_grad=False, stateful=False)[0] == "parallel"
    assert choose_backend(4096, 96, needs_grad=False, stateful=False)[0] == "chunkwise"
    assert choose_backend(16, 96, needs_grad=False, stateful=True)[0] == "chunkwise"
    # larger heads make the state (d x d) dearer: the parallel form stays faster for longer
    assert choose_backend(729, 96, needs_grad=False, stateful=False)[0] == "chunkwise"
    assert choose_backend(729, 384, needs_grad=False, stateful=False)[0] == "parallel"
    inputs = [t.detach() for t in make_inputs(seq_len=600, head_dim=4, batch=1, heads=1)]
    assert rel_err(mlstm(*inputs), mlstm(*inputs, backend="parallel")) < 1e-10


def test_bad_input_is_rejected_with_a_clear_message():
    q, k, v, i, f = (t.detach() for t in make_inputs(seq_len=10))
    with pytest.raises(ValueError, match="unknown mLSTM backend 'fast'.*parallel"):
        mlstm(q, k, v, i, f, backend="fast")
    with pytest.raises(ValueError, match="k has shape"):
        mlstm(q, k[:, :, :5], v, i, f)
    with pytest.raises(ValueError, match="igate has shape"):
        mlstm(q, k, v, i[..., :5], f)
    with pytest.raises(ValueError, match="chunk_size"):
        mlstm(q, k, v, i, f, backend="chunkwise", chunk_size=0)
    with pytest.raises(ValueError, match="no state"):
        mlstm(q, k, v, i, f, backend="parallel", return_state=True)
    bad_state = MLSTMState(torch.zeros(1), torch.zeros(1), torch.zeros(1))
    with pytest.raises(ValueError, match="initial_state.c has shape"):
        mlstm(q, k, v, i, f, backend="chunkwise", initial_state=bad_state)


class TestAgainstMlstmKernels:
    """Cross-check with the pure-PyTorch references in the PyPI package mlstm_kernels (not written here).

    They start the stabiliser m at 0 rather than -inf, which changes results only through eps (~1e-8 relative).
    """

    kernels = pytest.importorskip("mlstm_kernels.torch")

    def inputs(self, seq_len=64):
        return [t.detach() for t in make_inputs(seq_len=seq_len, head_dim=16, gate_scale=3.0)]

    def test_parallel(self):
        from mlstm_kernels.torch.parallel.native import mlstm_parallel__native_autograd

        inputs = self.inputs()
        assert rel_err(mlstm(*inputs, backend="parallel"), mlstm_parallel__native_autograd(*inputs)) < 1e-12

    @pytest.mark.parametrize("form", ["chunkwise", "recurrent"])
    def test_chunkwise(self, form):
        from mlstm_kernels.torch.chunkwise.native import mlstm_chunkwise__native_autograd

        inputs = self.inputs()
        theirs = mlstm_chunkwise__native_autograd(*inputs, chunk_size=16)
        assert rel_err(mlstm(*inputs, backend=form, chunk_size=16), theirs) < 1e-7

    def test_recurrent_with_states(self):
        from mlstm_kernels.torch.recurrent.native_sequence import mlstm_recurrent_sequence__native_fw

        inputs = self.inputs(seq_len=30)
        theirs, (c, n, m) = mlstm_recurrent_sequence__native_fw(
            *inputs, return_last_states=True, dtype_state=torch.float64
        )
        ours, state = mlstm(*inputs, backend="recurrent", return_state=True)
        assert rel_err(ours, theirs) < 1e-7
        # same memory once both are unstabilised (c * exp(m)); they scale q by 1/sqrt(DH) where we scale k
        ours_c = state.c * state.m.exp()[..., None, None] * inputs[0].shape[-1] ** 0.5
        assert torch.allclose(ours_c, c * m.exp()[..., None], rtol=1e-7)


@pytest.mark.parametrize("form", ["parallel", "chunkwise"])
def test_hand_written_backward_passes_gradcheck(form):
    """Numerical gradients of the hand-written backward passes, including the initial and final states."""
    q, k, v, i, f = make_inputs(batch=1, heads=2, seq_len=11, head_dim=3, gate_scale=3.0)
    if form == "parallel":
        assert torch.autograd.gradcheck(lambda *x: mlstm(*x, backend="parallel"), (q, k, v, i, f))
        return
    c0, n0, m0 = (
        torch.randn(*shape, dtype=torch.float64, requires_grad=True) for shape in [(1, 2, 3, 3), (1, 2, 3), (1, 2)]
    )

    def run(q, k, v, i, f, c0, n0, m0):
        h, state = mlstm(q, k, v, i, f, backend="chunkwise", chunk_size=4,
                         initial_state=MLSTMState(c0, n0, m0), return_state=True)  # fmt: skip
        return h, *state

    assert torch.autograd.gradcheck(run, (q, k, v, i, f, c0, n0, m0))


@pytest.mark.parametrize("form", ["parallel", "chunkwise"])
def test_projected_cell_recomputes_qkv_with_the_same_gradients(form, recompute_mode):
    from vil.ops.projected import mlstm_projected

    x = torch.randn(2, 30, 12, dtype=torch.float64, requires_grad=True)
    weights = [torch.randn(12, 12, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    gate_weight = torch.randn(12, 6, dtype=torch.float64, requires_grad=True)

    def project(x, wq, wk, wv, wg):  # (B, S, 12) -> three (B, 3, S, 4) and two (B, 3, S) gates, all from x
        q, k, v = [(x @ w).view(2, 30, 3, 4).transpose(1, 2) for w in (wq, wk, wv)]
        return q, k, v, *(x @ wg).transpose(1, 2).chunk(2, dim=1)

    inputs = [x, *weights, gate_weight]
    h = mlstm_projected(project, inputs, backend=form, chunk_size=8)
    expected = mlstm(*project(*inputs), backend=form, chunk_size=8)
    assert rel_err(h, expected) < 1e-12
    grads = torch.autograd.grad(h.square().sum(), inputs)
    expected_grads = torch.autograd.grad(expected.square().sum(), inputs)
    for a, b in zip(grads, expected_grads, strict=True):
        assert rel_err(a, b) < 1e-10
