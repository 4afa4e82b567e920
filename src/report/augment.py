"""Table 8's "Data augment" row: which methods made the training data, with their shares.

A training job records `config.data_sources` = {method: training samples}, e.g.
{"simulation": 768, "gan": 256}; collect flattens it to `data_sources.<method>` row keys. A job
without it (older records) trained on simulations alone. Shares are per job; over several jobs
each method's share is given as the range over them.
"""

from __future__ import annotations

from src.report.derive import as_float
from src.report.fmt import fmt_range

SIMULATION = "simulation"
PREFIX = "data_sources."


def source_counts(row: dict) -> dict[str, float]:
    """{method: training samples} of one job; {simulation: n_train_samples} when the job did
    not record its sources (or recorded none with a sample)."""
    nested = row.get("data_sources")
    counts = dict(nested) if isinstance(nested, dict) else {}
    counts.update({k[len(PREFIX):]: v for k, v in row.items() if k.startswith(PREFIX)})
    counts = {k: x for k, x in ((k, as_float(v)) for k, v in counts.items()) if x is not None}
    if sum(counts.values()) > 0:
        return counts
    return {SIMULATION: as_float(row.get("n_train_samples")) or 1.0}


def shares(rows: list[dict]) -> dict[str, tuple[float, float]]:
    """{method: (lowest, highest) fraction of a job's training samples} over the jobs;
    simulation first, the other methods in the order the jobs name them."""
    per_job = []
    for row in rows:
        counts = source_counts(row)
        total = sum(counts.values())
        per_job.append({k: v / total for k, v in counts.items()})
    methods = [SIMULATION] if any(SIMULATION in s for s in per_job) else []
    for s in per_job:
        methods += [m for m in s if m not in methods]
    # a job that did not use a method had 0 % of it
    return {m: (min(s.get(m, 0.0) for s in per_job), max(s.get(m, 0.0) for s in per_job))
            for m in methods}


def data_augment_text(rows: list[dict], app: dict) -> str:
    """'N-body simulation (...) 75 %, GAN (...) 25 % (training samples of the 4 jobs in this
    report)'. The labels come from conf/report.yaml: `data_augment` names the simulations,
    `data_augment_methods.<method>` the others (the method's own name if it has none). No job:
    the description alone."""
    described = app.get("data_augment", "") or SIMULATION
    if not rows:
        return described
    labels = {SIMULATION: described, **(app.get("data_augment_methods") or {})}
    parts = [f"{labels.get(m, m)} {fmt_range(100 * lo, 100 * hi)} %"
             for m, (lo, hi) in shares(rows).items()]
    jobs = f"the {len(rows)} jobs" if len(rows) > 1 else "the job"
    return ", ".join(parts) + f" (training samples of {jobs} in this report)"
