"""``vil info``: parameters and GMACs of every variant (counted by torch's flop counter, 1 MAC = 2 FLOPs), next to
the paper's numbers, and how the GMACs grow with the image size in the parallel and the chunkwise form.

GMACs are per image. "counted" is what our implementation executes (``torch.utils.flop_counter``, on the meta
device: no memory, no compute); "paper convention" is the hand count in the paper's convention (nominal products, the
mLSTM cell as S^2 * E per block). See ``vil.bench.flops`` for why the two differ.
"""

from __future__ import annotations

import argparse
import json

from ..bench.flops import COMPONENT_HELP, COMPONENTS, PAPER_GMACS, count_macs, paper_macs
from ..models import VARIANTS, list_models
from ..models.factory import count_parameters
from ..models.variants import resolve_config

DEFAULT_SIZES = "224,448,896,1792"
CONVENTION = (
    "GMACs per image; 1 MAC = 2 FLOPs, GMACs = FLOPs / 2 / 1e9 as counted by torch.utils.flop_counter.FlopCounterMode "
    "(matrix products and convolutions; no bias, norm or elementwise ops). 'paper convention': the nominal products "
    "with the mLSTM cell counted as S^2 * E per block, as the paper."
)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "info", help="parameters and GMACs of the variants, and their growth with resolution", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("pattern", nargs="?", default="*", help="shell-style filter on the names, e.g. 'vil2_*'")
    parser.add_argument(
        "--sizes", default=DEFAULT_SIZES,
        help="image sizes of the growth table, comma-separated (default %(default)s; 'none' for no growth table)",
    )  # fmt: skip
    parser.add_argument("--breakdown", action="store_true", help="also show the MACs of each component")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=run)


def parse_sizes(text: str) -> list[int]:
    if text.strip().lower() == "none":
        return []
    try:
        sizes = [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise ValueError(f"--sizes must be comma-separated image sizes in pixels, e.g. 224,448; got {text!r}") from None
    if not sizes or any(size < 1 for size in sizes):
        raise ValueError(f"--sizes must list positive image sizes, got {text!r}")
    return sizes


def variant_info(name: str, sizes: list[int]) -> dict:
    """Parameters and MACs of one variant at its resolution, and the growth with the image size per cell form."""
    config = resolve_config(name)
    params = count_parameters(config)
    counted, paper = count_macs(config), paper_macs(config)
    growth = []
    for size in sizes:
        parallel, chunkwise = count_macs(config, size, "parallel"), count_macs(config, size, "chunkwise")
        growth.append(
            dict(
                size=size, tokens=parallel.tokens, parallel_gmacs=parallel.gmacs, chunkwise_gmacs=chunkwise.gmacs,
                chunkwise_form=chunkwise.cell_forms[0], paper_convention_gmacs=paper_macs(config, size).gmacs,
            )
        )  # fmt: skip
    return dict(
        name=name, params=params, img_size=config.img_size[0], tokens=counted.tokens,
        cell_form=", ".join(counted.cell_forms), gmacs=counted.gmacs, paper_convention_gmacs=paper.gmacs,
        paper_gmacs=PAPER_GMACS.get(name), counted_components=counted.components,
        paper_convention_components=paper.components, growth=growth,
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    matching = set(list_models(args.pattern))
    names = [name for name in VARIANTS if name in matching]  # in the table's order: v2 T/S/B, then v1
    if not names:
        raise ValueError(f"no model matches {args.pattern!r}; models: {', '.join(list_models())}")
    sizes = parse_sizes(args.sizes)
    rows = [variant_info(name, sizes) for name in names]
    if args.json:
        print(json.dumps(dict(convention=CONVENTION, models=rows), indent=1))
        return 0
    print(CONVENTION)
    print()
    print(variants_table(rows))
    if sizes:
        print()
        print(growth_table(rows))
    if args.breakdown:
        for row in rows:
            print()
            print(breakdown_table(row))
    return 0


def variants_table(rows: list[dict]) -> str:
    lines = [
        "| model | params | px | tokens | cell form (auto) | GMACs counted | GMACs paper convention | GMACs paper |",
        "|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        paper = f"{r['paper_gmacs']:.1f}" if r["paper_gmacs"] is not None else "–"
        lines.append(
            f"| {r['name']} | {r['params']:,} | {r['img_size']} | {r['tokens']} | {r['cell_form']} | {r['gmacs']:.2f} "
            f"| {r['paper_convention_gmacs']:.2f} | {paper} |"
        )
    return "\n".join(lines)


def growth_table(rows: list[dict]) -> str:
    lines = [
        "| model | px | tokens | GMACs parallel | GMACs chunkwise | parallel / chunkwise | GMACs paper convention |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        for g in r["growth"]:
            ratio = g["parallel_gmacs"] / g["chunkwise_gmacs"]
            lines.append(
                f"| {r['name']} | {g['size']} | {g['tokens']:,} | {g['parallel_gmacs']:,.1f} "
                f"| {g['chunkwise_gmacs']:,.1f} {g['chunkwise_form'].removeprefix('chunkwise ')} | {ratio:.2f} "
                f"| {g['paper_convention_gmacs']:,.1f} |"
            )
    return "\n".join(lines)


def breakdown_table(row: dict) -> str:
    counted, paper = row["counted_components"], row["paper_convention_components"]
    lines = [
        f"{row['name']} at {row['img_size']} px ({row['cell_form']}), GMACs by component:",
        "| component | counted | paper convention | what |",
        "|---|---:|---:|---|",
    ]
    for name in COMPONENTS:
        lines.append(f"| {name} | {counted[name] / 1e9:.4f} | {paper[name] / 1e9:.4f} | {COMPONENT_HELP[name]} |")
    lines.append(f"| total | {sum(counted.values()) / 1e9:.4f} | {sum(paper.values()) / 1e9:.4f} | |")
    return "\n".join(lines)
