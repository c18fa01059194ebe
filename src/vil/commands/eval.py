"""``vil eval``: top-1 / top-5 accuracy of a trained model with the official eval transform (bicubic resize, center
crop, the model's normalisation), on an image folder or the embedded digits test split. Prints the result and
writes it as JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

from torch.utils.data import DataLoader

from ..data.folder import collate_skipping_bad_files
from ..data.sources import DIGITS, build_eval_dataset
from ..io_utils import write_json
from ..precision import amp_dtype
from ..train.distributed import resolve_device
from ..train.evaluate import evaluate
from ..weights.classifier import load_classifier


def register(subparsers) -> None:
    parser = subparsers.add_parser("eval", help="accuracy of a trained model", description=__doc__)
    parser.add_argument(
        "model",
        help="a run directory, .safetensors file, training checkpoint, official .th file, or a model name "
        "(released ImageNet-1K weights, downloaded)",
    )
    parser.add_argument(
        "--data", help="image folder: DIR/<split>/<class>/ or DIR/<class>/ (default: the digits test split)"
    )
    parser.add_argument("--split", default="val", help="sub-folder of --data to score (default: val)")
    parser.add_argument("--img-size", type=int, help="evaluate at this resolution (default: the model's)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="data loader processes")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument(
        "--json", dest="json_out", help="write the result here (default: eval_<data>_<split>.json in the run "
        "directory, or next to the model file)",
    )  # fmt: skip
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 1 or args.workers < 0:
        raise ValueError(f"--batch-size must be >= 1 and --workers >= 0, got {args.batch_size} and {args.workers}")
    classifier = load_classifier(args.model)
    pre = classifier.preprocessing
    if args.img_size:
        pre = dataclasses.replace(pre, img_size=args.img_size)
    if args.data is None and classifier.dataset != DIGITS:
        raise ValueError(f"{args.model} was not trained on the embedded digits: pass --data DIR to evaluate it")
    data = args.data
    dataset = build_eval_dataset(data, classifier.classes, pre, args.split)
    device = resolve_device(args.device)
    loader = DataLoader(
        dataset, batch_size=args.batch_size, num_workers=args.workers, collate_fn=collate_skipping_bad_files
    )
    model = classifier.model.to(device)
    metrics = evaluate(model, loader, device, amp_dtype(args.precision, device))
    result = dict(
        model=str(classifier.source), data=data or DIGITS, split="test" if data in (None, DIGITS) else args.split,
        img_size=pre.img_size, top1=metrics["top1"], top5=metrics["top5"], loss=metrics["loss"],
        images=metrics["count"], skipped_files=[b.path for b in metrics["skipped"]],
    )  # fmt: skip
    print(
        f"{result['data']} ({result['split']}, {result['images']} images at {pre.img_size} px): "
        f"top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%  loss {result['loss']:.4f}"
    )
    for path in result["skipped_files"]:
        print(f"skipped unreadable file {path}")
    out = _json_path(args, classifier.source, result)
    write_json(out, result)
    print(f"wrote {out}")
    return 0


def _json_path(args: argparse.Namespace, source: Path, result: dict) -> Path:
    """--json, else eval_<data>_<split>.json in the run directory, or next to the model file."""
    if args.json_out:
        return Path(args.json_out)
    name = f"eval_{Path(result['data']).name or 'data'}_{result['split']}.json"
    if Path(args.model).is_dir():
        return Path(args.model) / name
    return source.with_name(f"{source.stem}.{name}")
