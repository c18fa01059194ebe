"""The fused CPU kernels on several threads: the same results for any thread count, one OpenMP runtime."""

import logging
import platform
import re
import stat
from pathlib import Path

import pytest
import torch

from vil import ViLConfig, VisionLSTM, kernels
from vil.ops import mlstm

pytestmark = pytest.mark.skipif(kernels.library() is None, reason="the kernels could not be built here")
THREAD_COUNTS = (1, 2, 3)  # 3 on a 2-core machine too: the split must not assume a count that divides the work


@pytest.fixture
def threads():
    """Run a function at a given torch thread count; the suite's count is restored afterwards."""
    before = torch.get_num_threads()

    def run_at(count, fn):
        torch.set_num_threads(count)
        return fn()

    yield run_at
    torch.set_num_threads(before)


def _model_outputs_and_gradients(version: int, backend: str):
    """Inference output, and the gradients of one backward pass, of a small model on a fixed batch."""
    torch.manual_seed(0)
    config = ViLConfig(dim=48, depth=2, img_size=32, patch_size=4, num_classes=5, version=version,
                       mlstm_backend=backend, chunk_size=16)  # fmt: skip
    model = VisionLSTM(config)
    images = torch.randn(3, 3, 32, 32)
    model(images).square().sum().backward()
    with torch.no_grad():
        return [model.eval()(images)] + [p.grad for p in model.parameters()]


@pytest.mark.parametrize("backend", ["parallel", "chunkwise"])
@pytest.mark.parametrize("version", [1, 2])
def test_model_results_do_not_depend_on_the_thread_count(threads, version, backend):
    # 3 x 64 tokens: the block kernels' sums over tokens come in several parts, the cell in several strips or chunks
    # the kernels' parts are the same bit for bit (the tests below); PyTorch's own reductions, such as LayerNorm's
    # weight gradient, differ at the last bit between thread counts
    results = [threads(n, lambda: _model_outputs_and_gradients(version, backend)) for n in THREAD_COUNTS]
    for other in results[1:]:
        for got, want in zip(other, results[0], strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6 * want.abs().max().item())


def test_block_kernels_do_not_depend_on_the_thread_count(threads):
    batch, grid, heads, head_dim = 3, (6, 7), 4, 24
    dim, tokens = heads * head_dim, grid[0] * grid[1]  # 126 tokens: parts of PART_ROWS and a ragged last one
    x, v_in, c, z, d_out = (torch.randn(batch, tokens, dim) for _ in range(5))
    h, d_qkv = torch.randn(batch, heads, tokens, head_dim), [torch.randn(batch, heads, tokens, head_dim)] * 3
    weights, conv_weight = [torch.randn(dim // 4, 4, 4) for _ in range(3)], torch.randn(dim, 1, 3, 3)
    vectors = [torch.randn(dim) for _ in range(4)]  # skip, norm weight and bias, conv bias
    gates = (torch.randn(8, dim), torch.randn(8, dim), torch.randn(8))

    def run():
        with torch.no_grad():
            results = [*kernels.headwise_qkv(x, v_in, weights, [None] * 3, heads, gates=gates)]
            results += [
                kernels.gated_branch_output(z, h, c, *vectors[:3], 1e-5),
                kernels.conv2d_silu(x, grid, conv_weight, vectors[3]),
            ]
            d_gates = torch.randn(batch, 8, tokens, generator=torch.Generator().manual_seed(0))
            results += kernels.headwise_qkv_backward(x, v_in, weights, d_qkv, gates=gates[:2], d_gates=d_gates)
            results += [kernels.gated_branch_output_backward(z, h, c, *vectors[:3], 1e-5, d_out)[0]]
            results += kernels.gated_branch_output_backward(z, h, c, *vectors[:3], 1e-5, d_out)[1]
            results += kernels.conv2d_silu_backward(x, grid, conv_weight, vectors[3], d_out)
        return results

    results = [threads(n, run) for n in THREAD_COUNTS]
    for other in results[1:]:
        for got, want in zip(other, results[0], strict=True):
            assert torch.equal(got, want)


@pytest.mark.parametrize("backend", ["parallel", "chunkwise"])
def test_cell_results_do_not_depend_on_the_thread_count(threads, backend):
    # bit for bit: every output is computed by one thread with the same arithmetic, whichever thread it is
    q, k = (torch.randn(2, 3, 150, 24) for _ in range(2))
    v, igate, fgate = torch.randn(2, 3, 150, 20), torch.randn(2, 3, 150) * 3, torch.randn(2, 3, 150) * 3 + 3
    d_h = torch.randn(2, 3, 150, 20)

    def run():
        leaves = [x.clone().requires_grad_() for x in (q, k, v, igate, fgate)]
        h = mlstm(*leaves, backend=backend, chunk_size=16)
        h.backward(d_h)
        return [h.detach()] + [x.grad for x in leaves]

    results = [threads(n, run) for n in THREAD_COUNTS]
    for other in results[1:]:
        for got, want in zip(other, results[0], strict=True):
            assert torch.equal(got, want)


def test_parallel_cell_projecting_inside_does_not_depend_on_the_thread_count(threads):
    # forward and backward
    batch, seq_len, heads, head_dim = 3, 150, 4, 24  # 12 matrices: whole matrices for each of up to 3 threads
    dim = heads * head_dim
    qk_in, v_in = (torch.randn(batch, seq_len, dim) for _ in range(2))
    weights, biases = [torch.randn(dim // 4, 4, 4) * 0.3 for _ in range(3)], [torch.randn(dim) for _ in range(3)]
    rows = [torch.randn(batch, heads, seq_len) for _ in range(3)]  # the gate rows a, r = cummax(a), M = b + r
    rows[1] = rows[0].cummax(dim=-1).values

    d_h = torch.randn(batch, heads, seq_len, head_dim)

    def run():
        h, den = kernels.mlstm_parallel_headwise(qk_in, v_in, weights, biases, heads, *rows, 1e-6, -80.0)
        grads = kernels.mlstm_parallel_backward_headwise(
            qk_in, v_in, weights, biases, heads, d_h, h, den, rows[2], rows[0], rows[1], 1e-6, -80.0
        )
        return h, den, *grads

    results = [threads(n, run) for n in THREAD_COUNTS]
    assert all(r is not None for r in results)
    for other in results[1:]:
        for got, want in zip(other, results[0], strict=True):
            assert torch.equal(got, want)


def test_kernels_share_pytorchs_openmp_runtime():
    # two OpenMP runtimes in one process would keep two pools of busy threads on the same cores
    if platform.system() != "Linux":
        pytest.skip("reads /proc/self/maps")
    runtimes = set(re.findall(r"\S*lib(?:g|i5|i)?omp[\w.-]*\.so[\w.]*", Path("/proc/self/maps").read_text()))
    assert len({Path(r).name for r in runtimes}) <= 1, runtimes
    assert len(runtimes) <= 1, runtimes


@pytest.fixture
def fresh_kernels(tmp_path, monkeypatch):
    monkeypatch.setenv(kernels.CACHE, str(tmp_path / "cache"))
    kernels.reset()
    yield tmp_path
    monkeypatch.undo()
    kernels.reset()


def test_a_compiler_without_openmp_builds_serial_kernels(fresh_kernels, monkeypatch, caplog, threads):
    compiler = fresh_kernels / "cc-without-openmp"
    compiler.write_text('#!/bin/sh\ncase " $* " in *" -fopenmp "*) echo "no OpenMP" >&2; exit 1;; esac\nexec cc "$@"\n')
    compiler.chmod(compiler.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("CC", str(compiler))
    with caplog.at_level(logging.WARNING, logger="vil.kernels"):
        assert kernels.library() is not None
    assert "built without OpenMP" in caplog.text
    model = VisionLSTM(ViLConfig(dim=32, depth=2, img_size=32, patch_size=8, num_classes=5)).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        got = threads(2, lambda: model(images))
        with kernels.disabled():
            want = model(images)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
