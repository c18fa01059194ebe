"""Speed and peak memory of ViL against DeiT (timm) and against the parallel form, side by side.

Every contender runs in this one process; at each image size the contenders are timed interleaved after a
warm-up and the median is reported (docs/design.md §6). A "train" step is forward, cross-entropy loss,
backward and an AdamW step; "infer" is a forward pass without gradients.
"""

from __future__ import annotations

import gc
import platform
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import torch
from torch import nn

from .. import kernels, precision
from ..models.config import patch_grid
from .measure import peak_memory, time_interleaved

MODES = ("infer", "train")
VIL_RUNS = ("auto", "grad-ckpt", "parallel")  # the ViL contenders vil_contenders can make
COMPILED = " +compile"  # the label suffix of a compiled twin (compiled_twins)


@dataclass(frozen=True)
class Contender:
    """One model configuration to time: ``build(img_size)`` returns the model."""

    label: str
    build: Callable[[int], nn.Module]
    baseline: str | None  # label of the contender its ratios are relative to (None: it is a baseline)
    patch: int = 16
    stride: int = 16
    max_tokens: dict[str, int] | None = None  # per mode: skipped above this many tokens (the quadratic form)
    modes: tuple[str, ...] = MODES
    grad_checkpointing: bool = False
    compiled: bool = False  # torch.compile the model (also done for every contender by run_speed(compile_models))

    def tokens(self, size: int) -> int:
        return token_count(size, self.patch, self.stride)


@dataclass
class Row:
    size: int
    batch: int
    tokens: int
    mode: str
    contender: str
    seconds: float | None  # median; None when skipped
    peak_mib: float | None
    x_baseline: float | None = None  # seconds / the baseline's seconds at the same size and mode
    mem_x_baseline: float | None = None
    note: str = ""


# The DeiT of the same width for each ViL size (ViL-T+ and ViL-S+ are deeper twins of ViL-T and ViL-S).
DEFAULT_BASELINES = {"tiny": "deit_tiny_patch16_224", "small": "deit_small_patch16_224",
                     "base": "deit_base_patch16_224"}  # fmt: skip


def default_baseline(vil_name: str) -> str:
    size = vil_name.split("_")[1].removesuffix("plus")
    if size not in DEFAULT_BASELINES:
        raise ValueError(f"no default baseline for {vil_name!r}; pass one with --baseline (a timm model name)")
    return DEFAULT_BASELINES[size]


def vil_contenders(
    name: str, baseline: str | None, parallel_max_tokens: dict[str, int], runs: tuple[str, ...] = VIL_RUNS
) -> list[Contender]:
    """ViL with the automatic backend, with gradient checkpointing (train), and forced to the parallel form: those
    of them named in ``runs`` (VIL_RUNS)."""
    from ..models import VARIANTS, create_model

    config = VARIANTS[name].make_config()
    geometry = dict(baseline=baseline, patch=config.patch_size[0], stride=config.patch_stride[0])

    def build(backend: str) -> Callable[[int], nn.Module]:
        return lambda size: create_model(name, img_size=size, mlstm_backend=backend)

    contenders = {
        "auto": Contender(f"{name} (auto)", build("auto"), **geometry),
        "grad-ckpt": Contender(
            f"{name} (auto, grad ckpt)", build("auto"), **geometry, modes=("train",), grad_checkpointing=True
        ),
        "parallel": Contender(f"{name} (parallel)", build("parallel"), **geometry, max_tokens=parallel_max_tokens),
    }
    return [contenders[run] for run in runs]


def compiled_twins(contenders: list[Contender]) -> list[Contender]:
    """A torch.compile'd copy of each contender, compared with the compiled copy of its baseline."""
    return [
        replace(c, label=c.label + COMPILED, baseline=c.baseline and c.baseline + COMPILED, compiled=True)
        for c in contenders
    ]


def official_contenders(name: str, baseline: str | None, path: str, max_tokens: dict[str, int]) -> list[Contender]:
    """The official implementation (github.com/NX-AI/vision-lstm, package ``vision_lstm`` under ``path``) of a
    variant: the parallel form as the authors' code computes it."""
    import importlib
    import sys

    from ..models import VARIANTS

    sys.path.insert(0, path)
    official = importlib.import_module("vision_lstm")
    config = VARIANTS[name].make_config()

    def build(size: int) -> nn.Module:
        common = dict(dim=config.dim, patch_size=16, input_shape=(3, size, size), legacy_norm=True)
        if config.version == 2:
            return official.VisionLSTM2(depth=config.depth // 2, pooling="bilateral_flatten", **common)
        return official.VisionLSTM(depth=config.depth, stride=config.patch_stride[0], **common)

    geometry = dict(patch=config.patch_size[0], stride=config.patch_stride[0])
    return [Contender(f"{name} (official code)", build, baseline, max_tokens=max_tokens, **geometry)]


def timm_contender(name: str) -> Contender:
    import timm

    return Contender(name, lambda size: timm.create_model(name, img_size=size, pretrained=False), baseline=None)


def token_count(size: int, patch: int = 16, stride: int = 16) -> int:
    rows, columns = patch_grid((size, size), (patch, patch), (stride, stride))
    return rows * columns


def _step(model: nn.Module, x: torch.Tensor, mode: str, autocast_dtype: torch.dtype | None) -> Callable[[], None]:
    def autocast():
        return precision.autocast(x.device, autocast_dtype)

    if mode == "infer":
        model.eval()

        def infer():
            with torch.no_grad(), autocast():
                model(x)

        return infer
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    labels = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)

    def train():
        with autocast():
            loss = nn.functional.cross_entropy(model(x), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return train


def run_speed(
    contenders: list[Contender],
    sizes: list[tuple[int, int]],
    modes: tuple[str, ...] = MODES,
    repeats: int = 5,
    warmup: int = 1,
    device: str = "cpu",
    autocast_dtype: torch.dtype | None = None,
    compile_models: bool = False,
    progress: Callable[[str], None] = lambda message: None,
) -> list[Row]:
    """Time every contender at every (image size, batch) and mode. The first baseline sets the ratios."""
    device_ = torch.device(device)
    rows: list[Row] = []
    for size, batch in sizes:
        x = torch.randn(batch, 3, size, size, device=device_)
        for mode in modes:
            active = [
                c
                for c in contenders
                if mode in c.modes and (c.max_tokens is None or c.tokens(size) <= c.max_tokens[mode])
            ]
            skipped = [c for c in contenders if mode in c.modes and c not in active]
            steps = {}
            for contender in active:
                progress(f"{size}px b{batch} {mode}: building {contender.label}")
                model = contender.build(size).to(device_)
                if contender.grad_checkpointing:
                    model.set_grad_checkpointing(True)
                if compile_models or contender.compiled:
                    model = torch.compile(model)
                steps[contender.label] = _step(model, x, mode, autocast_dtype)
            progress(f"{size}px b{batch} {mode}: timing {len(steps)} contenders x {repeats} (interleaved)")
            times = time_interleaved(steps, repeats=repeats, warmup=warmup, device=device_)
            for contender in active:
                with peak_memory(device_) as peak:
                    steps[contender.label]()
                seconds = statistics.median(times[contender.label])
                tokens = contender.tokens(size)
                rows.append(Row(size, batch, tokens, mode, contender.label, seconds, peak["bytes"] / 2**20))
            for contender in skipped:
                note = f"skipped: more than {contender.max_tokens[mode]} tokens (quadratic form)"
                rows.append(Row(size, batch, contender.tokens(size), mode, contender.label, None, None, note=note))
            del steps
            gc.collect()
    _add_ratios(rows, {c.label: c.baseline for c in contenders})
    return rows


def _add_ratios(rows: list[Row], baselines: dict[str, str | None]) -> None:
    """Time and memory of each row relative to its contender's baseline at the same size, batch and mode."""
    measured = {(r.size, r.batch, r.mode, r.contender): r for r in rows if r.seconds is not None}
    is_baseline = set(baselines.values())
    for row in rows:
        reference = baselines[row.contender] or (row.contender if row.contender in is_baseline else None)
        base = measured.get((row.size, row.batch, row.mode, reference))
        if base is None or row.seconds is None:
            continue
        row.x_baseline = row.seconds / base.seconds
        if base.peak_mib and row.peak_mib is not None:
            row.mem_x_baseline = row.peak_mib / base.peak_mib


def context(device: str, threads: int, dtype: str, compile_models: bool | str, allocator_tuned: bool) -> dict:
    """What the numbers depend on, printed with every table."""
    return dict(
        torch=torch.__version__,
        device=_device_name(device),
        threads=threads,
        dtype=dtype,
        compile=compile_models,
        malloc_tuned=allocator_tuned,
        fused_cpu_kernels=device == "cpu" and kernels.library() is not None,  # vil.kernels: built and switched on
    )


def _device_name(device: str) -> str:
    if device == "cpu":
        return f"cpu ({platform.processor() or platform.machine()})"
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return device


def markdown_table(rows: list[Row]) -> str:
    header = "| image | batch | tokens | mode | model | time (s) | images/s | × baseline | peak MiB | mem × baseline |"
    lines = [header, "|" + "---|" * 10]
    for r in rows:
        if r.seconds is None:
            lines.append(f"| {r.size} | {r.batch} | {r.tokens} | {r.mode} | {r.contender} | {r.note} | | | | |")
            continue
        lines.append(
            f"| {r.size} | {r.batch} | {r.tokens} | {r.mode} | {r.contender} | {r.seconds:.3f} | "
            f"{r.batch / r.seconds:.1f} | {_fmt(r.x_baseline)} | {r.peak_mib:.0f} | {_fmt(r.mem_x_baseline)} |"
        )
    return "\n".join(lines)


def headline(rows: list[Row], vil_label: str, parallel_label: str, official_label: str = "") -> list[str]:
    """One sentence per (size, mode): ViL (auto) against its baseline, the parallel form and the official code."""
    lines = []
    keyed = {(r.size, r.batch, r.mode, r.contender): r for r in rows}
    for r in rows:
        if r.contender != vil_label or r.seconds is None:
            continue
        text = f"{r.size}px b{r.batch} {r.mode}: {vil_label}"
        if r.x_baseline is not None:
            text += f" takes {_fmt(r.x_baseline)} the baseline's time"
        for label, name in ((parallel_label, "the parallel form"), (official_label, "the official code")):
            other = keyed.get((r.size, r.batch, r.mode, label))
            if other is not None and other.seconds is not None:
                text += ", " + _speed_ratio(r.seconds, other.seconds, name)
        if r.mem_x_baseline is not None:
            text += f"; peak memory {_fmt(r.mem_x_baseline)} the baseline's"
        lines.append(text)
    return lines


def _speed_ratio(seconds: float, other_seconds: float, other: str) -> str:
    """ "2.3x faster than X", "1.4x slower than X", or "as fast as X" within 5 % (never "1.0x faster")."""
    ratio = other_seconds / seconds
    if ratio >= 1.05:
        return f"{ratio:.1f}x faster than {other}"
    if ratio <= 1 / 1.05:
        return f"{1 / ratio:.1f}x slower than {other}"
    return f"as fast as {other} (within 5 %)"


def rows_as_dicts(rows: list[Row]) -> list[dict]:
    return [asdict(r) for r in rows]


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}x"
