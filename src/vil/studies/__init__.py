"""The paper's design studies at any scale: train every block design (Table 2) or classification design (Table 3)
with the same recipe, budget and seeds, then compare (``vil study blocks|pooling``).

``run_study`` is the whole study as a library call; :mod:`.runner` plans and runs the training runs, :mod:`.results`
aggregates them into tables, :mod:`.files` writes the study's files, :mod:`.plot` draws the bar plot.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..train.config import TrainConfig
from ..train.distributed import is_main_process
from .files import write_study_files
from .results import DesignResult, markdown_table, study_context, summarize
from .runner import STUDIES, RunOutcome, Study, execute_study, get_study, plan_study, reference_design


@dataclass
class StudyResult:
    study: Study
    reference: str  # the recipe's own design, the baseline of the Δ column
    designs: list[DesignResult]
    outcomes: list[RunOutcome]
    context: dict
    files: dict[str, Path]  # "json", "csv", "markdown", "plot" -> path

    @property
    def table(self) -> str:
        return markdown_table(self.designs, self.reference)


def run_study(
    name: str,
    base: TrainConfig,
    out: str | Path,
    designs: Sequence[str] | None = None,
    seeds: int = 3,
    train_run: Callable[..., dict] | None = None,
    report: Callable | None = None,
) -> StudyResult:
    """Run (or continue) a study and write its table, JSON, CSV and plot into ``out``.

    base: the recipe with overrides; every run uses it with one design and one seed.
    train_run: how to train one run (default ``vil.train.train``, silent); see :func:`.runner.execute_study`.
    """
    from ..train import train

    study = get_study(name)
    out = Path(out)
    runs = plan_study(study, base, out, designs, seeds)
    reference = reference_design(study, base)
    outcomes = execute_study(runs, train_run or train, report)
    chosen = list(dict.fromkeys(run.design for run in runs))
    designs_results = summarize(chosen, outcomes)
    context = study_context(study, outcomes)
    # under torchrun only rank 0 writes (it also wrote the runs' summaries the results come from)
    files = write_study_files(study, reference, designs_results, outcomes, context, out) if is_main_process() else {}
    return StudyResult(study, reference, designs_results, outcomes, context, files)


__all__ = ["STUDIES", "DesignResult", "StudyResult", "run_study"]
