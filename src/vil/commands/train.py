"""``vil train``: train or fine-tune a ViL; without arguments, the default run on the embedded digits.

The same command runs data-parallel under torchrun, e.g. on 8 GPUs: ``torchrun --nproc_per_node 8 -m vil.cli train
--recipe in1k_vil2_tiny --data /data/imagenet``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..data.sources import DIGITS
from ..train import run_files
from ..train.config import RUNTIME_FIELDS, TrainConfig
from ..train.distributed import is_main_process
from ..train.errors import TrainingError
from ..train.evaluate import format_accuracy
from ..train.fitting import configure_run
from ..train.recipes import NEEDS_INIT, RECIPES, get_recipe

# Flags that set one config field each (None: not given, keep the recipe's or the resumed run's value).
FLAG_FIELDS = {
    "model": "model", "init": "init", "data": "data", "img_size": "img_size", "epochs": "epochs",
    "batch_size": "batch_size", "lr": "lr", "seed": "seed", "workers": "workers", "precision": "precision",
    "device": "device", "ema": "ema_decay", "compile": "compile",
}  # fmt: skip


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="train or fine-tune a ViL (default: the digits run)", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("--recipe", help=f"named settings (default: digits, with --data: folder): {', '.join(RECIPES)}")
    parser.add_argument(
        "--data", help="image folder: DIR/train/<class>/, optionally DIR/val/ and DIR/test/ (default: embedded digits)"
    )
    parser.add_argument("--out", help="run directory (default: runs/<recipe>-<date>-<time>)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    parser.add_argument("--init", help="start from these weights: a run directory, .safetensors, or official .th")
    parser.add_argument("--model", help="model variant (see `vil models`); replaces the recipe's model")
    parser.add_argument("--img-size", type=int, help="training resolution (recipe folder: the data's image size)")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int, help="global batch (all devices, accumulation included)")
    parser.add_argument("--lr", type=float, help="learning rate per 1024 images (scaled with the batch)")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--workers", type=int, help="data loader processes per device")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    parser.add_argument("--ema", type=float, metavar="DECAY", help="keep an EMA of the weights, e.g. 0.9999")
    parser.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="override any setting (JSON value), e.g. --set warmup_epochs=10 --set model_args.drop_path_rate=0.1",
    )  # fmt: skip
    parser.add_argument("--stop-after-epoch", type=int, metavar="N", help="stop after epoch N (resume later)")
    parser.add_argument("--list-recipes", action="store_true", help="list the recipes and exit")
    parser.add_argument("--print-config", action="store_true", help="print the resolved settings as JSON and exit")
    parser.set_defaults(func=run)


def resolve_config(args: argparse.Namespace) -> tuple[TrainConfig, list[str]]:
    """The run's config: the recipe (or, with --resume, the saved config) with the flags and --set on top, fitted to
    the data and the run's length where the user left a setting to the recipe (see vil.train.fitting); and one
    line per choice made.
    """
    flags = {field: getattr(args, flag) for flag, field in FLAG_FIELDS.items() if getattr(args, flag) is not None}
    if args.resume:
        if not args.out:
            raise ValueError("--resume needs --out DIR, the run directory to continue")
        base = run_files.read_config(args.out)
        if args.recipe and args.recipe != base.recipe:
            raise ValueError(f"--recipe {args.recipe} differs from the resumed run's recipe {base.recipe}")
        config = base.with_overrides(args.set, **flags)
        changed = base.differences(config, ignore=RUNTIME_FIELDS)
        if changed:
            raise ValueError(
                f"--resume continues the saved settings, but these differ: {changed}; "
                f"only {', '.join(RUNTIME_FIELDS)} may change"
            )
        return config, []
    recipe = get_recipe(args.recipe or ("folder" if args.data not in (None, DIGITS) else "digits"))
    return configure_run(recipe, args.set, flags)


def run(args: argparse.Namespace) -> int:
    if args.list_recipes:
        return _list_recipes()
    config, notes = resolve_config(args)
    if args.print_config:
        for note in notes:
            print(f"vil train: {note}", file=sys.stderr)
        print(json.dumps(config.to_dict(), indent=1))
        return 0
    out = Path(args.out or f"runs/{config.recipe}-{time.strftime('%Y%m%d-%H%M%S')}")
    is_main = is_main_process()
    from ..train.progress import ConsoleProgress
    from ..train.trainer import train

    progress = ConsoleProgress() if is_main else None
    if is_main:
        print(f"vil train: recipe {config.recipe}, run directory {out}")
        for note in notes:
            print(f"  {note}")
    try:
        summary = train(config, out, resume=args.resume, progress=progress, stop_after_epoch=args.stop_after_epoch)
    except TrainingError as error:
        print(f"vil train: error: {error}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print(f"\nvil train: interrupted; continue with: vil train --out {out} --resume", file=sys.stderr)
        return 130
    if is_main:
        _print_result(summary, out)
    return 0


def _print_result(summary: dict, out: Path) -> None:
    state = "finished" if summary["finished"] else f"stopped (continue with: vil train --out {out} --resume)"
    print(
        f"validation after epoch {summary['epochs_completed']} ({summary['val_images']} images): "
        f"{format_accuracy(summary['val_top1'], summary['val_top5'])}; best epoch {summary['best_epoch']} "
        f"(top-1 {summary['best_val_top1']:.2f}%)"
    )
    if summary["top1"] is not None:
        print(
            f"test ({summary['test_images']} images, scored once with the weights of epoch {summary['best_epoch']}): "
            f"{format_accuracy(summary['top1'], summary['top5'])}"
        )
    elif summary["finished"]:
        print(f"no test split (add {summary['dataset']}/test/<class>/ to score one at the end)")
    print(f"run {state}: {summary['epochs_completed']}/{summary['epochs']} epochs in {summary['seconds']:.1f} s; {out}")
    if summary["skipped_files"]:
        print(f"skipped {summary['skipped_files']} unreadable file(s), listed in {out / run_files.SKIPPED}")


def _list_recipes() -> int:
    print(f"{'recipe':24s} {'model':40s} {'size':>4s} {'epochs':>6s} {'batch':>5s} {'lr/1024':>8s}")
    for name, r in RECIPES.items():
        model = r.model or (
            "(the --init weights)" if name in NEEDS_INIT else ", ".join(f"{k}={v}" for k, v in r.model_args.items())
        )
        print(f"{name:24s} {model:40s} {r.img_size:>4d} {r.epochs:>6d} {r.batch_size:>5d} {r.lr:>8.1e}")
    return 0
