"""ViL-T against DeiT-T as a user's own script gets them: no benchmark machinery, no process-wide settings.

Each model is created the plain way (``vil.create_model``, ``timm.create_model``), timed with ``time.perf_counter``
in ``torch.inference_mode`` (inference) or as forward + cross-entropy + backward + AdamW step (training), the two
models interleaved, median of the repeats. The training-step memory is the growth of the peak resident set over
one training step, in a fresh process per model so that neither sees the other's high-water mark. Prints Markdown
tables.

    python benchmarks/user_script.py --threads 1,2 --sizes 224:8,1024:1 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import timm
import torch
from torch import nn

import vil

VIL, DEIT = "vil2_tiny_patch16_224", "deit_tiny_patch16_224"


def build(name: str, size: int) -> nn.Module:
    if name.startswith("vil"):
        return vil.create_model(name, img_size=size)
    return timm.create_model(name, img_size=size, pretrained=False)


def step(model: nn.Module, x: torch.Tensor, mode: str):
    """One call of the measured work."""
    if mode == "infer":
        model.eval()

        def infer():
            with torch.inference_mode():
                model(x)

        return infer
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    labels = torch.zeros(x.shape[0], dtype=torch.long)

    def train():
        nn.functional.cross_entropy(model(x), labels).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return train


def time_pair(size: int, batch: int, mode: str, repeats: int) -> dict[str, float]:
    """Median seconds per call of ViL-T and DeiT-T, interleaved after one warm-up call each."""
    x = torch.randn(batch, 3, size, size)
    calls = {name: step(build(name, size), x, mode) for name in (VIL, DEIT)}
    for call in calls.values():
        call()
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def memory_growth(name: str, size: int, batch: int, threads: int) -> float:
    """MiB by which one training step raises the peak resident set, in a fresh process."""
    result = subprocess.run(
        [sys.executable, __file__, "--memory-child", f"{name}:{size}:{batch}:{threads}"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(result.stdout.strip().splitlines()[-1])["growth_mib"]


def peak_rss_kib() -> int:
    """This process's peak resident set in KiB: VmHWM on Linux (ru_maxrss there would start at the peak of the
    process that forked this one, which exec keeps), else ru_maxrss (KiB on Linux and BSD, bytes on macOS)."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))


def memory_child(spec: str) -> None:
    name, size, batch, threads = spec.split(":")
    torch.set_num_threads(int(threads))
    model = build(name, int(size))
    call = step(model, torch.randn(int(batch), 3, int(size), int(size)), "train")
    before = peak_rss_kib()
    call()
    print(json.dumps({"growth_mib": (peak_rss_kib() - before) / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2", help="comma list of torch thread counts (default %(default)s)")
    parser.add_argument(
        "--sizes", default="224:8,1024:1", help="image size:batch pairs, '' for none (default %(default)s)"
    )
    parser.add_argument("--modes", default="infer,train", help="infer, train (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats, median reported (default 5)")
    parser.add_argument("--memory", default="1024:1", help="size:batch pairs for the memory growth ('' for none)")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child)
        return
    thread_counts = [int(t) for t in args.threads.split(",")]
    sizes = [tuple(int(p) for p in item.split(":")) for item in filter(None, args.sizes.split(","))]
    modes = args.modes.split(",")
    print(f"torch {torch.__version__}, {VIL} against {DEIT}, median of {args.repeats} interleaved repeats")
    if sizes:
        print("| threads | image, batch | step | ViL-T (s) | DeiT-T (s) | ratio |")
        print("|---|---|---|---|---|---|")
    seconds = {}
    for threads in thread_counts:
        torch.set_num_threads(threads)
        for size, batch in sizes:
            for mode in modes:
                result = time_pair(size, batch, mode, args.repeats)
                seconds[threads, size, batch, mode] = result
                print(f"| {threads} | {size}, {batch} | {mode} | {result[VIL]:.3f} | {result[DEIT]:.3f} | "
                      f"{result[VIL] / result[DEIT]:.2f}x |", flush=True)  # fmt: skip
    if len(thread_counts) > 1 and sizes:
        low, high = thread_counts[0], thread_counts[-1]
        print(f"\nspeed-up from {low} to {high} threads (ViL-T's relative to DeiT-T's: target >= 0.9)")
        print("| image, batch | step | ViL-T | DeiT-T | ViL-T / DeiT-T |")
        print("|---|---|---|---|---|")
        for size, batch in sizes:
            for mode in modes:
                a, b = seconds[low, size, batch, mode], seconds[high, size, batch, mode]
                vil_up, deit_up = a[VIL] / b[VIL], a[DEIT] / b[DEIT]
                print(f"| {size}, {batch} | {mode} | {vil_up:.2f}x | {deit_up:.2f}x | {vil_up / deit_up:.2f} |")
    for item in filter(None, args.memory.split(",")):
        size, batch = (int(p) for p in item.split(":"))
        print(f"\ntraining-step growth of the peak resident set at {size} px, batch {batch} (fresh process per model)")
        print("| threads | ViL-T (MiB) | DeiT-T (MiB) | ratio |")
        print("|---|---|---|---|")
        for threads in thread_counts[:1]:
            grown = {name: memory_growth(name, size, batch, threads) for name in (VIL, DEIT)}
            print(f"| {threads} | {grown[VIL]:.0f} | {grown[DEIT]:.0f} | {grown[VIL] / grown[DEIT]:.2f}x |")


if __name__ == "__main__":
    main()
