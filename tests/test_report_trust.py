"""The report's plausibility marks and repeats, on a synthetic sweep of doubtful numbers.

  job model  nodes fraction TFLOP/s  what is wrong with it
  0   small  1     1/4      0.1      measured under contention (the baseline of job 1)
  1   small  2     1/4      1.89     speed-up 18.9x of an ideal 2x, against a contended baseline
  2   medium 1     1/2      1.0      unstable: its windows varied by 45 %
  3   medium 1     1/4      1.0      nothing
  4   medium 2     1/4      1.8      nothing (speed-up 1.8x, efficiency 90 %)
  5-7 large  1     1/4      1.0, 1.05, 1.5   three repeats of one job that disagree by 48 %
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from src.report.repeats import bounds, fold_repeats
from src.training.records import config_fingerprint, repeat_fingerprint
from tests.test_report import REPO, cfg_for, job_metrics, read_csv, report

CONTENDED = "other processes used 0.9 of 2 CPUs on average (45 %); busiest: stress (pid 7)"
UNSTABLE = "samples/s varied by 45 % (CV) over 6 windows, above 10 %"


def doubtful_sweep(root: Path) -> Path:
    jobs = [("small", 1, 0.25, 0.1, {"measurement_contended": True, "contention_seen": CONTENDED}),
            ("small", 2, 0.25, 1.89, {}),
            ("medium", 1, 0.5, 1.0, {"measurement_stable": False, "measurement_note": UNSTABLE}),
            ("medium", 1, 0.25, 1.0, {"measurement_stable": True}),
            ("medium", 2, 0.25, 1.8, {"measurement_stable": True}),
            *[("large", 1, 0.25, agg, {"repeat": k}) for k, agg in enumerate((1.0, 1.05, 1.5))]]
    root.mkdir(parents=True)
    for i, (model, nodes, fraction, agg, extra) in enumerate(jobs):
        record = job_metrics(model, nodes, fraction, "32-true", agg, 0.01, 0.5)
        repeat = extra.pop("repeat", None)
        if repeat is not None:
            record["config"].update(repeat=repeat, repeat_of="large-job")
        record["metrics"].update(extra)
        (root / str(i)).mkdir()
        (root / str(i) / "metrics.json").write_text(json.dumps(record))
    return root


@pytest.fixture(scope="module")
def doubtful(tmp_path_factory):
    return doubtful_sweep(tmp_path_factory.mktemp("trust") / "sweep")


def run(sweep: Path, *overrides: str) -> tuple[str, dict]:
    result = report.run(cfg_for(sweep, "report.figures=true", *overrides))
    return result["summary"].read_text(), result


def table8_row(text: str, item: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(f"| {item}"))


def test_flags_are_marked_and_explained(doubtful):
    text, result = run(doubtful, "report.out_dir=" + str(doubtful / "r1"))
    findings = text.split("## Findings")[1].split("##")[0]
    # one Findings sentence names every flagged run with what was seen and the likely cause
    assert "4 of 6 runs are flagged" in findings
    assert "super-linear (speed-up 18.9\u00d7 above the ideal 2\u00d7" in findings
    assert "likely cause: its baseline (job 0) is flagged contended" in findings
    assert "contended (measured under contention: " + CONTENDED in findings
    assert "unstable (" + UNSTABLE in findings
    assert "repeats disagree (3 repeats differ by 47.6 % of their median" in findings
    # marked in the tables where they appear
    scaling = text.split("## Strong scaling")[1].split("##")[0]
    assert "18.9\u00d7 \u26a0" in scaling and "super-linear, baseline flagged" in scaling
    assert "| 1.8\u00d7 | 2\u00d7 | 90 % |  |" in scaling  # the clean run stays unmarked
    jobs = text.split("## Jobs")[1]
    assert jobs.count("repeats disagree") == 3  # every repeat of the folded job
    assert "| 4 | complete | medium | 2\u2020 | 2 | 1/4 | 32-true | 1.8 | 45 | 1 % | 0.5 |  |" \
        in jobs
    assert "\u26a0 marks a number the report does not believe" in text
    assert (Path(result["summary"]).parent / "speedup_vs_nodes.png").is_file()


def test_table8_leaves_flagged_runs_out_unless_asked(doubtful):
    text, _ = run(doubtful, "report.out_dir=" + str(doubtful / "r2"))
    assert "| 1\u20131.8 TFLOP/s (45\u201350 % of peak) |" in table8_row(text, "Aggregate FLOP/s")
    assert "1.8\u00d7 at 2 nodes\u2020 (efficiency 90 %)" in table8_row(text, "Strong-scaling")
    assert "4 of 6 (0, 1, 2, 5+6+7): left out" in table8_row(text, "Flagged runs")
    text, _ = run(doubtful, "report.out_dir=" + str(doubtful / "r3"),
                  "report.include_flagged=true")
    assert "0.1\u20131.89 TFLOP/s" in table8_row(text, "Aggregate FLOP/s")
    assert "1.8\u201318.9\u00d7" in table8_row(text, "Strong-scaling")
    assert "included in the ranges" in table8_row(text, "Flagged runs")


def test_tolerances_are_config(doubtful):
    text, _ = run(doubtful, "report.out_dir=" + str(doubtful / "r4"),
                  "report.tolerances.repeat_spread=0.5", "report.tolerances.efficiency=10")
    findings = text.split("## Findings")[1].split("##")[0]
    assert "repeats disagree" not in findings and "super-linear" not in findings
    assert "baseline flagged" in findings  # the contended baseline still taints job 1


def test_repeats_fold_to_medians_with_their_spread(doubtful):
    _, result = run(doubtful, "report.out_dir=" + str(doubtful / "r5"))
    rows = {r["run_id"]: r for r in read_csv(result["runs_csv"])}
    large = rows["5+6+7"]
    assert float(large["tflops_aggregate"]) == 1.05 and int(float(large["repeats"])) == 3
    assert (float(large["tflops_aggregate_min"]), float(large["tflops_aggregate_max"])) == (1.0, 1.5)
    assert float(large["repeat_spread"]) == pytest.approx(0.5 / 1.05)
    assert set(rows) == {"0", "1", "2", "3", "4", "5+6+7"}


def test_error_bars_from_repeats_else_windows():
    a, b = ({"status": "complete", "repeat_of": "x", "run_id": str(i), "tflops_aggregate": v,
             "samples_per_s": v * 10, "measurement_stable": s} for i, v, s in
            ((0, 1.0, True), (1, 3.0, False)))
    (folded,) = fold_repeats([a, b])
    assert bounds(folded, "tflops_aggregate") == (1.0, 3.0)
    assert folded["measurement_stable"] is False and folded["tflops_aggregate"] == 2.0
    single = {"tflops_aggregate": 2.0, "samples_per_s": 10.0, "samples_per_s_min": 8.0,
              "samples_per_s_max": 11.0, "world_size": 1}
    assert bounds(single, "tflops_aggregate") == pytest.approx((1.6, 2.2))
    assert bounds({"tflops_aggregate": 2.0}, "tflops_aggregate") is None


def test_repeat_key_separates_jobs_but_not_their_group():
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfgs = [compose("train", overrides=[f"repeat={k}", "data.dir=/x",
                                            f"paths.output_dir=/out/{k}"]) for k in (0, 1)]
    assert config_fingerprint(cfgs[0]) != config_fingerprint(cfgs[1])  # two jobs, both run
    assert repeat_fingerprint(cfgs[0]) == repeat_fingerprint(cfgs[1])  # one configuration
    other = OmegaConf.merge(cfgs[0], {"seed": 7})
    assert repeat_fingerprint(other) != repeat_fingerprint(cfgs[0])


@pytest.mark.parametrize("override, culprit", [
    ("report.tolerances.efficiency=-1", "report.tolerances.efficiency=-1"),
    ("+report.tolerances.speed=0.1", "report.tolerances.speed is not one of"),
    ("report.loss_curves_x=epoch", "report.loss_curves_x='epoch'"),
    ("report.include_flagged=maybe", "report.include_flagged='maybe'"),
])
def test_bad_report_settings_name_the_culprit(doubtful, override, culprit):
    from src.errors import ReportError
    from src.report.build import build_report

    cfg = cfg_for(doubtful, "report.out_dir=" + str(doubtful / "bad"), override)
    with pytest.raises(ReportError, match=re.escape(culprit)):
        build_report([doubtful], OmegaConf.to_container(cfg.report, resolve=True))
    assert not (doubtful / "bad").exists()  # checked before anything is written
