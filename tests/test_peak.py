"""src/perf/peak.py: spec table, device-name parsing, measured CPU peaks and their cache."""

import json

import pytest
import torch

from src.perf import peak
from src.perf.peak import (
    PEAK_TABLE,
    chip_key,
    dtype_key,
    memory_bandwidth,
    native_bf16,
    peak_flops,
)


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
    measured, measure = [], peak.measure_matmul_flops
    monkeypatch.setattr(peak, "measure_matmul_flops",
                        lambda device, dtype, budget_s: measured.append(dtype)
                        or measure(device, dtype, budget_s))
    fp32, src32 = peak_flops("cpu", "fp32", cache_dir=tmp_path, budget_s=0.2)
    bf16, src16 = peak_flops("cpu", "bf16", cache_dir=tmp_path, budget_s=0.2)
    assert src32 == src16 == "measured"
    assert 1e9 < fp32 < 1e14 and 1e8 < bf16 < 1e14
    assert measured == ["fp32", "bf16"]  # one benchmark per dtype
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and peak.machine_key("cpu") in files[0].name
    cached = json.loads(files[0].read_text())
    assert cached["matmul_fp32"] == fp32 and cached["matmul_bf16"] == bf16
    assert peak_flops("cpu", "fp32", cache_dir=tmp_path) == (fp32, "measured")
    assert measured == ["fp32", "bf16"]  # the second call read the cache


def test_corrupt_cache_is_remeasured(tmp_path):
    path = tmp_path / f"peak-{peak.machine_key('cpu')}.json"
    path.write_text("{not json")
    value, source = peak_flops("cpu", "fp32", cache_dir=tmp_path, budget_s=0.05)
    assert source == "measured" and value > 1e9
    assert json.loads(path.read_text())["matmul_fp32"] == value


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
