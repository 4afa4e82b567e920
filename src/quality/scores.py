"""Scores derived from a job's metrics: the CNN's skill against the baselines, and HPC-AI500's
Valid FLOP/s (FLOP/s times a penalty for missing the quality target; docs/report.md)."""

from __future__ import annotations

from collections.abc import Mapping

from src.errors import ConfigError


def skill_metrics(metrics: Mapping, param_names) -> dict[str, float]:
    """1 - val MSE / baseline MSE, overall and per parameter: `skill` against the summary-
    statistics baseline, `skill_vs_mean` against the training mean. 0: no better than the
    baseline, 1: perfect; negative: worse than the baseline."""
    out = {}
    for kind, prefix in (("stats", "skill"), ("mean", "skill_vs_mean")):
        pairs = [("val/loss", f"baseline_{kind}_mse", prefix)]
        pairs += [(f"val/mse_{p}", f"baseline_{kind}_mse_{p}", f"{prefix}_{p}") for p in param_names]
        for cnn, base, name in pairs:
            if metrics.get(cnn) is not None and metrics.get(base):
                out[name] = 1.0 - float(metrics[cnn]) / float(metrics[base])
    return out


def quality_penalty(achieved: float, target: float, exponent: float, cap: bool = True) -> float:
    """(target / achieved) ** exponent for an error metric (lower is better): HPC-AI500's
    (achieved quality / target quality) ** n with quality read as 1 / error. Capped at 1
    (`cap`): beating the target earns no more than the raw FLOP/s."""
    if achieved <= 0:
        return 1.0
    penalty = (target / achieved) ** exponent
    return min(1.0, penalty) if cap else penalty


def check_exponent(exponent) -> float:
    try:
        value = float(exponent)
    except (TypeError, ValueError):
        value = -1.0
    if value <= 0:
        raise ConfigError(f"quality.valid_flops.exponent={exponent!r} must be a number > 0")
    return value
