"""The quality target of a job: which validation metric, and the value it must reach.

`quality.target` in the config (conf/quality/default.yaml): `metric` val_mse or val_mae (on the
normalised labels), optionally of one `param`; either an absolute `value`, or `factor` times a
baseline (`relative_to`: summary_stats or mean) computed in the same run on the same split, so
a relative target means the same at every data size. Every metric here is an error: lower is
better, and the target is reached when the metric is at or below the threshold.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from src.errors import ConfigError

METRICS = ("val_mse", "val_mae")
BASELINES = {"summary_stats": "stats", "mean": "mean"}
_DEFAULTS = {"metric": "val_mse", "param": None, "relative_to": "summary_stats", "factor": 0.85,
             "value": None}
_KEYS = tuple(_DEFAULTS)


def _positive(key: str, value) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not (math.isfinite(number) and number > 0):
        raise ConfigError(f"quality.target.{key}={value!r} must be a number > 0")
    return number


@dataclass(frozen=True)
class QualityTarget:
    metric: str = "val_mse"
    param: str | None = None
    relative_to: str | None = "summary_stats"
    factor: float | None = 0.85
    value: float | None = None

    @classmethod
    def from_config(cls, cfg: Mapping | None) -> QualityTarget:
        """The target of `quality.target`; one ConfigError naming the key for a bad value."""
        unknown = sorted(set(cfg or {}) - set(_KEYS))
        if unknown:
            raise ConfigError(f"quality.target: unknown keys {unknown}; known: {list(_KEYS)}")
        cfg = {**_DEFAULTS, **dict(cfg or {})}
        metric, param = cfg["metric"], cfg["param"]
        if metric not in METRICS:
            raise ConfigError(f"quality.target.metric={metric!r}; choose one of {list(METRICS)}")
        if param is not None and not (isinstance(param, str) and param):
            raise ConfigError(f"quality.target.param={param!r} must be a parameter name or null")
        relative_to, value = cfg["relative_to"], cfg["value"]
        if relative_to is None:
            if value is None:
                raise ConfigError("quality.target: give either relative_to (with factor) or an "
                                  "absolute value")
            return cls(metric, param, None, None, _positive("value", value))
        if relative_to not in BASELINES:
            raise ConfigError(f"quality.target.relative_to={relative_to!r}; choose one of "
                              f"{[*BASELINES, None]}")
        if value is not None:
            raise ConfigError(f"quality.target: value={value!r} and relative_to={relative_to!r} "
                              "exclude each other; set one of them to null")
        return cls(metric, param, relative_to, _positive("factor", cfg["factor"]), None)

    def check_params(self, param_names) -> None:
        if self.param is not None and self.param not in param_names:
            raise ConfigError(f"quality.target.param={self.param!r} is not a parameter of the "
                              f"data set: {list(param_names)}")

    @property
    def name(self) -> str:
        """e.g. val_mse, val_mae_sigma_8."""
        return self.metric if self.param is None else f"{self.metric}_{self.param}"

    def _suffix(self) -> str:
        kind = self.metric.removeprefix("val_")
        if kind == "mse":
            return "mse" if self.param is None else f"mse_{self.param}"
        return "mae_norm" if self.param is None else f"mae_{self.param}_norm"

    def threshold(self, baselines: Mapping) -> float | None:
        """The value to reach: absolute, or factor x the baseline (None without baselines)."""
        if self.relative_to is None:
            return self.value
        key = f"baseline_{BASELINES[self.relative_to]}_{self._suffix()}"
        return self.factor * baselines[key] if key in baselines else None

    def achieved(self, metrics: Mapping, param_names) -> float | None:
        """The metric's value among a validation's metrics (callback_metrics or metrics.json)."""
        def get(key):
            value = metrics.get(key)
            return None if value is None else float(value)

        if self.metric == "val_mse":
            return get("val/loss" if self.param is None else f"val/mse_{self.param}")
        if self.param is not None:
            return get(f"val/mae_{self.param}_norm")
        values = [get(f"val/mae_{p}_norm") for p in param_names]
        return None if None in values or not values else sum(values) / len(values)
