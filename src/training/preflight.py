"""Before a job's ranks start on this machine: will they fit in its memory?

Several ranks on one machine (devices, or emulated nodes) each hold the runtime, the weights,
their gradients, the optimizer state and the activations of a batch. A job that does not fit
gets OOM-killed, and the kernel may take the sweep's parent with it; so the job is estimated
first and, when it cannot fit, fails alone with the numbers (the sweep goes on).
"""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from src.errors import MemoryFitError, UserError
from src.perf.memory import gradients_bytes, saved_activation_bytes, weights_bytes
from src.perf.system import available_memory_bytes
from src.sim.store import read_manifest
from src.util.hydra import instantiate_clear

log = logging.getLogger(__name__)

GiB = 1024 ** 3
# Adam and AdamW keep two moments per parameter; SGD with momentum one (counted high)
OPTIMIZER_STATES = 2


def rank_memory(cfg: DictConfig) -> dict:
    """Bytes one rank of this job needs, by part (float32 activations at data.batch_size)."""
    manifest = read_manifest(cfg.data.dir)
    shape = [int(s) for s in manifest["sample_shape"]]
    net = instantiate_clear(cfg.model.net, in_channels=shape[0], input_size=shape[1],
                            n_params=len(manifest["param_names"]))
    grads = gradients_bytes(net)
    parts = {"runtime": int(cfg.launch.rank_overhead_mib) * 1024 ** 2,
             "weights": weights_bytes(net), "gradients": grads,
             "optimizer": OPTIMIZER_STATES * grads}
    if str(cfg.trainer.get("accelerator")) == "cpu":  # on a GPU they live in its memory
        parts["activations"] = saved_activation_bytes(net, shape, int(cfg.data.batch_size))
    return parts


def check_memory(cfg: DictConfig, ranks: int, available: int | None = None) -> None:
    """Raise MemoryFitError when `ranks` ranks of this job on this machine, times
    launch.memory_margin, exceed the memory available (`available`: measured when None)."""
    margin = cfg.launch.get("memory_margin")
    if margin is None:  # null: the check is off
        return
    try:
        parts = rank_memory(cfg)
    except UserError:
        raise
    except Exception as err:  # an estimate we cannot make must not stop the job
        log.warning("memory pre-flight skipped: %s: %s", type(err).__name__, err)
        return
    available = available_memory_bytes() if available is None else available
    per_rank = sum(parts.values())
    need = ranks * per_rank * float(margin)
    if available is None or need <= available:
        return
    detail = ", ".join(f"{k} {v / GiB:.2f}" for k, v in parts.items())
    raise MemoryFitError(
        f"{ranks} ranks x {per_rank / GiB:.2f} GiB ({detail} GiB at data.batch_size="
        f"{cfg.data.batch_size}) x launch.memory_margin={float(margin):g} = {need / GiB:.1f} GiB, "
        f"but {available / GiB:.1f} GiB are available on this machine (cgroup limit included): "
        "use fewer ranks (trainer.num_nodes, trainer.devices) or a smaller data.batch_size")

