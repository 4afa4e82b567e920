"""The quality axis in the report: Table 8's rows and the learning findings, on synthetic rows
whose numbers are chosen by hand."""

from __future__ import annotations

from src.report.findings import findings
from src.report.quality import beat_baselines, bigger_models, global_batch, quality_rows


def row(model, nodes, flops, val, skill, reached, history=None, **extra):
    return {"status": "complete", "run_id": f"{model}{nodes}", "model": model,
            "num_nodes": nodes, "devices": 1, "world_size": nodes, "fraction": 1,
            "precision": "32-true", "batch_size": 2, "global_batch_size": 2 * nodes,
            "input_size": 32, "channels": 1, "accelerator": "cpu", "n_train_samples": 64,
            "flops_per_sample_train": flops, "val/loss": val, "skill": skill,
            "skill_vs_mean": skill + 0.2, "baseline_stats_mse": 0.2, "baseline_mean_mse": 0.27,
            "target_reached": reached, "history": history or {}, **extra}


def curve(*points):
    """val/loss points as [step, value, seconds]."""
    return {"val/loss": [list(p) for p in points]}


def where(r):
    return f"{r['model']} at {r['num_nodes']} node(s)"


def test_table8_quality_rows_when_the_target_is_reached():
    runs = [row("small", 1, 1e9, 0.15, 0.25, True, time_to_target_s=30.0, epochs_to_target=3.0,
                flops_to_target=2e12, valid_tflops_aggregate=0.5),
            row("small", 2, 1e9, 0.19, 0.05, False, valid_tflops_aggregate=0.1)]
    items = dict(quality_rows(runs, runs))
    assert items["Time to target"] == "30 s; 3 epochs; 2 TFLOP; 1 of 2 runs reached their target"
    assert items["Valid FLOP/s"].startswith("100\u2013500 GFLOP/s")
    assert items["Accuracy at target"] == ("val MSE 0.15; skill vs summary statistics 0.25 "
                                           "(runs that reached the target)")
    # Valid FLOP/s leaves out the runs it is not given as trusted
    assert dict(quality_rows(runs, runs[:1]))["Valid FLOP/s"].startswith("500 GFLOP/s")


def test_table8_marks_a_target_nobody_reached():
    runs = [row("small", 1, 1e9, 0.3, -0.5, False)]
    items = dict(quality_rows(runs, runs))
    assert items["Time to target"] == "\u26a0 none reached it (0 of 1 runs reached their target)"
    assert "\u26a0 no run reached the target; all runs" in items["Accuracy at target"]
    assert quality_rows([{"status": "complete"}], [])[0][1].startswith("n/a (no run recorded")


def test_did_the_cnn_beat_the_baselines():
    good = [row("small", 1, 1e9, 0.15, 0.25, True), row("small", 2, 1e9, 0.25, -0.25, False)]
    (text,) = beat_baselines(good, where)
    assert text.startswith("The CNN beat the summary-statistics baseline in 1 of 2 runs and "
                           "both baselines in 1 (best: small at 1 node(s), val MSE 0.15 vs 0.2")
    (text,) = beat_baselines([good[1]], where)
    assert text.startswith("The CNN did not beat the summary-statistics baseline in any of 1")


def test_bigger_models_at_equal_epochs_and_equal_wall_time():
    # medium is lower at the same step, but slower: at equal wall time small is ahead
    small = row("small", 1, 1e9, 0.2, 0.0, False,
                history=curve((10, 0.30, 5.0), (20, 0.25, 10.0), (40, 0.20, 20.0)))
    medium = row("medium", 1, 4e9, 0.15, 0.2, False,
                 history=curve((10, 0.28, 20.0), (20, 0.22, 40.0)))
    (text,) = bigger_models([small, medium])
    # equal epochs: step 20 -> 0.22 < 0.25; equal wall time: 20 s -> 0.28 > 0.20
    assert "lower val loss at equal epochs in 1 of 1 matched pairs and at equal wall time " \
           "in 0 of 1" in text
    other = row("medium", 2, 4e9, 0.15, 0.2, False, history=curve((10, 0.1, 1.0)))
    assert bigger_models([small, other]) == []  # different node counts: not a matched pair


def test_convergence_against_the_global_batch():
    runs = [row("small", n, 1e9, 0.2, 0.1, n < 4) for n in (1, 2, 4)]
    assert global_batch(runs) == ["Model small: the quality target was reached at global batch "
                                  "2, 4, not at 8 (the paper's small model stopped converging "
                                  "at 16 GPUs)."]
    assert global_batch(runs[:1]) == []


def test_learning_findings_stay_when_every_run_is_flagged():
    runs = [row("small", 1, 1e9, 0.15, 0.25, True, flags=["contended"],
                flag_reasons={"contended": "busy"})]
    out = findings(runs, {"strong": [], "weak": []}, {"data_wait_frac": 0.05,
                                                       "scaling_efficiency": 0.5}, [])
    assert any(s.startswith("The CNN beat") for s in out)
    assert out[-1] == "Every run is flagged, so no throughput measurement is believed."


def test_finding2_against_the_papers_numbers():
    from src.report.model_scaling import finding2

    paper = {"arithmetic_intensity": {"small": 808, "medium": 2500, "large": 1442},
             "memory_vs_small": {"medium": 3.79, "large": 7.46},
             "compute_vs_small": {"medium": 67.25, "large": 257.97}}
    runs = [row(m, 1, flops, 0.2, 0.0, False, arithmetic_intensity=ai, batch_size=2,
                mem_weights_bytes=w, mem_activations_bytes=a)
            for m, flops, ai, w, a in (("small", 1e9, 100.0, 1.0, 9.0),
                                       ("medium", 60e9, 900.0, 10.0, 30.0),
                                       ("large", 250e9, 700.0, 20.0, 60.0))]
    (text,) = finding2(runs, paper)
    assert "small 100 (paper 808), medium 900 (paper 2500), large 700 (paper 1442)" in text
    assert "the large model's intensity is below the medium's, as in the paper" in text
    assert "weights + activations medium 4× (paper 3.79×), large 8× (paper 7.46×)" in text
    assert "training FLOPs per sample medium 60× (paper 67.25×), large 250× (paper 258×)" in text
    assert "Memory grows less than computation for medium, large, as the paper's models" in text
    runs[2]["arithmetic_intensity"] = 1000.0
    assert "above the medium's, unlike the paper" in finding2(runs, paper)[0]
    assert finding2(runs[:1], paper) == []  # one model: nothing to compare
