"""``vil checkpoints``: the released ImageNet-1K checkpoints, from the variant table."""

from __future__ import annotations

import argparse
import json

from ..models import VARIANTS, list_models


def register(subparsers) -> None:
    parser = subparsers.add_parser("checkpoints", help="list the released pretrained checkpoints", description=__doc__)
    parser.add_argument("pattern", nargs="?", default="*", help="shell-style filter on the model name, e.g. 'vil2_*'")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    rows = []
    for name in list_models(args.pattern):
        variant = VARIANTS[name]
        for index, checkpoint in enumerate(variant.checkpoints):
            rows.append(
                dict(
                    name=f"{name}.{checkpoint.tag}", model=name, default=index == 0, **variant.architecture(),
                    top1=checkpoint.top1, url=checkpoint.url, official_name=checkpoint.official_name,
                )
            )  # fmt: skip
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{'name':46s} {'ver':>3s} {'dim':>4s} {'depth':>5s} {'stride':>6s} {'top-1':>5s}  url")
    for r in rows:
        print(
            f"{r['name']:46s} {r['version']:>3d} {r['dim']:>4d} {r['depth']:>5d} {r['stride']:>6d} {r['top1']:>5.1f}"
            f"  {r['url']}"
        )
    print("\nvil.create_model(NAME, pretrained=True) downloads the model's first checkpoint; NAME.TAG picks one.")
    return 0
