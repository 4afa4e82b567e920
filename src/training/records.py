"""A job's records in its directory: the finished payload, a failure, an older run set aside.

A rerun of a sweep recognises a finished job by the hash of its config (where it writes left
out), so the same job is skipped and a changed one runs again.
"""

from __future__ import annotations

import hashlib
import json
import traceback
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from src import contract
from src.util.atomic import write_json_atomic, write_text_atomic


def config_fingerprint(cfg: DictConfig) -> str:
    """Hash of what defines the job (not where it writes), to recognise a finished job. The
    same for the job's config as composed and as a launched rank reloads it from YAML."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    plain.pop("paths", None)
    plain.pop("ckpt_path", None)
    return hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()[:16]


def repeat_fingerprint(cfg: DictConfig) -> str:
    """`config_fingerprint` of the job without its `repeat` index and without its paths
    (whatever is derived from them, such as a logger's directory, differs per repeat too):
    the same for every repeat of one job, so the report can fold them."""
    plain = OmegaConf.to_container(cfg, resolve=False)
    plain.pop("repeat", None)
    plain["paths"] = {key: f"<paths.{key}>" for key in plain.get("paths") or {}}
    return config_fingerprint(OmegaConf.create(plain))


def finished_result(cfg: DictConfig) -> dict | None:
    """The saved payload when this exact job already completed in its output dir."""
    saved = contract.read_job_record(Path(cfg.paths.output_dir) / contract.METRICS_FILE)
    if saved and saved.get("status") == contract.STATUS_COMPLETE \
            and saved.get("config_hash") == config_fingerprint(cfg):
        return saved
    return None


def write_result(out_dir: Path, payload: dict) -> Path:
    return write_json_atomic(out_dir / contract.METRICS_FILE, payload)


def set_aside_stale_result(out_dir: Path) -> None:
    """A job about to (re)run must not leave an older run's result in place: if it is killed,
    the report would count that result as this job's. The old files are renamed, not lost."""
    for name in (contract.METRICS_FILE, contract.ERROR_FILE):
        path = out_dir / name
        if path.is_file():
            path.replace(path.with_name(f"{path.stem}.previous{path.suffix}"))


def record_failure(out_dir: Path, err: BaseException) -> None:
    """Leave the error in the job dir so a sweep can go on and the report can say why."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / contract.ERROR_FILE, "".join(traceback.format_exception(err)))
    write_result(out_dir, contract.failure_record(err))


def recorded_error(out_dir: Path) -> str | None:
    """The error a job recorded in its metrics.json, if it got that far."""
    saved = contract.read_job_record(out_dir / contract.METRICS_FILE)
    return saved.get("error") if saved and saved.get("status") == contract.STATUS_FAILED else None
