"""``vil bench``: speed and peak memory of ViL against DeiT (timm) and the parallel form, side by side."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import torch

from ..bench.speed import (
    MODES,
    VIL_RUNS,
    compiled_twins,
    context,
    default_baseline,
    headline,
    markdown_table,
    official_contenders,
    rows_as_dicts,
    run_speed,
    timm_contender,
    vil_contenders,
)
from ..utils import cpu_allocator
from ..utils.optional import require

DTYPES = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


def register(subparsers) -> None:
    parser = subparsers.add_parser("bench", help="time ViL against DeiT and the parallel form", description=__doc__)
    parser.add_argument(
        "--task", choices=["cls", "seg"], default="cls",
        help="cls: classifiers (default); seg: UperNet segmenters, ViL vs DeiT backbone, 512/1024/2048 px batch 1",
    )  # fmt: skip
    parser.add_argument("--model", action="append", help="ViL variant (repeatable; default vil2_tiny_patch16_224)")
    parser.add_argument(
        "--baseline",
        help="timm model every ViL is compared with (default: the DeiT of the same width, e.g. deit_tiny_patch16_224 "
        "for ViL-T; 'none': ViL only)",
    )
    parser.add_argument("--sizes", help="image size:batch pairs (default 224:8,512:1,1024:1; seg: 512:1,1024:1,2048:1)")
    parser.add_argument("--modes", default="infer,train", help=f"comma list of {MODES} (default %(default)s)")
    parser.add_argument(
        "--threads",
        type=int,
        default=torch.get_num_threads(),
        help="torch threads, for PyTorch and the fused kernels alike (default: PyTorch's default here, %(default)s: "
        "all cores)",
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per contender (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per contender first")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (on CUDA the cell runs in Triton kernels)")
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32", help="autocast dtype (default float32)")
    parser.add_argument(
        "--compile",
        nargs="?",
        const="on",
        default="off",
        choices=("off", "on", "both"),
        help="torch.compile every model ('--compile' alone: on; 'both': each model eager and compiled, one table)",
    )
    parser.add_argument(
        "--vil-runs",
        default=",".join(VIL_RUNS),
        help=f"comma list of the ViL contenders, of {VIL_RUNS} (default: all; grad-ckpt trains only)",
    )
    parser.add_argument(
        "--parallel-max-tokens",
        type=int,
        nargs=2,
        default=[4096, 1024],
        metavar=("INFER", "TRAIN"),
        help="largest token count timed for the quadratic parallel form (default 4096 1024)",
    )
    parser.add_argument(
        "--official",
        metavar="PATH",
        help="a checkout of github.com/NX-AI/vision-lstm: also time the "
        "official implementation (its package vision_lstm and its dependency einops are needed)",
    )
    parser.add_argument("--plot", type=Path, help="also write log-log plots of time and memory against tokens (PNG)")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    parser.add_argument("--csv", type=Path, help="also write the rows as CSV")
    parser.add_argument("--markdown", type=Path, help="also write the table as Markdown")
    parser.set_defaults(func=run)


def parse_sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for item in text.split(","):
        try:
            size, batch = (int(part) for part in item.split(":"))
        except ValueError:
            raise ValueError(f"--sizes item {item!r} is not SIZE:BATCH (e.g. 224:8)") from None
        if size < 16 or size % 16 or batch < 1:
            raise ValueError(f"--sizes item {item!r}: the size must be a multiple of 16 and the batch >= 1")
        sizes.append((size, batch))
    return sizes


def run(args: argparse.Namespace) -> int:
    modes = tuple(m.strip() for m in args.modes.split(","))
    if unknown := [m for m in modes if m not in MODES]:
        raise ValueError(f"unknown mode(s) {unknown}; allowed: {list(MODES)}")
    sizes = parse_sizes(args.sizes or ("512:1,1024:1,2048:1" if args.task == "seg" else "224:8,512:1,1024:1"))
    if args.threads < 1:
        raise ValueError(f"--threads {args.threads}: must be at least 1")
    vil_runs = tuple(r.strip() for r in args.vil_runs.split(","))
    if unknown := [r for r in vil_runs if r not in VIL_RUNS]:
        raise ValueError(f"unknown --vil-runs item(s) {unknown}; allowed: {list(VIL_RUNS)}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: no CUDA device is available here")
    if args.plot:
        require("matplotlib", "--plot")  # before the benchmark runs, not after
    torch.set_num_threads(args.threads)
    limits = {"infer": args.parallel_max_tokens[0], "train": args.parallel_max_tokens[1]}
    models = args.model or ["vil2_tiny_patch16_224"]
    contenders = []
    for name in models:
        baseline = None if args.baseline == "none" else (args.baseline or default_baseline(name))
        if args.task == "seg":
            from ..seg.bench import seg_contenders

            contenders += seg_contenders(name, baseline)
            continue
        if baseline is not None and baseline not in [c.label for c in contenders]:
            contenders.append(timm_contender(baseline))
        contenders += vil_contenders(name, baseline, limits, vil_runs)
        if args.official:
            contenders += official_contenders(name, baseline, args.official, limits)
    if args.compile == "both":
        contenders += compiled_twins(contenders)
    rows = run_speed(
        contenders, sizes, modes, repeats=args.repeats, warmup=args.warmup, device=args.device,
        autocast_dtype=DTYPES[args.dtype], compile_models=args.compile == "on",
        progress=lambda message: print(f"  {message}", file=sys.stderr, flush=True),
    )  # fmt: skip
    # malloc as the library leaves it for any user (tuned when the first ViL is built; VIL_MALLOC_TUNING=0: not)
    info = context(args.device, args.threads, args.dtype, args.compile, cpu_allocator.tune_on_first_use())
    table = markdown_table(rows)
    print("context: " + ", ".join(f"{k}={v}" for k, v in info.items()))
    print(table)
    for name in models:
        label = f"{name} UperNet" if args.task == "seg" else f"{name} (auto)"
        for line in headline(rows, label, f"{name} (parallel)", f"{name} (official code)"):
            print("- " + line)
    if args.plot:
        from ..bench.plots import plot_scaling

        plot_scaling(rows, args.plot, title=", ".join(f"{k}={v}" for k, v in info.items()))
    records = rows_as_dicts(rows)
    if args.markdown:
        args.markdown.write_text(f"context: {json.dumps(info)}\n\n{table}\n")
    if args.json:
        args.json.write_text(json.dumps({"context": info, "rows": records}, indent=1))
    if args.csv:
        with args.csv.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(records[0]))
            writer.writeheader()
            writer.writerows(records)
    return 0
