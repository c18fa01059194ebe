"""``vil study blocks|pooling``: the paper's design studies (Tables 2 and 3) as one command.

Every block design (``blocks``) or classification design (``pooling``) is trained with the same recipe, budget
and seeds; the study prints a table (top-1 mean ± std over seeds, parameters, GMACs, training time) and writes it
with a bar plot, JSON and CSV into --out. Default: the digits recipe on the embedded dataset. At full scale:
``vil study blocks --recipe in1k_vil2_tiny --data /data/imagenet --seeds 1``.

Each run trains in its own directory (--out/<design>/seed<N>); running the same command again skips finished runs
and resumes stopped ones.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..studies import STUDIES, run_study
from ..studies.runner import StudyRun
from ..train.distributed import is_main_process
from ..train.fitting import configure_run
from ..train.recipes import RECIPES, get_recipe


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "study", help="train every block or classification design and compare them", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument(
        "study", choices=list(STUDIES), help="blocks: the block designs; pooling: the classification designs"
    )
    parser.add_argument(
        "--recipe", default="digits", help=f"training recipe (default %(default)s): {', '.join(RECIPES)}"
    )
    parser.add_argument("--data", help="image folder with train/<class>/ and val/<class>/ (default: embedded digits)")
    parser.add_argument("--designs", help="comma-separated subset of the designs (default: all of the study's)")
    parser.add_argument(
        "--seeds", type=int, default=3, help="runs per design, seeds S, S+1, ... (S: the recipe's seed)"
    )
    parser.add_argument("--epochs", type=int, help="epochs of every run (default: the recipe's)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="override a setting of every run, as in vil train (e.g. --set model_args.dim=32)",
    )  # fmt: skip
    parser.add_argument("--out", help="study directory (default: runs/study-<study>-<recipe>)")
    parser.add_argument("--progress", action="store_true", help="show every run's epochs, as vil train does")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of the table")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    flags = {"data": args.data} if args.data else {}
    if args.epochs is not None:
        flags["epochs"] = args.epochs
    base, notes = configure_run(get_recipe(args.recipe), args.set, flags)
    designs = [d.strip() for d in args.designs.split(",") if d.strip()] if args.designs else None
    out = Path(args.out or f"runs/study-{args.study}-{args.recipe}")
    is_main = is_main_process()  # under torchrun only rank 0 prints
    log = sys.stderr if args.json else sys.stdout  # with --json, stdout holds only the JSON
    if is_main:
        print(f"vil study {args.study}: recipe {base.recipe}, {args.seeds} seed(s), study directory {out}", file=log)
        for note in notes:
            print(f"  {note}", file=log)
    result = run_study(
        args.study, base, out, designs=designs, seeds=args.seeds, train_run=_trainer(args.progress),
        report=_reporter(log) if is_main else None,
    )  # fmt: skip
    failed = [o for o in result.outcomes if o.status == "failed"]
    if not is_main:
        return 3 if failed else 0
    if args.json:
        print(result.files["json"].read_text(), end="")  # the study.json just written
    else:
        print(result.table)
        if result.context.get("val_images"):
            images = result.context["val_images"]
            print(f"top-1 on {images} held-out images: one image is {100 / images:.2f} points")
        print(", ".join(f"{kind}: {path}" for kind, path in result.files.items()))
    if failed:
        print(f"vil study: {len(failed)} run(s) failed; run the command again to retry them", file=sys.stderr)
        return 3
    return 0


def _trainer(progress: bool):
    from ..train.progress import ConsoleProgress
    from ..train.trainer import train

    def train_run(config, run_dir, resume):
        return train(config, run_dir, resume=resume, progress=ConsoleProgress() if progress else None)

    return train_run


def _reporter(log):
    def report(index: int, total: int, run: StudyRun, status: str, summary: dict | None, error: str | None) -> None:
        where = f"[{index + 1}/{total}] {run.design} seed {run.seed}"
        if status in ("starting", "resuming"):
            print(f"{where}: {status} in {run.run_dir}", file=log, flush=True)
        elif status == "failed":
            print(f"{where}: failed: {error}", file=log, flush=True)
        elif summary is not None:
            note = " (finished before)" if status == "skipped" else ""
            print(
                f"{where}: top-1 {summary['top1']:.2f}% after {summary['epochs_completed']} epochs, "
                f"{summary['seconds']:.1f} s{note}",
                file=log,
                flush=True,
            )

    return report
