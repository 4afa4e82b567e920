"""The quality axis in the report: Table 8's time-to-target, Valid FLOP/s and accuracy rows,
and the findings on learning (did the CNN beat its baselines; do bigger models learn better at
equal epochs and at equal wall time; does a larger global batch still converge).

Every number comes from the jobs' quality metrics (src/callbacks/quality.py, docs/report.md
"Quality") and their `history` points ([step, value, seconds since the fit started]).
"""

from __future__ import annotations

from collections import defaultdict

from src.report import derive as d
from src.report.flags import MARK
from src.report.fmt import fmt_num, fmt_range, fmt_si_range

# runs that differ only in the model: Finding 1 compares them
MATCH = ("fraction", "num_nodes", "devices", "precision", "batch_size", "input_size",
         "channels", "accelerator", "n_train_samples")


def _reached(row: dict) -> bool:
    return row.get("target_reached") in (True, 1, "True", "true")


def _with_target(done: list[dict]) -> list[dict]:
    return [r for r in done if r.get("target_reached") is not None]


def quality_rows(done: list[dict], trusted: list[dict]) -> list[tuple[str, str]]:
    """Table 8's quality rows: learning from every complete run, Valid FLOP/s (a throughput)
    from the `trusted` ones only."""
    targeted = _with_target(done)
    if not targeted:
        none = "n/a (no run recorded a quality target: conf/quality)"
        return [("Time to target", none), ("Valid FLOP/s", none), ("Accuracy at target", none)]
    reached = [r for r in targeted if _reached(r)]
    count = f"{len(reached)} of {len(targeted)} runs reached their target"
    if reached:
        t = d.span(d.num(r, "time_to_target_s") for r in reached)
        ep = d.span(d.num(r, "epochs_to_target") for r in reached)
        fl = d.span(d.num(r, "flops_to_target") for r in reached)
        time_text = "; ".join(p for p in (
            t and f"{fmt_range(*t)} s", ep and f"{fmt_range(*ep)} epochs",
            fl and f"{fmt_si_range(*fl, 'FLOP')}", count) if p)
        acc_runs, acc_note = reached, "runs that reached the target"
    else:
        time_text = f"{MARK} none reached it ({count})"
        acc_runs, acc_note = targeted, f"{MARK} no run reached the target; all runs"
    valid = d.span(d.num(r, "valid_tflops_aggregate") for r in trusted)
    valid_text = (fmt_si_range(valid[0] * 1e12, valid[1] * 1e12, "FLOP/s")
                  + " (HPC-AI500 Valid FLOPS: aggregate FLOP/s x quality penalty)"
                  if valid else "n/a")
    mse = d.span(d.num(r, "val/loss") for r in acc_runs)
    skill = d.span(d.num(r, "skill") for r in acc_runs)
    acc = "; ".join(p for p in (mse and f"val MSE {fmt_range(*mse)}",
                                skill and f"skill vs summary statistics {fmt_range(*skill)}")
                    if p) or "n/a"
    return [("Time to target", time_text), ("Valid FLOP/s", valid_text),
            ("Accuracy at target", f"{acc} ({acc_note})")]


def beat_baselines(done: list[dict], where) -> list[str]:
    """One sentence: did the CNN beat the baselines it was measured against?"""
    runs = [r for r in done if d.num(r, "skill") is not None and d.num(r, "val/loss") is not None]
    if not runs:
        return []
    best = max(runs, key=lambda r: d.num(r, "skill"))
    beat = [r for r in runs if d.num(r, "skill") > 0]
    both = [r for r in beat if (d.num(r, "skill_vs_mean") or 0) > 0]
    base = d.num(best, "baseline_stats_mse")
    detail = (f"best: {where(best)}, val MSE {fmt_num(d.num(best, 'val/loss'))} vs "
              f"{fmt_num(base)} for the summary-statistics regression and "
              f"{fmt_num(d.num(best, 'baseline_mean_mse'))} for the training mean "
              f"(skill {fmt_num(d.num(best, 'skill'))})")
    if not beat:
        return [f"The CNN did not beat the summary-statistics baseline in any of {len(runs)} "
                f"runs, so it learned less than a regression on four summary statistics ({detail})."]
    return [f"The CNN beat the summary-statistics baseline in {len(beat)} of {len(runs)} runs "
            f"and both baselines in {len(both)} ({detail})."]


def val_loss_at(row: dict, x_index: int, limit: float) -> float | None:
    """The last val/loss point at or before `limit` on the step (0) or time (2) axis."""
    points = [p for p in ((row.get("history") or {}).get("val/loss") or [])
              if len(p) > x_index and p[x_index] <= limit]
    return points[-1][1] if points else None


def last_val_x(row: dict, x_index: int) -> float | None:
    """Where the last val/loss point lies on the step (0) or time (2) axis; None without."""
    points = [p for p in ((row.get("history") or {}).get("val/loss") or []) if len(p) > x_index]
    return points[-1][x_index] if points else None


def bigger_models(done: list[dict]) -> list[str]:
    """Finding 1 from the data: at equal epochs and at equal wall time, does the model with
    more training FLOPs per sample reach a lower val loss than the smaller one?"""
    by_key: dict[tuple, list[dict]] = defaultdict(list)
    for r in done:
        if d.num(r, "flops_per_sample_train") and last_val_x(r, 0) is not None:
            by_key[d.group_key(r, MATCH)].append(r)
    tallies = {0: [0, 0], 2: [0, 0]}  # axis -> [bigger lower, pairs]
    for runs in by_key.values():
        runs = sorted(runs, key=lambda r: d.num(r, "flops_per_sample_train"))
        for small, big in zip(runs, runs[1:], strict=False):
            if str(small.get("model")) == str(big.get("model")):
                continue
            for axis in (0, 2):
                ends = [last_val_x(small, axis), last_val_x(big, axis)]
                if None in ends:
                    continue
                a, b = val_loss_at(small, axis, min(ends)), val_loss_at(big, axis, min(ends))
                if a is not None and b is not None:
                    tallies[axis][0] += b < a
                    tallies[axis][1] += 1
    if not tallies[0][1]:
        return []
    parts = [f"at equal epochs in {tallies[0][0]} of {tallies[0][1]} matched pairs"]
    if tallies[2][1]:
        parts.append(f"at equal wall time in {tallies[2][0]} of {tallies[2][1]}")
    return ["Bigger models (more training FLOPs per sample, all else equal) reach a lower "
            "val loss " + " and ".join(parts) + " (SAIH Finding 1 says they do; short runs "
            "measure the start of training only)."]


def global_batch(done: list[dict]) -> list[str]:
    """Per model, whether runs at each global batch reached the quality target."""
    out = []
    for model in d.models(done):
        runs = [r for r in _with_target(done) if str(r.get("model")) == model
                and d.num(r, "global_batch_size") is not None]
        batches = sorted({int(d.num(r, "global_batch_size")) for r in runs})
        if len(batches) < 2:
            continue
        yes = [b for b in batches if any(_reached(r) for r in runs
                                         if int(d.num(r, "global_batch_size")) == b)]
        no = [b for b in batches if b not in yes]
        text = (f"reached at global batch {', '.join(map(str, yes))}" if yes else "never reached")
        if no and yes:
            text += f", not at {', '.join(map(str, no))}"
        out.append(f"Model {model}: the quality target was {text} (the paper's small model "
                    "stopped converging at 16 GPUs).")
    return out
