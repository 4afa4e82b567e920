"""The metrics.json contract: file names, statuses, sections and every name a job may write.

A training job writes `<job dir>/metrics.json` (docs/contracts.md shows one); the report reads
it back. Both sides take the names from here: `job_record` refuses a section or a config,
system or timing key the contract does not know, `unknown_metrics` names measured values it
does not list (a user's own callback may add some; ours may not), and the report's readers
refuse to look up a name that no job writes (`check_row_key`), so a renamed metric fails a
test instead of emptying a table.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

METRICS_FILE = "metrics.json"
ERROR_FILE = "error.txt"

STATUS_COMPLETE = "complete"
STATUS_FAILED = "failed"
STATUS_MISSING = "missing"  # no metrics.json: still running, or killed before it wrote one

SECTIONS = ("status", "error", "config_hash", "metrics", "config", "system", "history", "timing",
            "split")

# What the job ran as ("config" section), one value each.
CONFIG_KEYS = (
    "model", "num_nodes", "devices", "world_size", "fraction", "precision", "batch_size",
    "global_batch_size", "input_size", "channels", "n_train_samples", "n_val_samples",
    "dataset_bytes", "data_staged_to", "max_epochs", "max_steps", "global_step", "epochs_done",
    "accelerator", "strategy", "emulated", "data_dir", "seed", "repeat", "repeat_of",
    # training samples per method, e.g. {"simulation": 96, "gan": 64} (data.extra_train_dirs)
    "data_sources",
)
# The machine of rank 0 ("system" section).
SYSTEM_KEYS = (
    "hostname", "cpu_model", "n_cpus", "mem_bytes", "gpu_name", "n_gpus", "gpu_mem_bytes",
    "torch", "lightning", "python",
)
TIMING_KEYS = ("fit_s",)
# Which simulations trained and validated ("split" section; src/datamodules/split.py).
SPLIT_KEYS = ("val_sim_ids", "train_sim_ids", "val_fraction", "split_seed")

# Measured quantities ("metrics" section); docs/perf.md and docs/report.md define them.
METRIC_NAMES = (
    # losses (the LightningModule)
    "train/loss", "val/loss",
    # cost of the network (src.perf.flops, src.perf.memory)
    "flops_per_sample_forward", "flops_per_sample_train", "flops_per_sample_measured",
    "arithmetic_intensity", "num_params",
    "mem_weights_bytes", "mem_gradients_bytes", "mem_optimizer_bytes",
    "mem_activations_bytes", "mem_activations_source", "mem_activations_estimate_bytes",
    # ceilings of the device (src.perf.peak)
    "peak_flops_per_device", "peak_flops_source", "peak_flops_dtype",
    "peak_flops_measured_at", "peak_flops_repeats", "peak_flops_spread",
    "peak_flops_remeasured", "peak_flops_other_cpu_frac", "peak_exceeded",
    "mem_bandwidth_bytes_per_s", "mem_bandwidth_source",
    # throughput (src.callbacks.throughput)
    "samples_per_s", "samples_per_s_per_device", "step_time_s", "tflops_per_device",
    "tflops_aggregate", "mfu", "data_wait_frac", "data_wait_source", "loop_gap_frac",
    "monitor_overhead_frac", "throughput_steps", "throughput_samples", "throughput_paused_s",
    "throughput_from_warmup",
    # spread over the measured windows (src.perf.timing.window_figures)
    "samples_per_s_median", "samples_per_s_min", "samples_per_s_max", "samples_per_s_cv",
    "throughput_windows", "measurement_stable", "measurement_note", "tflops_per_device_best",
    "mfu_best_window",
    # what else used the machine meanwhile (src.perf.contention)
    "contention_other_cpu_frac", "contention_other_cpu_frac_max", "contention_steal_frac",
    "contention_load_avg", "contention_intervals", "contention_intervals_busy",
    "contention_gpu_processes", "measurement_contended", "contention_seen",
    # data
    "staging_s",
    # quality (src.callbacks.quality, src.quality; docs/report.md "Quality")
    "baseline_mean_mse", "baseline_stats_mse", "baseline_mean_mae_norm", "baseline_stats_mae_norm",
    "baseline_train_samples", "baseline_s", "skill", "skill_vs_mean",
    "quality_target", "quality_target_metric", "quality_achieved", "quality_best",
    "quality_penalty", "target_reached", "time_to_target_s", "epochs_to_target",
    "samples_to_target", "flops_to_target", "valid_tflops_aggregate",
)
# One of each per regression target, e.g. val/mae_sigma_8 (physical units) and its _norm twin.
# Per parameter too: val/mse_<p>, the baselines' baseline_<mean|stats>_mse_<p> and
# baseline_<mean|stats>_mae_<p>_norm, and the skill scores skill_<p>, skill_vs_mean_<p>.
PER_PARAMETER_METRICS = re.compile(
    r"val/mae_[A-Za-z0-9_]+?(_norm)?|val/mse_[A-Za-z0-9_]+"
    r"|baseline_(mean|stats)_(mse_[A-Za-z0-9_]+|mae_[A-Za-z0-9_]+_norm)"
    r"|skill(_vs_mean)?_[A-Za-z0-9_]+")

# Columns the report derives from the job's numbers (src.report.derive).
DERIVED_KEYS = (
    "pct_of_peak", "samples_per_s_aggregate", "time_per_epoch_s", "speedup", "ideal_speedup",
    "scaling_efficiency", "scaling_baseline", "weak_scaling_efficiency", "weak_world_ratio",
    "weak_baseline",
    # repeats folded into one row (src.report.repeats) and the plausibility marks (flags)
    "repeats", "repeat_spread", "tflops_aggregate_min", "tflops_aggregate_max",
    "tflops_per_device_min", "tflops_per_device_max", "flags", "flag_reasons",
)
# Columns the report adds to name a job (src.report.collect).
ROW_KEYS = ("run_id", "sweep", "job", "job_dir", "status", "error", "history", "overrides")

_KNOWN_ROW_KEYS = frozenset((*CONFIG_KEYS, *SYSTEM_KEYS, *TIMING_KEYS, *METRIC_NAMES,
                             *DERIVED_KEYS, *ROW_KEYS))


class ContractError(KeyError):
    """Code that writes or reads a name the contract does not have (a bug, not bad input)."""


def is_metric(name: str) -> bool:
    return name in METRIC_NAMES or PER_PARAMETER_METRICS.fullmatch(name) is not None


def check_row_key(name: str) -> str:
    """`name`, if some job or the report's derivation writes it."""
    if name not in _KNOWN_ROW_KEYS and not is_metric(name):
        raise ContractError(f"{name!r} is not a metrics.json name (src/contract.py)")
    return name


def job_record(status: str, error: str | None = None, **sections) -> dict:
    """A metrics.json payload; every section and metric name checked against the contract."""
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise ContractError(f"unknown metrics.json sections {sorted(unknown)}")
    for section, names in (("config", CONFIG_KEYS), ("system", SYSTEM_KEYS),
                           ("timing", TIMING_KEYS), ("split", SPLIT_KEYS)):
        extra = set(sections.get(section) or {}) - set(names)
        if extra:
            raise ContractError(f"unknown {section} keys {sorted(extra)} (src/contract.py)")
    return {"status": status, "error": error, **sections}


def unknown_metrics(metrics: Mapping) -> list[str]:
    return sorted(m for m in metrics if not is_metric(m))


def failure_record(err: BaseException) -> dict:
    return job_record(STATUS_FAILED, f"{type(err).__name__}: {err}", metrics={})


def read_job_record(path: Path) -> dict | None:
    """A job's saved payload, or None when the file is missing, truncated or not an object."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, Mapping) else None
