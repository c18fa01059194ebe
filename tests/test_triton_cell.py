"""The Triton mLSTM cell (backend="triton") against the float64 parallel form, run in Triton's interpreter.

The interpreter computes exactly what the kernels ask for in float32, so these are the kernels' numerics, on the
CPU. All cases run in one subprocess (tests/triton_interpreted.py): the interpreter must be on before triton is
first imported, and other tests import triton without it.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vil.ops import mlstm

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")

FLOAT32_CASES = ["S1_d96_gates50", "S7_d96", "S64_d192", "S196_d96_gates50", "S196_d384", "S729_d96",
                 "S50_d48_chunk16_gates50"]  # fmt: skip
GRADIENTS = ("dq", "dk", "dv", "digate", "dfgate")


@pytest.fixture(scope="module")
def measured() -> dict:
    script = Path(__file__).with_name("triton_interpreted.py")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    run = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def _case(measured, name) -> dict:
    result = measured[name]
    assert "error" not in result, result.get("traceback", result["error"])
    return result


@pytest.mark.slow
@pytest.mark.parametrize("case", FLOAT32_CASES)
def test_float32_forward_and_gradients_match_float64(measured, case):
    result = _case(measured, case)
    assert result["dtype"] == "float32"
    # 1e-5 where rows are well conditioned; a row whose terms cancel (condition number = sum |C| / normaliser)
    # is moved by float32 rounding of the inputs about that many times more (gates of +-50 at S = 196: 41)
    assert result["h"] < 1e-5 * max(1.0, result["condition"] / 10), result
    for name in GRADIENTS:  # relative to the largest gradient of any input
        assert result[name] < 1e-4, (name, result)


@pytest.mark.slow
def test_float16_inputs_give_float16_results_computed_in_float32(measured):
    result = _case(measured, "S70_d64_float16")
    assert result["dtype"] == "float16"
    assert result["h"] < 1e-3  # the rounding of h to float16 (2^-11), not of the arithmetic
    for name in GRADIENTS:
        assert result[name] < 1e-3, (name, result)


@pytest.mark.slow
def test_state_passes_between_halves_and_into_gradients(measured):
    result = _case(measured, "state_passing")
    assert result["halves"] < 1e-5  # two halves with the state passed between them = the whole sequence
    assert result["end_matches"] < 1e-5  # the final state after the halves = after the whole
    for name in ("final_c", "final_n"):
        assert result[name] < 1e-5, (name, result)
    for name in ("dc0", "dn0", "dm0"):
        assert result[name] < 1e-4, (name, result)


@pytest.mark.slow
def test_custom_op_passes_opcheck(measured):
    result = _case(measured, "opcheck")
    assert set(result.values()) == {"SUCCESS"}, result


@pytest.mark.slow
def test_torch_compile_of_a_whole_vil_with_the_custom_op_matches_eager(measured):
    result = _case(measured, "compiled_model")  # fullgraph: the cell is one op in the graph, forward and backward
    assert result["logits"] < 1e-6 and result["grads"] < 1e-5, result
    # under float16 autocast the op gets half inputs from the autocast projections: traced, it computes the same
    assert result["float16_autocast_logits"] < 1e-3 and result["float16_autocast_grads"] < 1e-3, result


@pytest.mark.skipif("TRITON_INTERPRET" in os.environ, reason="the interpreter is on in this process")
def test_cpu_tensors_without_the_interpreter_are_refused_in_one_line():
    q = torch.randn(1, 1, 8, 16)
    gates = torch.randn(1, 1, 8)
    with pytest.raises(ValueError, match="needs CUDA tensors, got CPU ones.*TRITON_INTERPRET=1") as error:
        mlstm(q, q, q, gates, gates, backend="triton")
    assert "\n" not in str(error.value)


def test_bad_shapes_for_triton_are_refused():
    from vil.ops.triton_cell import check_usable

    with pytest.raises(ValueError, match="multiples of 16, got q/k head size 24"):
        check_usable(torch.zeros(1, 1, 8, 24), torch.zeros(1, 1, 8, 32), None)
    with pytest.raises(ValueError, match="chunk_size for backend='triton' must be at most 128, got 256"):
        check_usable(torch.zeros(1, 1, 8, 32), torch.zeros(1, 1, 8, 32), 256)


def test_auto_keeps_the_pytorch_forms_on_the_cpu_and_for_shapes_the_kernels_do_not_take():
    from vil.ops.backend import runs_triton
    from vil.ops.triton_cell import supports

    assert not runs_triton("auto", torch.zeros(1)) and runs_triton("triton", torch.zeros(1))
    assert supports(torch.zeros(1, 1, 4, 96), torch.zeros(1, 1, 4, 192))
    assert not supports(torch.zeros(1, 1, 4, 24), torch.zeros(1, 1, 4, 32))
    assert not supports(torch.zeros(1, 1, 4, 32, dtype=torch.float64), torch.zeros(1, 1, 4, 32, dtype=torch.float64))
    q = torch.randn(1, 1, 8, 16, dtype=torch.float64)
    gates = torch.randn(1, 1, 8, dtype=torch.float64)
    assert torch.equal(mlstm(q, q, q, gates, gates), mlstm(q, q, q, gates, gates, backend="parallel"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_matches_float64(dtype):
    """On a GPU (scripts/gpu_check.sh): auto picks triton, and it matches the float64 parallel form on the same
    (rounded) inputs; bfloat16 results and gradients are rounded to bfloat16 (2^-8 relative)."""
    from vil.ops.backend import runs_triton
    from vil.ops.triton_cell import supports

    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 729, 96, dtype=torch.float64, generator=generator) for _ in range(3))
    igate, fgate = (torch.rand(2, 4, 729, dtype=torch.float64, generator=generator) * 6 - 3 for _ in range(2))
    inputs = [t.to(dtype).double().requires_grad_() for t in (q, k, v, igate, fgate + 3)]
    h_ref = mlstm(*inputs, backend="parallel")
    ref_grads = torch.autograd.grad(h_ref.sum(), inputs)
    cuda_inputs = [t.detach().to("cuda", dtype).requires_grad_() for t in inputs]
    assert runs_triton("auto", cuda_inputs[0]) and supports(cuda_inputs[0], cuda_inputs[2])
    h = mlstm(*cuda_inputs)
    grads = torch.autograd.grad(h.float().sum(), cuda_inputs)
    forward_tolerance, gradient_tolerance = (1e-5, 1e-4) if dtype == torch.float32 else (1e-2, 1e-2)
    assert h.dtype == dtype
    assert (h.double().cpu() - h_ref).abs().max() / h_ref.abs().max() < forward_tolerance
    grad_scale = max(g.abs().max() for g in ref_grads)
    for a, b in zip(grads, ref_grads, strict=True):
        assert (a.double().cpu() - b).abs().max() / grad_scale < gradient_tolerance


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_compiled_vil_trains_like_eager_under_bf16_autocast():
    """torch.compile (fullgraph) of a ViL on CUDA with the Triton cell inside, bf16 autocast: the logits and the
    parameter gradients of one step match the eager model's to bf16 rounding."""
    from vil.models import create_model

    torch.manual_seed(0)
    model = create_model("vil2_tiny_patch16_224", img_size=64, depth=4, num_classes=10).cuda()
    images = torch.randn(4, 3, 64, 64, device="cuda")

    def step(module):
        model.zero_grad()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = module(images)
        logits.float().square().mean().backward()
        return logits.float(), [p.grad.float().clone() for p in model.parameters()]

    eager, eager_grads = step(model)
    compiled, grads = step(torch.compile(model, fullgraph=True))
    assert (compiled - eager).abs().max() / eager.abs().max() < 3e-2
    scale = max(g.abs().max() for g in eager_grads)
    assert max((a - b).abs().max() for a, b in zip(grads, eager_grads, strict=True)) / scale < 3e-2
