"""Plan and run a design study: one training run per (design, seed), all with the same recipe and budget.

Each run is an ordinary ``vil.train`` run in its own directory ``OUT/<design>/seed<N>/``. Running a study again
skips the runs that finished and resumes the ones that stopped (from their last epoch checkpoint), so a study
survives interruptions; a directory holding a run with other settings is never overwritten.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..layers.pooling import POOLINGS
from ..layers.traversal import BLOCK_DESIGNS
from ..models.config import ViLConfig
from ..models.variants import resolve_config
from ..train import run_files
from ..train.config import RUNTIME_FIELDS, TrainConfig
from ..train.errors import TrainingError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Study:
    """A study compares the values of one ViLConfig field, everything else equal."""

    name: str
    field: str  # the ViLConfig field that differs between runs
    designs: tuple[str, ...]
    title: str


STUDIES = {
    "blocks": Study("blocks", "block_design", tuple(BLOCK_DESIGNS), "block design (the paper's Table 2)"),
    "pooling": Study("pooling", "pooling", POOLINGS, "classification design (the paper's Table 3)"),
}


@dataclass(frozen=True)
class StudyRun:
    design: str
    seed: int
    config: TrainConfig
    run_dir: Path


@dataclass(frozen=True)
class RunOutcome:
    run: StudyRun
    status: str  # "trained", "resumed", "skipped" (finished before), "failed"
    summary: dict | None  # the run's summary.json (None if it failed before its first epoch)
    error: str | None = None


def get_study(name: str) -> Study:
    if name not in STUDIES:
        raise ValueError(f"unknown study {name!r}; studies: {', '.join(STUDIES)}")
    return STUDIES[name]


def plan_study(
    study: Study, base: TrainConfig, out: str | Path, designs: Sequence[str] | None = None, seeds: int = 3
) -> list[StudyRun]:
    """The runs of a study, seed-major (all designs with the first seed, then the next seed), so that an interrupted
    study already compares every design. Seeds are ``base.seed, base.seed + 1, ...``.
    """
    designs = tuple(designs) if designs else study.designs
    unknown = [d for d in designs if d not in study.designs]
    if unknown:
        raise ValueError(
            f"unknown {study.field} {unknown} for the {study.name} study; expected some of {study.designs}"
        )
    if len(set(designs)) != len(designs):
        raise ValueError(f"designs listed twice: {list(designs)}")
    if not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"seeds must be a positive number of seeds, got {seeds!r}")
    if study.field in base.model_args:
        raise ValueError(
            f"the {study.name} study sets model_args.{study.field} itself (one value per run); "
            f"choose the values with --designs instead of --set model_args.{study.field}={base.model_args[study.field]}"
        )
    out = Path(out)
    return [
        StudyRun(
            design=design,
            seed=base.seed + offset,
            config=base.replace(seed=base.seed + offset, model_args={**base.model_args, study.field: design}),
            run_dir=out / design / f"seed{base.seed + offset}",
        )
        for offset in range(seeds)
        for design in designs
    ]


def reference_design(study: Study, base: TrainConfig) -> str:
    """The value of the studied field that the recipe's model uses when the study does not set it (the default)."""
    model_args = dict(img_size=base.img_size, **base.model_args)
    config = resolve_config(base.model, **model_args) if base.model else ViLConfig(**model_args)
    return getattr(config, study.field)


def run_state(run: StudyRun) -> str:
    """ "finished", "stopped" (a checkpoint to resume from) or "new". Raises ValueError if the directory holds a run
    with other settings than this one (e.g. after changing --epochs for the same --out)."""
    checkpoint = run.run_dir / run_files.CHECKPOINT
    if not checkpoint.is_file():
        return "new"
    saved = run_files.read_config(run.run_dir)
    changed = saved.differences(run.config, ignore=RUNTIME_FIELDS)
    if changed:
        details = "; ".join(f"{name}: {a!r} there vs {b!r} now" for name, (a, b) in changed.items())
        raise ValueError(
            f"{run.run_dir} holds a run with other settings ({details}); choose another --out for a study with "
            "these settings, or delete that directory"
        )
    summary = run_files.read_summary(run.run_dir)
    return "finished" if summary is not None and summary.get("finished") else "stopped"


def execute_study(
    runs: Sequence[StudyRun],
    train_run: Callable[..., dict],
    report: Callable[[int, int, StudyRun, str, dict | None, str | None], None] | None = None,
) -> list[RunOutcome]:
    """Train every run that has not finished: ``train_run(config, run_dir, resume=...)`` (``vil.train.train`` or a
    wrapper with progress output). A run that fails with a TrainingError (diverged, out of memory) is recorded and
    the study goes on. ``report(index, total, run, status, summary, error)`` is called before ("starting") and after
    each run.
    """
    states = [run_state(run) for run in runs]  # all checked first: a conflicting directory stops before any training
    outcomes = []
    for index, (run, state) in enumerate(zip(runs, states, strict=True)):
        if state == "finished":
            outcome = RunOutcome(run, "skipped", run_files.read_summary(run.run_dir))
        else:
            if report is not None:
                report(index, len(runs), run, "starting" if state == "new" else "resuming", None, None)
            try:
                summary = train_run(run.config, run.run_dir, resume=state == "stopped")
                outcome = RunOutcome(run, "trained" if state == "new" else "resumed", summary)
            except TrainingError as error:
                logger.warning("run %s failed: %s", run.run_dir, error)
                outcome = RunOutcome(run, "failed", run_files.read_summary(run.run_dir), str(error))
        if report is not None:
            report(index, len(runs), run, outcome.status, outcome.summary, outcome.error)
        outcomes.append(outcome)
    return outcomes
