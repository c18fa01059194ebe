"""Measurements of the Triton mLSTM cell in Triton's interpreter, run as a subprocess by test_triton_cell.py.

The interpreter must be switched on before triton is first imported, and other tests (torch.compile) import
triton without it, hence a fresh process. Usage: ``python tests/triton_interpreted.py CASE...``; prints one JSON
object: case name -> measured errors (or an error message).
"""

from __future__ import annotations

import json
import os
import sys
import traceback

os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402

from vil.ops import mlstm, mlstm_chunkwise  # noqa: E402

torch.set_num_threads(1)


def make_inputs(seq_len, head_dim, gate_scale=3.0, batch=1, heads=2, dtype=torch.float64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, heads, seq_len, head_dim, dtype=dtype, generator=generator) for _ in range(3))
    igate, fgate = ((torch.rand(batch, heads, seq_len, dtype=dtype, generator=generator) * 2 - 1) * gate_scale
                    for _ in range(2))  # fmt: skip
    return [q, k, v, igate, fgate + 3.0]


def rel_err(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-300)).item()


def condition(q, k, igate, fgate):
    """The largest condition number over rows of h = sum_s C[t,s] v[s] / max(|sum_s C[t,s]|, exp(-m[t])), as
    sum_s |C[t,s]| / normaliser (float64, parallel form): float32 rounding of the inputs alone moves h[t] by about
    this many float32 roundings."""
    seq_len = q.shape[2]
    b = torch.nn.functional.logsigmoid(fgate).cumsum(-1)
    log_d = (b[..., :, None] - b[..., None, :] + igate[..., None, :]).masked_fill(
        ~torch.ones(seq_len, seq_len, dtype=torch.bool).tril(), float("-inf")
    )
    m = log_d.amax(-1, keepdim=True)
    c = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5 * torch.exp(log_d - m)
    normaliser = torch.maximum(c.sum(-1).abs(), torch.exp(-m[..., 0]))
    return (c.abs().sum(-1) / normaliser).max().item()


def forward_backward(inputs, dtype=None, **kwargs):
    """h and the gradients of a loss that mixes all outputs, for inputs cast to ``dtype``."""
    inputs = [t.detach().to(dtype or t.dtype).requires_grad_() for t in inputs]
    h = mlstm(*inputs, **kwargs)
    weights = torch.linspace(-1, 1, h.shape[-1], dtype=h.dtype)
    return h, torch.autograd.grad((h * weights).sum(), inputs)


def against_float64(seq_len, head_dim, gate_scale=3.0, dtype=torch.float32, chunk_size=None, heads=2):
    """Forward error relative to the largest output, and each gradient's error relative to the largest gradient of
    any input, of the Triton cell (float32) against the parallel form in float64."""
    inputs = [t.to(dtype).double() for t in make_inputs(seq_len, head_dim, gate_scale, heads=heads)]  # as rounded
    h_ref, g_ref = forward_backward(inputs, backend="parallel")
    h, grads = forward_backward(inputs, dtype, backend="triton", chunk_size=chunk_size)
    scale = max(g.abs().max().item() for g in g_ref)
    dtype_name = str(h.dtype).removeprefix("torch.")
    errors = {"h": rel_err(h, h_ref), "dtype": dtype_name, "condition": condition(*inputs[:2], *inputs[3:])}
    for name, a, b in zip(("q", "k", "v", "igate", "fgate"), grads, g_ref, strict=True):
        errors["d" + name] = (a.double() - b).abs().max().item() / scale
    return errors


def memory(state):
    """The unstabilised memory and normaliser of a state: c exp(m), n exp(m)."""
    return state.c * state.m.exp()[..., None, None], state.n * state.m.exp()[..., None]


def state_passing(seq_len=100, split=37, head_dim=96):
    """Two halves with the state passed between them against the whole sequence (float64 parallel form), the final
    state and the gradients of the initial state against the chunkwise form in float64."""
    inputs = [t.float().double() for t in make_inputs(seq_len, head_dim)]
    f32 = [t.float() for t in inputs]
    _, state = mlstm(*f32, backend="triton", return_state=True, chunk_size=32)
    first, mid = mlstm(*(t[:, :, :split] for t in f32), backend="triton", return_state=True, chunk_size=32)
    second, end = mlstm(*(t[:, :, split:] for t in f32), backend="triton", initial_state=mid, return_state=True)
    errors = {"halves": rel_err(torch.cat([first, second], dim=2), mlstm(*inputs, backend="parallel"))}

    # the final state, and gradients through an initial state, against float64 chunkwise
    _, ref_mid = mlstm_chunkwise(*(t[:, :, :split] for t in inputs), return_state=True)
    rest = [t[:, :, split:] for t in inputs]

    def run(state, dtype, backend):
        leaves = [t.detach().to(dtype).requires_grad_() for t in state]
        h, final = mlstm(*(t.to(dtype) for t in rest), backend=backend, initial_state=type(state)(*leaves),
                         return_state=True)  # fmt: skip
        loss = (h * torch.linspace(-1, 1, h.shape[-1], dtype=dtype)).sum() + memory(final)[0].sum()
        return final, torch.autograd.grad(loss, leaves)

    ref_final, ref_grads = run(ref_mid, torch.float64, "chunkwise")
    final, grads = run(ref_mid, torch.float32, "triton")
    errors["final_c"], errors["final_n"] = map(rel_err, memory(final), memory(ref_final))
    errors["end_matches"] = rel_err(memory(end)[0], memory(state)[0])
    for name, a, b in zip(("c0", "n0", "m0"), grads, ref_grads, strict=True):
        errors["d" + name] = rel_err(a, b)
    return errors


def custom_op_check():
    """torch.library.opcheck on the forward op (schema, fake tensors, autograd registration)."""
    from vil.ops.triton_cell.op import mlstm_chunkwise_triton

    q, k, v, igate, fgate = (t.float().requires_grad_() for t in make_inputs(20, 16))
    c0, n0, m0 = torch.zeros(1, 2, 16, 16), torch.zeros(1, 2, 16), torch.full((1, 2), float("-inf"))
    results = torch.library.opcheck(mlstm_chunkwise_triton, (q, k, v, igate, fgate, c0, n0, m0, 16, 1e-6))
    return {name: result for name, result in results.items()}


def compiled_model():
    """torch.compile of a whole (tiny) ViL whose cell runs the Triton op, against the same model eager with the
    PyTorch chunkwise form: logits and parameter gradients (relative to the largest gradient). Also under float16
    autocast (the interpreter has no bfloat16), traced by dynamo and AOTAutograd (backend "aot_eager": inductor's
    CPU code generation would double the time), against the Triton op eager."""
    from vil.models import create_model

    torch._dynamo.reset()
    torch.manual_seed(0)
    model = create_model("vil2_tiny_patch16_224", img_size=32, dim=32, depth=2, num_classes=5)  # head size 16
    images = torch.randn(2, 3, 32, 32)

    def logits_and_grads(module, dtype=None):
        module.zero_grad()
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            logits = module(images).float()
        logits.square().sum().backward()
        return logits.detach(), torch.cat([p.grad.flatten() for p in model.parameters()])

    model.set_mlstm_backend("chunkwise", 16)
    eager, eager_grads = logits_and_grads(model)
    model.set_mlstm_backend("triton", 16)
    logits, grads = logits_and_grads(torch.compile(model, fullgraph=True))
    half_eager, half_eager_grads = logits_and_grads(model, torch.float16)
    half, half_grads = logits_and_grads(torch.compile(model, fullgraph=True, backend="aot_eager"), torch.float16)
    return {
        "logits": rel_err(logits, eager),
        "grads": rel_err(grads, eager_grads),
        "float16_autocast_logits": rel_err(half, half_eager),
        "float16_autocast_grads": rel_err(half_grads, half_eager_grads),
    }


CASES = {
    "S1_d96_gates50": lambda: against_float64(1, 96, gate_scale=50.0),
    "S7_d96": lambda: against_float64(7, 96),
    "S64_d192": lambda: against_float64(64, 192),
    "S196_d96_gates50": lambda: against_float64(196, 96, gate_scale=50.0),
    "S196_d384": lambda: against_float64(196, 384, heads=1),
    "S729_d96": lambda: against_float64(729, 96, heads=1),
    "S50_d48_chunk16_gates50": lambda: against_float64(50, 48, gate_scale=50.0, chunk_size=16),
    "S70_d64_float16": lambda: against_float64(70, 64, dtype=torch.float16, chunk_size=32),
    "state_passing": state_passing,
    "opcheck": custom_op_check,
    "compiled_model": compiled_model,
}


if __name__ == "__main__":
    results = {}
    for case in sys.argv[1:] or CASES:
        try:
            results[case] = CASES[case]()
        except Exception as error:  # reported to the test, which fails with it
            results[case] = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
    print(json.dumps(results))
