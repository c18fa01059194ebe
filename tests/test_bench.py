"""The benchmark command runs, measures every contender, and reports ratios against the right baseline."""

import json

import pytest
import torch

from vil.bench.measure import peak_memory, time_interleaved
from vil.bench.speed import default_baseline, token_count
from vil.cli import main
from vil.commands.bench import parse_sizes


def test_peak_memory_sees_a_temporary_allocation():
    with peak_memory(torch.device("cpu")) as peak:
        x = torch.ones(4_000_000)  # 16 MB, freed before the context ends
        del x
    assert 15 * 2**20 < peak["bytes"] < 40 * 2**20


def test_time_interleaved_runs_every_contender_repeatedly():
    calls = []
    times = time_interleaved(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 3, 1, torch.device("cpu")
    )
    assert calls == ["a", "b"] + ["a", "b"] * 3
    assert all(len(v) == 3 for v in times.values())


def test_token_counts_and_baselines():
    assert token_count(224) == 196 and token_count(224, 16, 8) == 729
    assert default_baseline("vil1_smallplus_patch16_stride8_224") == "deit_small_patch16_224"
    with pytest.raises(ValueError, match="no default baseline"):
        default_baseline("vil9_huge_patch16_224")


def test_bad_sizes_are_rejected():
    assert parse_sizes("224:8,512:1") == [(224, 8), (512, 1)]
    with pytest.raises(ValueError, match="SIZE:BATCH"):
        parse_sizes("224")
    with pytest.raises(ValueError, match="multiple of 16"):
        parse_sizes("100:1")


@pytest.mark.slow
def test_bench_command_writes_rows_with_ratios(tmp_path, capsys):
    out = tmp_path / "bench.json"
    plot = tmp_path / "bench.png"
    code = main(["bench", "--sizes", "32:1", "--repeats", "1", "--warmup", "0", "--json", str(out),
                 "--plot", str(plot), "--parallel-max-tokens", "3", "3"])  # fmt: skip
    assert code == 0
    rows = json.loads(out.read_text())["rows"]
    by_model = {(r["contender"], r["mode"]): r for r in rows}
    deit = by_model["deit_tiny_patch16_224", "infer"]
    vil = by_model["vil2_tiny_patch16_224 (auto)", "infer"]
    assert deit["x_baseline"] == 1.0 and vil["seconds"] > 0
    assert vil["x_baseline"] == pytest.approx(vil["seconds"] / deit["seconds"])
    assert by_model["vil2_tiny_patch16_224 (parallel)", "infer"]["note"].startswith("skipped")  # 4 tokens > 3
    assert ("vil2_tiny_patch16_224 (auto, grad ckpt)", "train") in by_model
    assert plot.stat().st_size > 10_000
    assert "| image | batch | tokens |" in capsys.readouterr().out


@pytest.mark.slow
def test_bench_without_baseline_and_with_a_chosen_one(tmp_path):
    out = tmp_path / "bench.json"
    assert main(["bench", "--sizes", "32:1", "--repeats", "1", "--warmup", "0", "--modes", "infer",
                 "--baseline", "none", "--json", str(out)]) == 0  # fmt: skip
    rows = json.loads(out.read_text())["rows"]
    assert {r["contender"] for r in rows} == {"vil2_tiny_patch16_224 (auto)", "vil2_tiny_patch16_224 (parallel)"}
    assert all(r["x_baseline"] is None for r in rows)
    assert main(["bench", "--sizes", "32:1", "--repeats", "1", "--warmup", "0", "--modes", "infer",
                 "--baseline", "deit_small_patch16_224", "--json", str(out)]) == 0  # fmt: skip
    assert "deit_small_patch16_224" in {r["contender"] for r in json.loads(out.read_text())["rows"]}


def test_compiled_twins_are_compared_with_the_compiled_baseline():
    from vil.bench.speed import compiled_twins, timm_contender, vil_contenders

    contenders = [timm_contender("deit_tiny_patch16_224")]
    contenders += vil_contenders("vil2_tiny_patch16_224", "deit_tiny_patch16_224", {}, runs=("auto",))
    twins = compiled_twins(contenders)
    assert [(t.label, t.baseline, t.compiled) for t in twins] == [
        ("deit_tiny_patch16_224 +compile", None, True),
        ("vil2_tiny_patch16_224 (auto) +compile", "deit_tiny_patch16_224 +compile", True),
    ]


def test_bench_refuses_unknown_vil_runs_and_a_missing_gpu(capsys):
    assert main(["bench", "--vil-runs", "auto,fast"]) != 0
    assert "unknown --vil-runs item(s) ['fast']" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["bench", "--device", "cuda"]) != 0
        assert "no CUDA device is available" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_compiles_both_ways_in_one_table(tmp_path):
    out = tmp_path / "bench.json"
    try:
        args = ["--sizes", "32:1", "--repeats", "1", "--warmup", "0", "--modes", "infer", "--baseline", "none"]
        assert main(["bench", *args, "--vil-runs", "auto", "--compile", "both", "--json", str(out)]) == 0
    finally:  # forget the shapes seen: dynamo would compile later tests' models with dynamic shapes
        torch._dynamo.reset()
    rows = json.loads(out.read_text())["rows"]
    assert [r["contender"] for r in rows] == ["vil2_tiny_patch16_224 (auto)", "vil2_tiny_patch16_224 (auto) +compile"]
    assert all(r["seconds"] > 0 for r in rows)
