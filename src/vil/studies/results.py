"""A study's results: per design the top-1 over seeds (mean ± sample std), parameters, MACs and training time, as a
Markdown table (for people) and JSON / CSV (for programs)."""

from __future__ import annotations

import csv
import io
import statistics
from dataclasses import asdict, dataclass, field

from ..bench.flops import count_macs
from ..models.config import ViLConfig
from .runner import RunOutcome, Study


@dataclass
class DesignResult:
    design: str
    seeds: list[int] = field(default_factory=list)  # seeds of the finished runs
    top1: list[float] = field(default_factory=list)  # final-epoch top-1 (%) of those runs, in seed order
    train_seconds: list[float] = field(default_factory=list)  # training + per-epoch evaluation, per run
    missing_seeds: list[int] = field(default_factory=list)  # runs that stopped with an error or have not finished
    params: int | None = None
    gmacs: float | None = None  # per image at the training resolution, counted (vil.bench.flops)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.top1) if self.top1 else None

    @property
    def std(self) -> float | None:
        """Sample standard deviation over seeds (None for fewer than two)."""
        return statistics.stdev(self.top1) if len(self.top1) > 1 else None

    @property
    def mean_seconds(self) -> float | None:
        return statistics.fmean(self.train_seconds) if self.train_seconds else None

    def to_dict(self) -> dict:
        return {**asdict(self), "top1_mean": self.mean, "top1_std": self.std, "train_seconds_mean": self.mean_seconds}


def summarize(designs: list[str], outcomes: list[RunOutcome]) -> list[DesignResult]:
    """One result per design, in the given order, from the runs' summaries."""
    results = {design: DesignResult(design) for design in designs}
    for outcome in outcomes:
        result, summary = results[outcome.run.design], outcome.summary
        if outcome.status == "failed" or summary is None or not summary.get("finished"):
            result.missing_seeds.append(outcome.run.seed)
            continue
        result.seeds.append(outcome.run.seed)
        result.top1.append(summary["top1"])
        result.train_seconds.append(summary["seconds"])
        if result.params is None:
            result.params = summary["params"]
            model_config = ViLConfig.from_dict(summary["model_config"])
            result.gmacs = count_macs(model_config).gmacs
    return list(results.values())


def markdown_table(results: list[DesignResult], reference: str) -> str:
    """The study table; Δ is each design's mean minus the reference (default) design's mean."""
    by_name = {r.design: r for r in results}
    reference_mean = by_name[reference].mean if reference in by_name else None
    unit, scale = mac_unit([r.gmacs for r in results if r.gmacs is not None])
    lines = [
        f"| design | top-1 % (mean ± std) | Δ vs {reference} | top-1 % per seed | params | {unit} | train s / run |",
        "|---|---|---|---|---:|---:|---:|",
    ]
    for r in results:
        name = f"**{r.design}** (default)" if r.design == reference else r.design
        if r.mean is None:
            lines.append(f"| {name} | no finished run | | | | | |")
            continue
        spread = f" ± {r.std:.2f}" if r.std is not None else ""
        delta = "" if reference_mean is None or r.design == reference else f"{r.mean - reference_mean:+.2f}"
        per_seed = ", ".join(f"{v:.2f}" for v in r.top1)
        if r.missing_seeds:
            per_seed += f" (seeds {r.missing_seeds} missing)"
        lines.append(
            f"| {name} | {r.mean:.2f}{spread} | {delta} | {per_seed} | {r.params:,} | {r.gmacs * scale:.3g} "
            f"| {r.mean_seconds:.0f} |"
        )
    return "\n".join(lines)


def mac_unit(gmacs: list[float]) -> tuple[str, float]:
    """GMACs, or MMACs for small models (the digits models do ~0.003 GMACs per image): (unit, factor from G)."""
    return ("MMACs", 1e3) if gmacs and max(gmacs) < 0.1 else ("GMACs", 1.0)


def runs_csv(outcomes: list[RunOutcome], results: list[DesignResult]) -> str:
    """One row per run."""
    gmacs = {r.design: r.gmacs for r in results}
    buffer = io.StringIO()
    columns = ["design", "seed", "status", "top1", "top5", "params", "gmacs", "train_seconds", "run_dir"]
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for outcome in outcomes:
        summary = outcome.summary or {}
        writer.writerow(
            dict(
                design=outcome.run.design, seed=outcome.run.seed, status=outcome.status, top1=summary.get("top1"),
                top5=summary.get("top5"), params=summary.get("params"), gmacs=gmacs.get(outcome.run.design),
                train_seconds=summary.get("seconds"), run_dir=str(outcome.run.run_dir),
            )
        )  # fmt: skip
    return buffer.getvalue()


def study_record(
    study: Study, reference: str, results: list[DesignResult], outcomes: list[RunOutcome], context: dict
) -> dict:
    """Everything the JSON file holds: the study, how it ran, per-design results and per-run outcomes."""
    return dict(
        study=study.name,
        field=study.field,
        reference=reference,
        context=context,
        designs=[r.to_dict() for r in results],
        runs=[
            dict(
                design=o.run.design,
                seed=o.run.seed,
                status=o.status,
                run_dir=str(o.run.run_dir),
                error=o.error,
                top1=(o.summary or {}).get("top1"),
                seconds=(o.summary or {}).get("seconds"),
            )
            for o in outcomes
        ],  # fmt: skip
    )


def study_context(study: Study, outcomes: list[RunOutcome]) -> dict:
    """How the study ran, from the settings and the runs' own records (all runs share these)."""
    first = next((o for o in outcomes if o.summary), None)
    config = outcomes[0].run.config
    facts = first.summary if first else {}
    return dict(
        title=study.title,
        recipe=config.recipe,
        dataset=facts.get("dataset", config.data or "digits"),
        epochs=config.epochs,
        seeds=sorted({o.run.seed for o in outcomes}),
        batch_size=config.batch_size,
        img_size=config.img_size,
        model=config.model,
        model_args={k: v for k, v in config.model_args.items() if k != study.field},
        device=facts.get("device"),
        threads=facts.get("threads"),
        torch_version=facts.get("torch_version"),
        val_images=facts.get("val_images"),
    )
