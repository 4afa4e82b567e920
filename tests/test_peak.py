"""src/perf/peak.py: spec table, device-name parsing, measured CPU peaks and their cache."""

import json
import time

import pytest
import torch

from src.perf import peak
from src.perf.peak import (
    dtype_key,
    memory_bandwidth,
    native_bf16,
    peak_flops,
)
from src.perf.peak_table import PEAK_TABLE, chip_key


@pytest.mark.parametrize(
    "name,key",
    [
        ("NVIDIA H100 80GB HBM3", "H100-SXM"),
        ("NVIDIA H100 PCIe", "H100-PCIe"),
        ("NVIDIA H100 NVL", "H100-NVL"),
        ("NVIDIA H200", "H200-SXM"),
        ("NVIDIA H200 NVL", "H200-NVL"),
        ("NVIDIA GH200 480GB", "H100-SXM"),
        ("NVIDIA A100-SXM4-80GB", "A100"),
        ("NVIDIA A100 80GB PCIe", "A100"),
        ("Tesla V100-SXM2-32GB", "V100-SXM"),
        ("Tesla V100-PCIE-16GB", "V100-PCIe"),
        ("NVIDIA L4", "L4"),
        ("NVIDIA L40S", "L40S"),
        ("AMD Instinct MI250X", "MI250X"),
        ("AMD Instinct MI300X", "MI300X"),
        ("NVIDIA GeForce RTX 4090", None),
    ],
)
def test_chip_key(name, key):
    assert chip_key(name) == key


def test_table_is_dense_and_ordered():
    for chip, row in PEAK_TABLE.items():
        order = [row[k] for k in ("fp32", "tf32", "bf16", "fp8") if k in row]
        assert order == sorted(order), chip  # faster formats never have lower peaks
        if "bf16" in row:
            assert row["bf16"] == row.get("fp16", row["bf16"]), chip
    # dense, not "with sparsity": the H200 SXM has H100 SXM compute, 989.4 TFLOP/s bf16
    assert PEAK_TABLE["H200-SXM"]["bf16"] == PEAK_TABLE["H100-SXM"]["bf16"] == 989.4e12
    assert PEAK_TABLE["A100"]["tf32"] == 156e12


@pytest.mark.parametrize(
    "precision,dev,key",
    [("32-true", "cpu", "fp32"), ("bf16-mixed", "cpu", "bf16"), ("bf16-true", "cuda", "bf16"),
     ("16-mixed", "cuda", "fp16"), ("64-true", "cpu", "fp64"), (32, "cpu", "fp32")],
)
def test_dtype_key(precision, dev, key):
    assert dtype_key(precision, dev) == key


def test_fp32_on_cuda_follows_tf32_settings():
    prev = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32 = False
        torch.set_float32_matmul_precision("high")
        assert dtype_key("32-true", "cuda") == "tf32"
        assert dtype_key("32-true", "cpu") == "fp32"
        torch.set_float32_matmul_precision("highest")
        assert dtype_key("32-true", "cuda") == "fp32"
        # convolutions: cuDNN's TF32 switch (on by default) is enough for tensor cores
        torch.backends.cudnn.allow_tf32 = True
        assert dtype_key("32-true", "cuda") == "tf32"
        assert dtype_key("32-true", "cpu") == "fp32"
    finally:
        torch.set_float32_matmul_precision(prev[0])
        torch.backends.cudnn.allow_tf32 = prev[1]


def test_override_wins(tmp_path):
    assert peak_flops("cpu", "fp32", override=1.5e12, cache_dir=tmp_path) == (1.5e12, "override")
    assert not list(tmp_path.iterdir())  # nothing measured


def test_override_per_dtype(tmp_path):
    per_dtype = {"fp32": 1.5e12, "bf16": 3e12}
    assert peak_flops("cpu", "bf16", override=per_dtype, cache_dir=tmp_path) == (3e12, "override")
    assert peak_flops("cpu", "fp32", override=per_dtype, cache_dir=tmp_path) == (1.5e12, "override")
    # a dtype the mapping does not name falls back to the table / measurement
    assert peak_flops("cpu", "fp64", override={"fp32": 1.0}, cache_dir=tmp_path)[1] == "measured"


def test_accelerator_from_table(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    value, source = peak_flops(torch.device("cuda", 0), "bf16", cache_dir=tmp_path)
    assert (value, source) == (989.4e12, "table:H200-SXM")


def test_cpu_peak_measured_once_and_cached(tmp_path, monkeypatch):
    # no load reading: a peak measured under load is measured again (tested below), and the
    # machine running this test may be busy
    monkeypatch.setattr(peak.contention, "sample", lambda root: None)
    measured, rates = [], peak.matmul_rates
    monkeypatch.setattr(peak, "matmul_rates",
                        lambda device, dtype, budget_s, min_repeats: measured.append(dtype)
                        or rates(device, dtype, budget_s, min_repeats))
    fp32, src32 = peak_flops("cpu", "fp32", cache_dir=tmp_path, budget_s=0.2)
    bf16, src16 = peak_flops("cpu", "bf16", cache_dir=tmp_path, budget_s=0.2)
    assert src32 == src16 == "measured"
    assert 1e9 < fp32 < 1e14 and 1e8 < bf16 < 1e14
    assert measured == ["fp32", "bf16"]  # one benchmark per dtype
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and peak.machine_key("cpu") in files[0].name
    cached = json.loads(files[0].read_text())
    entry = cached["matmul_fp32"]
    assert entry["value"] == fp32 and cached["matmul_bf16"]["value"] == bf16
    # a median over repeats, with its spread, time and the load it was taken under
    assert entry["repeats"] >= 5 and entry["min"] <= fp32 <= entry["max"]
    assert entry["measured_at"]
    assert peak_flops("cpu", "fp32", cache_dir=tmp_path) == (fp32, "measured")
    assert measured == ["fp32", "bf16"]  # the second call read the cache


def test_measured_entry_records_the_load():
    entry = peak.measured_entry(lambda: time.sleep(0.1) or [3.0, 1.0, 2.0])
    assert (entry["value"], entry["min"], entry["max"], entry["repeats"]) == (2.0, 1.0, 3.0, 3)
    assert 0.0 <= entry["other_cpu_frac"] <= 1.0 and entry["load_avg"] >= 0.0
    assert peak.measured_entry(lambda: [3.0, 1.0], pick="max")["value"] == 3.0


def _fake_entry(value: float, load: float) -> dict:
    return {"value": value, "min": value, "max": value, "repeats": 5,
            "measured_at": "2026-01-01T00:00:00+00:00", "other_cpu_frac": load}


def test_peak_measured_under_load_is_measured_again(tmp_path):
    path = tmp_path / f"peak-{peak.machine_key('cpu')}.json"
    peak._write_cache(path, {"matmul_fp32": _fake_entry(1e9, load=0.9)})
    calls = []

    def measure(value, load):
        return lambda: calls.append(value) or _fake_entry(value, load)

    # still busy now, and lower: the higher of the two busy measurements stays
    entry = peak.cached_entry(tmp_path, "cpu", "matmul_fp32", measure(5e8, 0.8), max_load=0.2)
    assert entry["value"] == 1e9 and entry["remeasured"] == "measured under load"
    # quiet now: the quiet one replaces the busy one, even when lower, and then stays
    entry = peak.cached_entry(tmp_path, "cpu", "matmul_fp32", measure(8e8, 0.01), max_load=0.2)
    assert entry["value"] == 8e8
    entry = peak.cached_entry(tmp_path, "cpu", "matmul_fp32", measure(1.0, 0.0), max_load=0.2)
    assert entry["value"] == 8e8 and entry["remeasured"] == "" and calls == [5e8, 8e8]


def test_peak_beaten_by_a_job_is_measured_again(tmp_path):
    path = tmp_path / f"peak-{peak.machine_key('cpu')}.json"
    peak._write_cache(path, {"matmul_fp32": _fake_entry(1e9, load=0.0)})
    higher = peak.cached_entry(tmp_path, "cpu", "matmul_fp32", lambda: _fake_entry(3e9, 0.0),
                               force=True)
    assert higher["value"] == 3e9 and higher["remeasured"] == "exceeded by a job"
    # a forced measurement that comes out lower keeps the higher ceiling
    kept = peak.cached_entry(tmp_path, "cpu", "matmul_fp32", lambda: _fake_entry(2e9, 0.0),
                             force=True)
    assert kept["value"] == 3e9


def test_peak_metrics_carry_the_provenance():
    m = peak.peak_metrics({**_fake_entry(2e9, 0.1), "min": 1.8e9, "max": 2.2e9,
                           "remeasured": "", "source": "measured"}, "fp32")
    assert m["peak_flops_per_device"] == 2e9 and m["peak_flops_repeats"] == 5
    assert m["peak_flops_spread"] == pytest.approx(0.2)
    assert m["peak_flops_other_cpu_frac"] == 0.1 and m["peak_flops_measured_at"]
    assert "peak_flops_measured_at" not in peak.peak_metrics(
        {"value": 1e12, "source": "override"}, "fp32")


def test_corrupt_cache_is_remeasured(tmp_path):
    path = tmp_path / f"peak-{peak.machine_key('cpu')}.json"
    path.write_text("{not json")
    value, source = peak_flops("cpu", "fp32", cache_dir=tmp_path, budget_s=0.05)
    assert source == "measured" and value > 1e9
    assert json.loads(path.read_text())["matmul_fp32"]["value"] == value


def test_triad_bandwidth(tmp_path):
    bw, source = memory_bandwidth("cpu", cache_dir=tmp_path, budget_s=0.1)
    assert source == "measured" and 1e8 < bw < 1e13
    assert memory_bandwidth("cpu", override=2e11) == (2e11, "override")


def test_native_bf16_reads_the_cpu_flags(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert native_bf16("cpu") is False
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert native_bf16("cpu") is True
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")  # a torch without the probe
    assert native_bf16("cpu") is False
