"""``vil predict``: the five most likely classes of each image, with their names and probabilities."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ..data.folder import read_image
from ..data.preprocessing import eval_transform
from ..train.distributed import resolve_device
from ..weights.classifier import load_classifier


def register(subparsers) -> None:
    parser = subparsers.add_parser("predict", help="classify images with a trained model", description=__doc__)
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    parser.add_argument(
        "--model",
        required=True,
        help="a run directory, .safetensors file, training checkpoint, official .th file, or a model name "
        "(released ImageNet-1K weights, downloaded)",
    )
    parser.add_argument("--top", type=int, default=5, help="how many classes to show (default: 5)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=run)


@torch.no_grad()
def run(args: argparse.Namespace) -> int:
    if args.top < 1:
        raise ValueError(f"--top must be >= 1, got {args.top}")
    classifier = load_classifier(args.model)
    device = resolve_device(args.device)
    model = classifier.model.to(device).eval()
    transform = eval_transform(classifier.preprocessing, "pil")
    results = []
    for path in args.images:
        probabilities = model(_load_image(path, transform).unsqueeze(0).to(device)).float().softmax(dim=-1)[0]
        top = probabilities.topk(min(args.top, len(probabilities)))
        predictions = [
            dict(index=int(i), name=classifier.class_name(int(i)), probability=float(p))
            for p, i in zip(top.values, top.indices, strict=True)
        ]
        results.append(dict(image=str(path), predictions=predictions))
    if args.json:
        print(json.dumps(dict(model=str(classifier.source), results=results), indent=1))
        return 0
    for result in results:
        print(result["image"])
        for rank, p in enumerate(result["predictions"], 1):
            print(f"  {rank}. {p['name']:30s} {100 * p['probability']:6.2f}%")
    return 0


def _load_image(path: str, transform) -> torch.Tensor:
    if not Path(path).is_file():
        raise FileNotFoundError(f"no image file at {path}")
    try:
        image = read_image(path)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    return transform(image)
