"""The files a study writes into its directory, each atomically: table, JSON, CSV and the bar plot."""

from __future__ import annotations

import logging
from pathlib import Path

from ..io_utils import write_json, write_text
from ..utils.optional import EXTRA, available
from .results import DesignResult, markdown_table, runs_csv, study_record
from .runner import RunOutcome, Study

logger = logging.getLogger(__name__)

JSON_NAME, CSV_NAME, MARKDOWN_NAME, PLOT_NAME = "study.json", "study.csv", "study.md", "study.png"


def write_study_files(
    study: Study,
    reference: str,
    designs: list[DesignResult],
    outcomes: list[RunOutcome],
    context: dict,
    out: Path,
) -> dict[str, Path]:
    """study.md (the table), study.json (everything), study.csv (one row per run), study.png (the bar plot; only
    with matplotlib installed, else a warning says so).
    """
    files = dict(json=out / JSON_NAME, csv=out / CSV_NAME, markdown=out / MARKDOWN_NAME, plot=out / PLOT_NAME)
    record = study_record(study, reference, designs, outcomes, context)
    write_json(files["json"], record)
    write_text(files["csv"], runs_csv(outcomes, designs))
    write_text(files["markdown"], markdown_table(designs, reference) + "\n")
    title = (
        f"ViL {study.title}: {context['dataset']}, recipe {context['recipe']}, {context['epochs']} epochs, "
        f"{len(context['seeds'])} seed(s)"
    )
    if not available("matplotlib"):
        logger.warning("no %s: matplotlib is not installed (pip install 'vil[%s]')", PLOT_NAME, EXTRA)
        del files["plot"]
        return files
    from .plot import plot_study  # imports matplotlib

    plot_study(designs, reference, title, files["plot"])
    return files
