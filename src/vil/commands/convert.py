"""``vil convert SRC DST``: an official checkpoint -> our safetensors format, printing the inferred architecture."""

from __future__ import annotations

import argparse
import json

from ..weights.build import model_from_state_dict
from ..weights.convert import describe_architecture
from ..weights.official import read_official
from ..weights.vil_format import save_pretrained


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert", help="convert an official checkpoint to vil's safetensors format", description=__doc__
    )
    parser.add_argument("src", help="official checkpoint (.th: a released file or a VisionLSTM/VisionLSTM2 state dict)")
    parser.add_argument("dst", help="output file (.safetensors)")
    parser.add_argument(
        "--img-size", type=int, nargs="+", metavar="N", help="image size: N or H W (position embedding resampled)"
    )
    parser.add_argument("--num-classes", type=int, help="number of classes (0: no head); a new head if it changes")
    parser.add_argument(
        "--patch-stride", type=int, help="patch stride, for state dicts that do not record it (8: long-sequence)"
    )
    parser.add_argument("--block-design", help="block design, for state dicts that do not record it")
    parser.add_argument("--json", action="store_true", help="print the architecture as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    overrides = {}
    if args.img_size is not None:
        if len(args.img_size) not in (1, 2):
            raise ValueError(f"--img-size takes N or H W, got {len(args.img_size)} numbers")
        overrides["img_size"] = args.img_size[0] if len(args.img_size) == 1 else tuple(args.img_size)
    for name in ("num_classes", "patch_stride", "block_design"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    converted = read_official(args.src)
    # model_from_state_dict, not model_from_converted: the assumptions are printed below once, with the flags to pass
    model = model_from_state_dict(converted.state_dict, converted.config, args.src, **overrides)
    save_pretrained(model, args.dst, metadata={"converted_from": converted.layout})
    assumed = {name: reason for name, reason in converted.assumptions.items() if name not in overrides}
    if args.json:
        print(json.dumps(dict(src=args.src, dst=args.dst, layout=converted.layout, config=model.config.to_dict(),
                              assumed=assumed), indent=1))  # fmt: skip
        return 0
    params = sum(p.numel() for p in model.parameters())
    print(f"{args.src}: {converted.layout} layout")
    print(f"  {describe_architecture(model.config)}, {params:,d} parameters")
    for name, reason in assumed.items():
        print(f"  note: {reason} (--{name.replace('_', '-')} to choose)")
    print(f"wrote {args.dst}")
    return 0
