"""``vil models``: the named variants with their architecture and parameter count."""

from __future__ import annotations

import argparse
import json

from ..models import VARIANTS, list_models
from ..models.factory import count_parameters


def register(subparsers) -> None:
    parser = subparsers.add_parser("models", help="list the model variants", description=__doc__)
    parser.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'vil2_*'")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    rows = []
    for name in list_models(args.pattern):
        config = VARIANTS[name].make_config()
        rows.append(dict(name=name, **VARIANTS[name].architecture(), params=count_parameters(config),
                         description=VARIANTS[name].description))  # fmt: skip
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{'name':38s} {'ver':>3s} {'dim':>4s} {'depth':>5s} {'patch':>5s} {'stride':>6s} {'params':>12s}")
    for r in rows:
        print(
            f"{r['name']:38s} {r['version']:>3d} {r['dim']:>4d} {r['depth']:>5d} {r['patch']:>5d} {r['stride']:>6d}"
            f" {r['params']:>12,d}"
        )
    return 0
