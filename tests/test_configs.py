"""Every option of every config group composes and instantiates, and every experiment preset
composes and runs its first job (the shape of lightning-hydra-template's test_configs.py and
test_sweeps.py)."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import get_class, instantiate
from lightning import Trainer
from omegaconf import OmegaConf, open_dict

from src.sim.nbody import SimSpec
from tests.conftest import CONF, SMALL_OVERRIDES, compose_cfg
from train import run


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_every_group_has_options():
    for group in ("model", "optim", "schedule", "lars", "trainer", "speed", "logger",
                  "callbacks", "data", "perf", "paths", "experiment", "debug", "sim",
                  "quality"):
        assert options(group), group


@pytest.mark.parametrize("model", options("model"))
def test_every_model_builds_and_runs_forward(model):
    net = instantiate(compose_cfg("train", [f"model={model}"]).model.net, in_channels=1,
                      input_size=16, n_params=3)
    y = net(torch.randn(2, 1, 16, 16, 16))
    assert y.shape == (2, 3) and torch.isfinite(y).all()


@pytest.mark.parametrize("optim", options("optim"))
def test_every_optimizer_is_a_partial_of_a_torch_optimizer(optim):
    node = compose_cfg("train", [f"optim={optim}"]).optim
    factory = instantiate(node)
    assert isinstance(factory, functools.partial)
    opt = factory([torch.nn.Parameter(torch.ones(2))])
    assert isinstance(opt, get_class(node._target_))
    assert opt.defaults["lr"] == node.lr  # the configured values reach the optimizer


@pytest.mark.parametrize("group", ["schedule", "lars"])
def test_schedule_and_lars_options_compose(group):
    for option in options(group):
        section = OmegaConf.to_container(compose_cfg("train", [f"{group}={option}"])[group])
        assert section and "_target_" not in section  # read by CosmoRegressor, not built
    assert compose_cfg("train", ["lars=enabled"]).lars.enabled is True


@pytest.mark.parametrize("trainer", [t for t in options("trainer") if t != "default"])
def test_every_trainer_preset_composes_and_cpu_ones_instantiate(trainer, tmp_path):
    cfg = compose_cfg("train", [f"trainer={trainer}"], tmp_path)
    assert cfg.speed, "every trainer preset has speed settings (conf/speed/<trainer>.yaml)"
    if cfg.trainer.accelerator == "cpu":
        made = instantiate(cfg.trainer, precision="32-true", logger=False,
                           enable_progress_bar=False, default_root_dir=str(tmp_path))
        assert isinstance(made, Trainer)
    else:
        assert cfg.trainer.accelerator == "gpu"  # needs a GPU to instantiate


@pytest.mark.parametrize("logger", options("logger"))
def test_every_logger_option_instantiates(logger, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = compose_cfg("train", [f"logger={logger}"], tmp_path)
    made = [instantiate(lg) for lg in (cfg.logger or {}).values() if lg and "_target_" in lg]
    assert (logger == "none") == (not made)


@pytest.mark.parametrize("callbacks", options("callbacks"))
def test_every_callback_option_instantiates(callbacks, tmp_path):
    cfg = compose_cfg("train", [f"callbacks={callbacks}"], tmp_path)
    made = [instantiate(cb) for cb in cfg.callbacks.values()]
    assert made and all(hasattr(cb, "on_train_batch_end") for cb in made)


def test_data_and_paths_instantiate(tiny_data, tmp_path):
    cfg = compose_cfg("train", [f"data.dir={tiny_data}"], tmp_path)
    dm = instantiate(cfg.data)
    dm.setup("fit")
    assert len(dm.train_set) > 0 and cfg.paths.data_dir


@pytest.mark.parametrize("sim", [s for s in options("sim") if s != "base"])
def test_every_sim_preset_is_a_valid_simulation(sim):
    cfg = compose_cfg("generate", [f"sim={sim}"])
    spec = SimSpec.from_config(OmegaConf.to_container(cfg.sim, resolve=True))
    assert spec.n_sub >= 1 and spec.grid % round(spec.n_sub ** (1 / 3)) == 0


@pytest.mark.parametrize("config", ["search", "report", "generate"])
def test_other_entry_configs_compose(config):
    overrides = ["sweep_dir=x"] if config == "report" else []
    assert compose_cfg(config, overrides)


@pytest.mark.parametrize("trainer, gpus", [("ddp_cpu", None), ("ddp", 4)])
def test_slurm_launcher_takes_each_jobs_resources_from_its_trainer(trainer, gpus):
    from src.training.slurm_queue import job_resources

    overrides = ["hydra/launcher=slurm", f"trainer={trainer}", "trainer.num_nodes=8",
                 "trainer.devices=4"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides, return_hydra_config=True)
    assert get_class(cfg.hydra.launcher._target_).__name__ == "GroupedSlurmLauncher"
    params = job_resources(OmegaConf.to_container(cfg.hydra.launcher, resolve=True),
                           OmegaConf.to_container(cfg.trainer, resolve=True))
    assert (params["nodes"], params["tasks_per_node"], params["gpus_per_node"]) == (8, 4, gpus)


def test_slurm_launcher_needs_a_number_of_devices():
    from src.errors import SchedulerError
    from src.training.slurm_queue import job_resources

    with pytest.raises(SchedulerError, match="trainer.devices=auto"):
        job_resources({"tasks_per_node": "auto", "gpus_per_node": "auto"}, {"accelerator": "gpu"})


def _first_job_overrides(experiment: str) -> list[str]:
    """The overrides of the first job of the experiment's sweep."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", [f"experiment={experiment}"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params or {}
    assert params, f"experiment={experiment} sweeps nothing"
    return [f"{key}={str(value).split(',')[0]}" for key, value in params.items()]


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_preset_runs_its_first_job(experiment, tiny_data, tmp_path):
    overrides = [f"experiment={experiment}", *_first_job_overrides(experiment),
                 *SMALL_OVERRIDES, "trainer.max_steps=1", "trainer.limit_val_batches=1",
                 f"data.dir={tiny_data}"]
    cfg = compose_cfg("train", overrides, tmp_path / experiment)
    with open_dict(cfg):
        cfg.trainer.precision = "32-true"  # bf16 is emulated, so slow, on some CPUs
    OmegaConf.resolve(cfg)
    result = run(cfg)
    assert result["status"] == "complete" and math.isfinite(result["metrics"]["train/loss"])
    assert Path(tmp_path / experiment / "metrics.json").is_file()


@pytest.mark.parametrize("debug", options("debug"))
def test_every_debug_preset_composes(debug):
    cfg = compose_cfg("train", [f"debug={debug}"])
    assert cfg.trainer.max_steps == 2
