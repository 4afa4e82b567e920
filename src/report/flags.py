"""Plausibility marks: numbers the report shows but does not believe, each with its cause.

After `derive`, every complete row gets `flags` (a list of names from FLAGS) and
`flag_reasons` ({name: what was seen and its likely cause}). A flagged row is marked in
every table where it appears (MARK and the flag names), left out of Table 8's measured
ranges unless `report.include_flagged` is true, and named in a Findings sentence. The
tolerances come from `report.tolerances` (conf/report.yaml); docs/report.md lists the rules.
"""

from __future__ import annotations

from src.report import derive as d
from src.report.fmt import fmt_num

MARK = "\u26a0"
FLAGS = ("super-linear", "weak above 100 %", "MFU above 1", "unstable", "contended",
         "repeats disagree", "baseline flagged")
# report.tolerances and their values when conf/report.yaml does not set them
TOLERANCES = {"efficiency": 0.1, "repeat_spread": 0.1}
# what a flag on a scaling baseline says about every speed-up measured against it
MEASUREMENT_FLAGS = ("unstable", "contended", "MFU above 1", "repeats disagree")


def _add(row: dict, name: str, reason: str) -> None:
    row.setdefault("flags", [])
    row.setdefault("flag_reasons", {})
    if name not in row["flags"]:
        row["flags"].append(name)
        row["flag_reasons"][name] = reason


def _label(row: dict) -> str:
    return f"job {row.get('run_id') or row.get('job')}"


def _measurement(row: dict, tol: dict) -> None:
    """Flags a row earns by its own numbers."""
    pct = d.pct_of_peak(row)
    if pct is not None and pct > 100.0:
        source = row.get("peak_flops_source") or "?"
        _add(row, "MFU above 1", f"{fmt_num(pct)} % of peak: the peak ({source}) is too low "
             "for this device (measured under load, or the wrong table row)")
    if row.get("measurement_stable") is False:
        note = row.get("measurement_note") or "samples/s varied between windows"
        _add(row, "unstable", f"{note}; likely cause: "
             + ("a run too short to judge" if note.startswith("only") else
                "the machine's load or clock changed during the run"))
    if row.get("measurement_contended"):
        _add(row, "contended", "measured under contention: "
             + (row.get("contention_seen") or "other processes were busy"))
    spread = d.as_float(row.get("repeat_spread"))
    if spread is not None and spread > tol["repeat_spread"]:
        _add(row, "repeats disagree", f"{int(row.get('repeats') or 0)} repeats differ by "
             f"{fmt_num(100 * spread)} % of their median: the machine's load changed "
             "between them")


def _flagged_baseline(row: dict, by_label: dict, key: str) -> str | None:
    """'its baseline (job 0) is flagged contended' when a baseline the row's `key` names
    (other than the row itself) has a measurement flag; else None."""
    own = str(row.get("run_id") or row.get("job"))
    for label in str(row.get(key) or "").split(","):
        base = by_label.get(label) if label != own else None
        bad = [f for f in (base or {}).get("flags", []) if f in MEASUREMENT_FLAGS]
        if bad:
            return f"its baseline (job {label}) is flagged {', '.join(bad)}"
    return None


def _cause(row: dict, by_label: dict, key: str) -> str:
    """The likely cause of a scaling result beyond ideal."""
    return _flagged_baseline(row, by_label, key) or (
        "no flagged baseline: a slow baseline, or a per-rank problem that fits a cache only "
        "at more ranks")


def _scaling(rows: list[dict], tol: dict) -> None:
    """Flags on speed-ups and efficiencies, after every row's own flags are known."""
    by_label = {str(r.get("run_id") or r.get("job")): r for r in rows}
    limit = 1.0 + tol["efficiency"]
    for row in rows:
        eff, weak = row.get("scaling_efficiency"), row.get("weak_scaling_efficiency")
        if eff is not None and eff > limit and (row.get("ideal_speedup") or 0) > 1:
            _add(row, "super-linear", f"speed-up {fmt_num(row['speedup'])}\u00d7 above the "
                 f"ideal {fmt_num(row['ideal_speedup'])}\u00d7 (efficiency "
                 f"{fmt_num(100 * eff)} %); likely cause: "
                 + _cause(row, by_label, "scaling_baseline"))
        if weak is not None and weak > limit and (row.get("weak_world_ratio") or 0) > 1:
            _add(row, "weak above 100 %", f"weak-scaling efficiency {fmt_num(100 * weak)} %; "
                 "likely cause: " + _cause(row, by_label, "weak_baseline"))
        for key in ("scaling_baseline", "weak_baseline"):
            bad = _flagged_baseline(row, by_label, key)
            if bad:
                _add(row, "baseline flagged", f"scaling measured against a flagged baseline: "
                     f"{bad}")


def flag_rows(rows: list[dict], tolerances: dict) -> list[dict]:
    """Set `flags` and `flag_reasons` on every complete row; returns the flagged rows."""
    tol = {**TOLERANCES, **(tolerances or {})}
    done = d.complete(rows)
    for row in done:
        row["flags"], row["flag_reasons"] = [], {}
        _measurement(row, tol)
    _scaling(done, tol)
    return [r for r in done if r["flags"]]


def flagged(row: dict) -> bool:
    return bool(row.get("flags"))


def mark(row: dict, text: str) -> str:
    """A table cell of a flagged row, marked."""
    return f"{text} {MARK}" if flagged(row) and text else text


def flag_names(row: dict) -> str:
    return ", ".join(row.get("flags") or [])


def describe(row: dict) -> str:
    """'job 3: super-linear (speed-up ...); contended (...)' for the Findings."""
    reasons = row.get("flag_reasons") or {}
    return f"{_label(row)}: " + "; ".join(f"{name} ({reasons.get(name, '')})"
                                          for name in row.get("flags") or [])
