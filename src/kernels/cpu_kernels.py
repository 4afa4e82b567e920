"""Compiled CPU kernels for the DARTS ops (`cpu_kernels.cpp`): the depthwise 3D conv's weight
gradient and a gather-form correlation (dilated forwards, strided/dilated input gradients),
and training-mode BatchNorm + LeakyReLU fused.

Built on first use with torch's C++ extension machinery (g++ and ninja) into
`~/.cache/saih-cosmo/kernels/`, once per processor, torch version and source; later processes
only load it. Compiled for the processor it runs on (`-march=native`), so the
build directory is keyed by the processor's model and flags (a shared home on a mixed cluster
builds one per kind of node). If it cannot be built (no compiler), training falls back to the
pure-PyTorch formulations (`depthwise.py`, torch's BatchNorm and LeakyReLU) after one warning.
`speed.cpu_kernels=false` (`set_enabled(False)`) never builds or uses it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from src.util.cache import cache_root
from src.util.cpuinfo import cpu_signature

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("cpu_kernels.cpp")
CFLAGS = ["-O3", "-march=native", "-fopenmp"]
MAX_KERNEL_WIDTH = 7  # the widths the C++ dispatch instantiates
DTYPES = (torch.float32, torch.bfloat16)  # what the kernels read and write

_enabled = True
_module = None
_failed = False


def set_enabled(enabled: bool) -> bool:
    """Use the compiled kernel (if it builds) or not; returns the previous setting."""
    global _enabled
    previous, _enabled = _enabled, bool(enabled)
    return previous


def build_name() -> str:
    """Extension name: changes with the source, flags, torch version and processor."""
    h = hashlib.sha256()
    for part in (SOURCE.read_bytes(), " ".join(CFLAGS).encode(), torch.__version__.encode(),
                 cpu_signature().encode()):
        h.update(part)
    return f"saih_depthwise_{h.hexdigest()[:16]}"


def _put_ninja_on_path() -> None:
    """torch runs `ninja` from PATH; an un-activated venv's pip-installed one is not there."""
    if shutil.which("ninja") is None:
        try:
            import ninja
        except ImportError:
            return
        os.environ["PATH"] = f"{ninja.BIN_DIR}{os.pathsep}{os.environ.get('PATH', '')}"


def _build_dir(name: str) -> Path:
    """~/.cache/saih-cosmo/kernels/<name>, or under the temp dir where the home is read-only."""
    for root in (cache_root(),
                 Path(tempfile.gettempdir()) / f"saih-cosmo-{os.getuid()}"):
        path = root / "kernels" / name
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(path, os.W_OK):
            return path
    raise OSError("no writable directory to build the CPU kernels in")


def load():
    """The compiled module, or None (disabled, or the build failed: warned once)."""
    global _module, _failed
    if not _enabled or _failed:
        return None
    if _module is None:
        from torch.utils import cpp_extension

        _put_ninja_on_path()

        name = build_name()
        try:
            build_dir = _build_dir(name)
            if not any(build_dir.glob("*.so")):
                print(f"saih-cosmo: compiling the CPU kernels into {build_dir} "
                      "(once per machine, well under a minute)", file=sys.stderr, flush=True)
            _module = cpp_extension.load(name=name, sources=[str(SOURCE)], extra_cflags=CFLAGS,
                                         extra_ldflags=["-fopenmp"],
                                         build_directory=str(build_dir), verbose=False)
        except Exception as err:  # no compiler / headers: the PyTorch paths still work
            _failed = True
            log.warning("CPU kernels unavailable (%s: %s); using the slower PyTorch "
                        "formulations", type(err).__name__, str(err).splitlines()[0][:200])
            return None
    return _module


def _takes(dtypes, w: torch.Tensor) -> bool:
    """One dtype the kernels handle, and a kernel width the C++ dispatch instantiates."""
    return len(set(dtypes)) == 1 and dtypes[0] in DTYPES and w.shape[-1] <= MAX_KERNEL_WIDTH


def _usable(*tensors: torch.Tensor):
    """The module if the kernel is on and takes these tensors (the weight last), else None."""
    return load() if _takes([t.dtype for t in tensors], tensors[-1]) else None


def _ndhwc(t: torch.Tensor) -> torch.Tensor:
    return t.permute(0, 2, 3, 4, 1).contiguous()  # free for channels_last_3d tensors


def _taps_last(w: torch.Tensor) -> torch.Tensor:
    return w[:, 0].float().permute(1, 2, 3, 0).contiguous()  # [C, 1, k, k, k] -> [k, k, k, C]


def _from_ndhwc(t: torch.Tensor, dtype) -> torch.Tensor:
    return t.permute(0, 4, 1, 2, 3).to(dtype)  # a channels_last_3d NCDHW tensor


def conv(x, w, stride, padding, dilation):
    """`F.conv3d(x, w, None, stride, padding, dilation, groups=C)` by the gather kernel (for
    dilated convs: torch's CPU kernels are slow there), or None."""
    module = _usable(x, w)
    if module is None:
        return None
    out = [(n + 2 * p - d * (k - 1) - 1) // s + 1
           for n, k, s, p, d in zip(x.shape[2:], w.shape[2:], stride, padding, dilation,
                                    strict=True)]
    y = module.gather(_ndhwc(x), _taps_last(w), out, list(stride), list(dilation),
                      [-p for p in padding], [1, 1, 1])
    return _from_ndhwc(y, x.dtype)


def grad_input(g, w, in_shape, stride, padding, dilation):
    """dL/dx of the depthwise conv from the output gradient g, by the gather kernel:
    gx[z] = sum over taps t of w[t] * g[(z + padding - dilation * t) / stride] where that
    division is exact and in range. None where the kernel is unavailable."""
    module = _usable(g, w)
    if module is None:
        return None
    gx = module.gather(_ndhwc(g), _taps_last(w), list(in_shape[2:]), [1, 1, 1],
                       [-d for d in dilation], list(padding), list(stride))
    return _from_ndhwc(gx, g.dtype)


def grad_weight(g, x, w, stride, padding, dilation):
    """dL/dW of the depthwise conv from the output gradient g, or None where the compiled
    kernel is unavailable."""
    module = _usable(g, x, w)
    if module is None:
        return None
    gw = module.grad_weight(_ndhwc(x), _ndhwc(g), list(w.shape[2:]), list(stride),
                            list(padding), list(dilation))
    return gw.permute(3, 0, 1, 2).unsqueeze(1).to(w.dtype)  # [C, 1, k, k, k]


def applies(x: torch.Tensor, w: torch.Tensor) -> bool:
    """Whether the compiled kernels will run for this input and weight, in the dtype the conv
    runs in (under CPU autocast: the autocast dtype, to which both are cast)."""
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
    return _takes([dtype], w) and load() is not None


class _BNLeakyReLU(torch.autograd.Function):
    """leaky_relu(batch_norm(x)) in training mode on [M, C] rows; returns (y, mean, biased var)."""

    @staticmethod
    def forward(ctx, rows, gamma, beta, eps, slope, module):
        y, mean, var, invstd = module.bn_act_forward(rows, gamma, beta, eps, slope)
        ctx.save_for_backward(rows, gamma, beta, mean, invstd)
        ctx.slope, ctx.module = slope, module
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    def backward(ctx, gy, _gmean, _gvar):
        rows, gamma, beta, mean, invstd = ctx.saved_tensors
        gx, ggamma, gbeta = ctx.module.bn_act_backward(rows, gy.contiguous(), gamma, beta, mean,
                                                       invstd, ctx.slope)
        return gx, ggamma, gbeta, None, None, None


def bn_leaky_relu(x: torch.Tensor, bn: torch.nn.BatchNorm3d, slope: float):
    """`F.leaky_relu(bn(x), slope)` for a BatchNorm in training mode, fused (running statistics
    updated as torch does), or None where the kernel does not apply: it takes channels_last_3d
    fp32/bf16 CPU tensors (the NDHWC view is then free)."""
    if (not bn.training or x.dim() != 5 or x.device.type != "cpu"
            or x.dtype not in DTYPES
            or not x.is_contiguous(memory_format=torch.channels_last_3d)
            or x.numel() // x.shape[1] < 2):
        return None
    module = load()
    if module is None:
        return None
    B, C, D, H, W = x.shape
    gamma = bn.weight if bn.weight is not None else x.new_ones(C, dtype=torch.float32)
    beta = bn.bias if bn.bias is not None else x.new_zeros(C, dtype=torch.float32)
    rows = x.permute(0, 2, 3, 4, 1).reshape(-1, C)  # a view: x is channels_last_3d
    y, mean, var = _BNLeakyReLU.apply(rows, gamma.float(), beta.float(), bn.eps, float(slope),
                                      module)
    if bn.track_running_stats and bn.running_mean is not None:
        _update_running_stats(bn, mean, var, rows.shape[0])
    return y.view(B, D, H, W, C).permute(0, 4, 1, 2, 3)


@torch.no_grad()
def _update_running_stats(bn, mean, var, n: int) -> None:
    """What `nn.BatchNorm3d.forward` does in training: count the batch, then move the running
    mean and the running unbiased variance towards the batch's by the momentum."""
    bn.num_batches_tracked.add_(1)
    factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    bn.running_mean.lerp_(mean.to(bn.running_mean.dtype), factor)
    bn.running_var.lerp_((var * (n / (n - 1))).to(bn.running_var.dtype), factor)
