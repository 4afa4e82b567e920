"""summary.md as a whole: the header, Table 8, the findings, the other tables, the jobs."""

from __future__ import annotations

from collections import Counter

from src.contract import STATUS_COMPLETE, STATUS_FAILED, STATUS_MISSING
from src.report import derive as d
from src.report.findings import findings
from src.report.flags import MARK
from src.report.fmt import DAGGER, md_table
from src.report.table8 import table8
from src.report.tables import jobs_table, scaling_table, table3, table6, weak_table


def status_line(rows: list[dict]) -> str:
    counts = Counter(r.get("status") for r in rows)
    parts = [f"{counts.get(STATUS_COMPLETE, 0)} complete"]
    for status in (STATUS_FAILED, STATUS_MISSING):
        if counts.get(status):
            label = "missing metrics.json" if status == STATUS_MISSING else status
            parts.append(f"{counts[status]} {label}")
    others = sorted(s for s in counts if s not in (STATUS_COMPLETE, STATUS_FAILED, STATUS_MISSING))
    parts += [f"{counts[s]} {s}" for s in others]
    return f"{len(rows)} jobs: " + ", ".join(parts)


def render(rows: list[dict], groups: dict, cfg: dict, sweeps: list[str],
           figures: list[str], notes: list[str], jobs: list[dict] | None = None) -> str:
    """summary.md as text; figures are file names relative to the summary. `rows` have the
    repeats of a job folded into one (src.report.repeats), `jobs` list every job."""
    jobs = rows if jobs is None else jobs
    keys = cfg["keys"]
    include = bool(cfg.get("include_flagged", False))
    out = [f"# {cfg['title']}", ""]
    out.append("Sweep" + ("s" if len(sweeps) > 1 else "") + ": "
               + ", ".join(f"`{s}`" for s in sweeps) + ".  ")
    out.append(status_line(jobs) + ".")
    if any(d.is_emulated(r) for r in rows):
        out.append(f"\n{DAGGER} Nodes emulated as process groups on one machine "
                   "(hollow markers and dashed lines in the figures).")
    out += ["", "## Summary (SAIH Table 8)", "",
            md_table(["Item", "Value"], table8(rows, cfg["application"], groups, include)), ""]
    out += ["## Findings", ""]
    out += [f"- {s}" for s in findings(rows, groups, cfg["thresholds"], keys["precision_match"],
                                       include, cfg.get("paper"))]
    out.append("")
    sections = [
        ("Per-model cost (SAIH Table 3)", table3(rows)),
        ("Time per epoch by precision (SAIH Table 6)", table6(rows, keys["precision_match"])),
        ("Strong scaling", scaling_table(groups)),
        ("Weak scaling", weak_table(groups)),
    ]
    for title, table in sections:
        if table:
            out += [f"## {title}", "", md_table(*table), ""]
    if figures:
        out += ["## Figures", ""]
        out += [f"![{name}]({name})" for name in figures]
        out.append("")
    out += ["## Jobs", "", md_table(*jobs_table(jobs, rows)), ""]
    if notes:
        out += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    if any(r.get("flags") for r in rows):
        out += [f"{MARK} marks a number the report does not believe: the flag names it, the "
                "Findings say why (docs/report.md, \"Plausibility\").", ""]
    out += ["Definitions: docs/report.md. Every configuration with all its metrics: `runs.csv`.",
            ""]
    return "\n".join(out)
