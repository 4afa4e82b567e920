"""Table 8's "Data augment" row: the methods the training data came from, with their shares.

Jobs record `config.data_sources` = {method: training samples}; a job without it (an older
record) trained on simulations alone. Rows are built as the other report tests build them
(tests/test_report.py: job_metrics), through collect and report.run.
"""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import OmegaConf

from src.report.augment import data_augment_text, shares
from src.report.collect import collect
from tests.test_report import cfg_for, job_metrics, report
from tests.test_report_trust import table8_row

SIM_TEXT = "N-body simulation (2LPT initial conditions + particle-mesh kick-drift-kick, cloud-in-cell)"
GAN_TEXT = "GAN (conditional 3D generator trained on the simulations, physics-validated)"


def sweep(root: Path, sources: list[dict | None]) -> Path:
    """One complete job per entry; None: a record without data_sources (an older job)."""
    root.mkdir(parents=True)
    for i, src in enumerate(sources):
        record = job_metrics("small", 1, 0.25, "32-true", 0.5, 0.01, 0.5)
        if src is not None:
            record["config"]["data_sources"] = src
            record["config"]["n_train_samples"] = sum(src.values())
        (root / str(i)).mkdir()
        (root / str(i) / "metrics.json").write_text(json.dumps(record))
    return root


def app() -> dict:
    """report.application as conf/report.yaml ships it."""
    cfg = cfg_for("unused")
    return OmegaConf.to_container(cfg.report.application, resolve=True)


def test_one_mixed_job_gives_each_method_its_share(tmp_path):
    rows, _ = collect([sweep(tmp_path / "s", [{"simulation": 48, "gan": 16}])])
    assert rows[0]["data_sources.gan"] == 16  # as collect flattens the config section
    assert shares(rows) == {"simulation": (0.75, 0.75), "gan": (0.25, 0.25)}
    assert data_augment_text(rows, app()) == (
        f"{SIM_TEXT} 75 %, {GAN_TEXT} 25 % (training samples of the job in this report)")


def test_jobs_that_differ_give_the_range_and_old_records_count_as_simulation(tmp_path):
    rows, _ = collect([sweep(tmp_path / "s", [{"simulation": 48, "gan": 16},
                                              {"simulation": 32, "gan": 32}, None])])
    assert shares(rows) == {"simulation": (0.5, 1.0), "gan": (0.0, 0.5)}
    assert data_augment_text(rows, app()) == (
        f"{SIM_TEXT} 50\u2013100 %, {GAN_TEXT} 0\u201350 % "
        "(training samples of the 3 jobs in this report)")


def test_a_method_without_a_label_is_named_by_its_key_and_no_job_keeps_the_description():
    rows = [{"data_sources.simulation": 30, "data_sources.transform": 10}]
    assert data_augment_text(rows, {"data_augment": "sims"}) == (
        "sims 75 %, transform 25 % (training samples of the job in this report)")
    assert data_augment_text([], {"data_augment": "sims"}) == "sims"


def test_the_summary_shows_the_row(tmp_path):
    root = sweep(tmp_path / "s", [{"simulation": 48, "gan": 16}, None])
    text = report.run(cfg_for(root, "report.figures=false"))["summary"].read_text()
    assert table8_row(text, "Data augment") == (
        f"| Data augment | {SIM_TEXT} 75\u2013100 %, {GAN_TEXT} 0\u201325 % "
        "(training samples of the 2 jobs in this report) |")
