"""Dense spec-sheet peak FLOP/s of accelerators, per dtype, and the lookup from a torch
device name to a row.

Why our own table and not `lightning.fabric.utilities.throughput.get_available_flops`: it
returns None on CPU; it looks H200 up under the keys "h200 sxm1"/"h200 nvl1", which a real
"NVIDIA H200" device name never matches, and its H200 and H100 NVL rows are the
*with-sparsity* figures (2x the dense peak a CNN can reach).
"""

from __future__ import annotations

import re

T = 1e12
# Dense (no structured sparsity) peak FLOP/s per torch device, per dtype. Where a spec sheet
# prints "X | 2X with sparsity" we keep X. fp32 is the non-tensor-core (CUDA core) rate on
# NVIDIA; "tf32" is what fp32 matmuls reach when TF32 is allowed.
PEAK_TABLE: dict[str, dict[str, float]] = {
    # NVIDIA V100 datasheet (volta-v100-datasheet-update-us-1165301-r5): SXM2 / PCIe.
    # No bf16/tf32 hardware: those dtypes are left out so they fall back to measurement.
    "V100-SXM": {"fp64": 7.8 * T, "fp32": 15.7 * T, "fp16": 125 * T},
    "V100-PCIe": {"fp64": 7.0 * T, "fp32": 14.0 * T, "fp16": 112 * T},
    # NVIDIA A100 datasheet (nvidia-a100-datasheet-us-nvidia-1758950-r4): same for SXM/PCIe;
    # TF32 156 (312 sparse), BF16/FP16 312 (624 sparse).
    "A100": {"fp64": 19.5 * T, "fp32": 19.5 * T, "tf32": 156 * T, "bf16": 312 * T,
             "fp16": 312 * T},
    # NVIDIA H100 datasheet (h100-datasheet-2430615): SXM TF32 494.7 (989 sparse),
    # BF16/FP16 989.4 (1979 sparse), FP8 1978.9; PCIe TF32 378, BF16 756, FP8 1513;
    # NVL (per GPU) TF32 417.5, BF16 835.5, FP8 1670.5. fp64 is the tensor-core rate.
    "H100-SXM": {"fp64": 67 * T, "fp32": 67 * T, "tf32": 494.7 * T, "bf16": 989.4 * T,
                 "fp16": 989.4 * T, "fp8": 1978.9 * T},
    "H100-PCIe": {"fp64": 51 * T, "fp32": 51 * T, "tf32": 378 * T, "bf16": 756 * T,
                  "fp16": 756 * T, "fp8": 1513 * T},
    "H100-NVL": {"fp64": 60 * T, "fp32": 60 * T, "tf32": 417.5 * T, "bf16": 835.5 * T,
                 "fp16": 835.5 * T, "fp8": 1670.5 * T},
    # NVIDIA H200 datasheet (hpc-datasheet-sc23-h200-datasheet-3002446): SXM TF32 989 and
    # BF16 1979 are *with sparsity*; dense is half. NVL: BF16 1671 sparse -> 835.5 dense.
    "H200-SXM": {"fp64": 67 * T, "fp32": 67 * T, "tf32": 494.7 * T, "bf16": 989.4 * T,
                 "fp16": 989.4 * T, "fp8": 1978.9 * T},
    "H200-NVL": {"fp64": 60 * T, "fp32": 60 * T, "tf32": 417.5 * T, "bf16": 835.5 * T,
                 "fp16": 835.5 * T, "fp8": 1670.5 * T},
    # NVIDIA L4 datasheet: FP32 30.3, TF32 60 (120 sparse), BF16/FP16 121 (242), FP8 242.5.
    "L4": {"fp32": 30.3 * T, "tf32": 60 * T, "bf16": 121 * T, "fp16": 121 * T,
           "fp8": 242.5 * T},
    # NVIDIA L40S datasheet: FP32 91.6, TF32 183 (366 sparse), BF16/FP16 362.05 (733), FP8 733.
    "L40S": {"fp32": 91.6 * T, "tf32": 183 * T, "bf16": 362.05 * T, "fp16": 362.05 * T,
             "fp8": 733 * T},
    # AMD Instinct MI250X datasheet: per OAM module FP32 matrix 95.7, FP64 matrix 95.7,
    # BF16/FP16 383. The module is two GCDs and torch sees each GCD as one device: halved.
    "MI250X": {"fp64": 47.85 * T, "fp32": 47.85 * T, "bf16": 191.5 * T, "fp16": 191.5 * T},
    # AMD Instinct MI300X datasheet: FP32 matrix 163.4, TF32 653.7 (1307.4 sparse),
    # BF16/FP16 1307.4 (2614.9 sparse), FP8 2614.9, FP64 matrix 163.4.
    "MI300X": {"fp64": 163.4 * T, "fp32": 163.4 * T, "tf32": 653.7 * T, "bf16": 1307.4 * T,
               "fp16": 1307.4 * T, "fp8": 2614.9 * T},
}

def chip_key(device_name: str) -> str | None:
    """Map a torch device name ("NVIDIA H100 80GB HBM3", "Tesla V100-SXM2-16GB", ...) to a
    PEAK_TABLE key, or None. Order matters: "gh200" contains "h200", "l40s" contains "l4"."""
    n = device_name.lower()
    if "gh200" in n:
        return "H100-SXM"  # GH200's GPU has the H100 SXM compute rates
    if "h200" in n:
        return "H200-NVL" if "nvl" in n else "H200-SXM"
    if "h100" in n:
        if "nvl" in n:
            return "H100-NVL"
        return "H100-PCIe" if ("pcie" in n or "hbm2e" in n) else "H100-SXM"
    if "a100" in n:
        return "A100"
    if "v100" in n:
        return "V100-PCIe" if "pcie" in n else "V100-SXM"
    if "l40s" in n:
        return "L40S"
    if re.search(r"\bl4\b", n):
        return "L4"
    if "mi300x" in n:
        return "MI300X"
    if "mi250x" in n:
        return "MI250X"
    return None
