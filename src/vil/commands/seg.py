"""``vil seg``: semantic segmentation with a ViL (or timm ViT) + UperNet: train, eval, predict.

``vil seg train`` without arguments trains on digit scenes composed from scikit-learn's digits (no download) and
writes prediction pictures of held-out scenes. ADE20K as the paper (data in the ADE20K layout, released backbone
weights or --init): ``vil seg train --recipe ade20k_upernet_vil2_tiny --data /data/ADEChallengeData2016``; on 8 GPUs
``torchrun --nproc_per_node 8 -m vil.cli seg train --recipe ade20k_upernet_vil2_tiny --data ...``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

# Flags that set one config field each (None: not given, keep the recipe's or the resumed run's value).
FLAG_FIELDS = {
    "model": "model",
    "init": "init",
    "data": "data",
    "num_classes": "num_classes",
    "crop_size": "crop_size",
    "iters": "iters",
    "batch_size": "batch_size",
    "lr": "lr",
    "seed": "seed",
    "workers": "workers",
    "precision": "precision",
    "device": "device",
}


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "seg",
        help="semantic segmentation: train, eval, predict",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="seg_command", metavar="COMMAND", required=True)
    _register_train(commands)
    _register_eval(commands)
    _register_predict(commands)


def _register_train(commands) -> None:
    p = commands.add_parser("train", help="train a segmenter (default: the digit scenes)")
    p.add_argument("--recipe", help="named settings (default: digit_scenes; see --list-recipes)")
    p.add_argument("--data", help="directory in the ADE20K layout (default: embedded digit scenes)")
    p.add_argument("--out", help="run directory (default: runs/<recipe>-<date>-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--model", help="backbone: a ViL variant or a timm model with forward_intermediates")
    p.add_argument("--init", help="backbone weights: 'released', a classification file or run directory")
    p.add_argument("--num-classes", type=int, help="classes of --data without a classes.txt (default: ADE20K's 150)")
    p.add_argument("--crop-size", type=int)
    p.add_argument("--iters", type=int)
    p.add_argument("--batch-size", type=int, help="global batch (all devices, accumulation included)")
    p.add_argument("--lr", type=float, help="learning rate per 16 images (scaled with the batch)")
    p.add_argument("--seed", type=int)
    p.add_argument("--workers", type=int)
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--device")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any setting (JSON value), e.g. --set eval_every=2000 --set model_args.channels=64",
    )
    p.add_argument("--stop-after", type=int, metavar="N", help="stop after iteration N (resume later)")
    p.add_argument("--list-recipes", action="store_true", help="list the recipes and exit")
    p.add_argument("--print-config", action="store_true", help="print the resolved settings as JSON and exit")
    p.set_defaults(func=run_train)


def _register_eval(commands) -> None:
    p = commands.add_parser("eval", help="mIoU / aAcc / mAcc of a trained segmenter")
    p.add_argument("model", help="a `vil seg train` run directory or segmenter file")
    p.add_argument("--data", help="directory in the ADE20K layout (default: the run's digit scenes)")
    p.add_argument("--split", default="val", help="training or validation (default: validation)")
    _inference_flags(p)
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    p.set_defaults(func=run_eval)


def _register_predict(commands) -> None:
    p = commands.add_parser("predict", help="label PNGs and side-by-side pictures of images")
    p.add_argument("images", nargs="+", type=Path, metavar="IMG")
    p.add_argument("--model", required=True, help="a `vil seg train` run directory or segmenter file")
    p.add_argument("--out", type=Path, default=Path("predictions"), help="output directory (default: predictions)")
    _inference_flags(p)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=run_predict)


def _inference_flags(p) -> None:
    p.add_argument("--mode", choices=["whole", "slide"], help="whole image or sliding windows (default: the run's)")
    p.add_argument("--scales", help="comma list of image scales, e.g. 0.75,1,1.25,1.5,1.75 (default 1)")
    p.add_argument("--flip", action="store_true", help="also average the horizontally flipped image")
    p.add_argument("--crop-size", type=int, help="sliding window size (default: the run's crop)")
    p.add_argument("--stride", type=int, help="sliding window stride (default: the run's, 341 for ADE20K)")


# ----------------------------------------------------------------------------------------------------------------
# train


def resolve_train_config(args: argparse.Namespace):
    from ..seg.recipes import get_recipe
    from ..seg.train_config import RUNTIME_FIELDS, SegTrainConfig

    if args.resume:
        if not args.out:
            raise ValueError("--resume needs --out DIR, the run directory to continue")
        path = Path(args.out) / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"{args.out} is not a run directory: it has no config.json (nothing to resume)")
        base = SegTrainConfig.from_dict(json.loads(path.read_text())["config"])
        if args.recipe and args.recipe != base.recipe:
            raise ValueError(f"--recipe {args.recipe} differs from the resumed run's recipe {base.recipe}")
    else:
        base = get_recipe(args.recipe or "digit_scenes")
    flags = {field: getattr(args, flag) for flag, field in FLAG_FIELDS.items() if getattr(args, flag) is not None}
    config = base.with_overrides(args.set, **flags)
    if args.resume and (changed := base.differences(config, ignore=RUNTIME_FIELDS)):
        raise ValueError(
            f"--resume continues the saved settings, but these differ: {changed}; "
            f"only {', '.join(RUNTIME_FIELDS)} may change"
        )
    return config


def run_train(args: argparse.Namespace) -> int:
    from ..train.distributed import is_main_process
    from ..train.errors import TrainingError

    if args.list_recipes:
        return _list_recipes()
    config = resolve_train_config(args)
    if args.print_config:
        print(json.dumps(config.to_dict(), indent=1))
        return 0
    out = Path(args.out or f"runs/{config.recipe}-{time.strftime('%Y%m%d-%H%M%S')}")
    from ..seg.progress import SegProgress
    from ..seg.trainer import train_segmenter

    is_main = is_main_process()
    if is_main:
        print(f"vil seg train: recipe {config.recipe}, run directory {out}")
    started = time.perf_counter()
    try:
        summary = train_segmenter(
            config, out, resume=args.resume, progress=SegProgress() if is_main else None, stop_after=args.stop_after
        )
    except TrainingError as error:
        print(f"vil seg train: error: {error}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print(f"\nvil seg train: interrupted; continue with: vil seg train --out {out} --resume", file=sys.stderr)
        return 130
    if not is_main:
        return 0
    _print_metrics(summary, f"held-out {'scenes' if config.data is None else 'images'} ({summary['val_images']})")
    if summary["finished"] and config.examples:
        _write_examples(out, config.examples)
    state = "finished" if summary["finished"] else f"stopped (continue with: vil seg train --out {out} --resume)"
    print(
        f"run {state}: {summary['iters_completed']}/{summary['iters']} iterations, {summary['seconds']:.1f} s of "
        f"training and validation, {time.perf_counter() - started:.1f} s in all; {out}"
    )
    return 0


def _write_examples(out: Path, count: int) -> None:
    """Prediction pictures for the first ``count`` held-out images (OUT/predictions/)."""
    from ..seg.files import load_segmenter
    from ..seg.sources import SCENES_DIR
    from ..utils.optional import EXTRA, available

    if not available("matplotlib"):
        print(f"no prediction pictures: they need matplotlib (pip install 'vil[{EXTRA}]')")
        return
    saved = load_segmenter(out)
    root = Path(saved.dataset) if saved.dataset != "digit_scenes" else out / SCENES_DIR
    images = sorted((root / "images" / "validation").iterdir())[:count]
    written = _predict(saved, images, out / "predictions", _settings(argparse.Namespace(), saved), "cpu")
    print(f"wrote {len(written)} prediction pictures to {out / 'predictions'}")


def _list_recipes() -> int:
    from ..seg.recipes import RECIPES

    print(f"{'recipe':30s} {'backbone':26s} {'crop':>4s} {'iters':>7s} {'batch':>5s} {'lr/16':>7s} {'init':>9s}")
    for name, r in RECIPES.items():
        print(
            f"{name:30s} {r.model:26s} {r.crop_size:>4d} {r.iters:>7d} {r.batch_size:>5d} {r.lr:>7.1e} "
            f"{r.init or 'random':>9s}"
        )
    return 0


# ----------------------------------------------------------------------------------------------------------------
# eval and predict


def _settings(args: argparse.Namespace, saved):
    from ..seg.inference import InferenceSettings

    recorded = saved.inference or {}
    scales = (1.0,)
    if getattr(args, "scales", None):
        try:
            scales = tuple(float(s) for s in args.scales.split(","))
        except ValueError:
            raise ValueError(f"--scales {args.scales!r} is not a comma list of numbers, e.g. 0.75,1,1.25") from None
        if any(s <= 0 for s in scales):
            raise ValueError(f"--scales must be positive, got {args.scales!r}")
    crop = getattr(args, "crop_size", None) or recorded.get("crop_size", saved.model.config.img_size)
    stride = getattr(args, "stride", None) or recorded.get("stride", crop * 2 // 3)
    if crop < 1 or stride < 1:
        raise ValueError(f"--crop-size and --stride must be positive, got {crop} and {stride}")
    mode = getattr(args, "mode", None) or recorded.get("mode", "whole")
    return InferenceSettings(mode=mode, crop_size=crop, stride=stride, scales=scales, flip=getattr(args, "flip", False))


def run_eval(args: argparse.Namespace) -> int:
    from torch.utils.data import DataLoader

    from ..seg.data import SegmentationDataset, collate_samples
    from ..seg.files import load_segmenter
    from ..seg.inference import evaluate
    from ..seg.sources import DIGIT_SCENES, SCENES_DIR
    from ..seg.transforms import eval_transform
    from ..train.distributed import resolve_device

    saved = load_segmenter(args.model)
    if args.data is None:
        if saved.dataset != DIGIT_SCENES or not Path(args.model).is_dir():
            raise ValueError(f"{args.model} was not trained on the digit scenes of its run directory: pass --data DIR")
        data = Path(args.model) / SCENES_DIR
    else:
        data = Path(args.data)
    settings = _settings(args, saved)
    scale = tuple((saved.inference or {}).get("scale", (2048, 512)))
    dataset = SegmentationDataset(data, args.split, saved.classes, eval_transform(scale, saved.mean, saved.std))
    loader = DataLoader(dataset, batch_size=1, num_workers=args.workers, collate_fn=collate_samples)
    device = resolve_device(args.device)
    metrics = evaluate(saved.model.to(device), loader, device, None, settings, saved.classes)
    result = dict(
        model=str(saved.source),
        data=str(data),
        split=args.split,
        images=len(dataset),
        mode=settings.mode,
        scales=list(settings.scales),
        flip=settings.flip,
        miou=metrics["miou"],
        aacc=metrics["aacc"],
        macc=metrics["macc"],
        iou=metrics["iou"],
        acc=metrics["acc"],
        skipped_files=[b.path for b in dataset.skipped + metrics["skipped"]],
    )
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(
        f"{data} ({args.split}, {len(dataset)} images, {settings.mode}, scales {list(settings.scales)}"
        f"{', flip' if settings.flip else ''})"
    )
    _print_metrics(result, "")
    for name, iou in result["iou"].items():
        print(f"  {name:24s} IoU {'n/a' if iou is None else f'{100 * iou:6.2f}%'}")
    for path in result["skipped_files"]:
        print(f"skipped {path}")
    return 0


def _print_metrics(result: dict, what: str) -> None:
    def pct(value):
        return "n/a" if value is None else f"{100 * value:.2f}%"

    print(
        f"{what + ': ' if what else ''}mIoU {pct(result['miou'])}  aAcc {pct(result['aacc'])}  "
        f"mAcc {pct(result['macc'])}"
    )


def run_predict(args: argparse.Namespace) -> int:

    from ..seg.files import load_segmenter
    from ..train.distributed import resolve_device

    missing = [str(p) for p in args.images if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"no such image file(s): {', '.join(missing)}")
    saved = load_segmenter(args.model)
    written = _predict(saved, args.images, args.out, _settings(args, saved), resolve_device(args.device))
    for label_path, picture, labels in written:
        counts = {saved.classes[c]: int((labels == c).sum()) for c in sorted(set(labels.flatten().tolist()))}
        top = ", ".join(
            f"{name} {100 * n / labels.size:.1f}%" for name, n in sorted(counts.items(), key=lambda kv: -kv[1])[:5]
        )
        print(f"{label_path}  {picture}  ({top})")
    return 0


def _predict(saved, images, out: Path, settings, device):
    from ..seg.predict import predict_files

    return predict_files(saved, list(images), out, settings, device)
