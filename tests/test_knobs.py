"""Config knobs reach the code: the optimizer, the LeakyReLU slope of every layer, the curves
LossHistory keeps, the kernel switches; and a launched job's rerun is recognised."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from src import contract
from src.kernels import cpu_kernels, depthwise
from src.layers.genotype import reference_genotype
from src.models.darts_net import DartsNet
from src.training.build import apply_speed_settings, build_datamodule, build_module
from tests.conftest import compose_cfg
from train import run


def test_configured_optimizer_is_the_one_that_trains(train_cfg):
    cfg = train_cfg("optim=sgd", "optim.lr=0.05")
    module = build_module(cfg, build_datamodule(cfg))
    module._trainer = SimpleNamespace(estimated_stepping_batches=4, world_size=1)
    opt = module.configure_optimizers()["optimizer"]
    assert type(opt) is torch.optim.SGD and opt.defaults["lr"] == 0.05
    assert opt.defaults["momentum"] == 0.9


@pytest.mark.parametrize("rule, world, factor", [("none", 4, 1.0), ("linear", 4, 2.0),
                                                  ("sqrt", 8, 2.0)])
def test_lr_scales_with_the_global_batch(train_cfg, rule, world, factor):
    """optim.lr is the rate at a global batch of schedule.lr_reference_batch; the global batch
    is data.batch_size (2 here) x the world size."""
    cfg = train_cfg("optim.lr=0.01", f"schedule.lr_scaling={rule}", "schedule.lr_reference_batch=4")
    module = build_module(cfg, build_datamodule(cfg))
    module._trainer = SimpleNamespace(estimated_stepping_batches=4, world_size=world)
    opt = module.configure_optimizers()["optimizer"]
    assert opt.param_groups[0]["initial_lr"] == pytest.approx(0.01 * factor)


@pytest.mark.parametrize("model", ["medium", "large"])
def test_negative_slope_reaches_every_leaky_relu(model):
    net_cfg = compose_cfg("train", [f"model={model}", "model.net.negative_slope=0.1",
                                    "model.net.n_cells=3", "model.net.reductions=[1]",
                                    "model.net.C=4"]).model.net
    from hydra.utils import instantiate

    net = instantiate(net_cfg, in_channels=1, input_size=8, n_params=3)
    slopes = {m.negative_slope for m in net.modules() if isinstance(m, nn.LeakyReLU)}
    assert slopes == {0.1}


def test_negative_slope_of_a_darts_net_built_directly():
    net = DartsNet(1, 8, 3, reference_genotype("sep_conv_3"), C=4, n_cells=2, reductions=[1],
                   negative_slope=0.2)
    assert {m.negative_slope for m in net.modules() if isinstance(m, nn.LeakyReLU)} == {0.2}


def test_history_keeps_the_configured_keys(train_cfg):
    result = run(train_cfg("trainer.max_steps=4", "+trainer.val_check_interval=2",
                           "callbacks.history.keys=[train/loss,val/loss,val/mae_sigma_8]"))
    history = result["history"]
    assert set(history) == {"train/loss", "val/loss", "val/mae_sigma_8"}
    assert [p[0] for p in history["train/loss"]] == [1, 2, 3, 4]
    assert [p[0] for p in history["val/mae_sigma_8"]] == [p[0] for p in history["val/loss"]]
    assert history["val/mae_sigma_8"] and all(p[1] > 0 for p in history["val/mae_sigma_8"])
    # each point also carries the seconds since the fit started, rising
    times = [p[2] for p in history["train/loss"]]
    assert times == sorted(times) and times[0] >= 0


def test_kernel_switches_are_config_keys():
    speed = compose_cfg("train", ["speed.cpu_kernels=false", "speed.fast_depthwise=false",
                                  "speed.malloc_keep_mib=null"]).speed
    before = cpu_kernels.set_enabled(True), depthwise.set_fast_depthwise(True)
    try:
        apply_speed_settings(speed)
        assert cpu_kernels.load() is None and depthwise._ENABLED is False
    finally:
        cpu_kernels.set_enabled(before[0])
        depthwise.set_fast_depthwise(before[1])


def test_a_real_job_writes_only_contract_names(train_cfg, tmp_path):
    result = run(train_cfg())
    assert contract.unknown_metrics(result["metrics"]) == []
    assert set(result["config"]) == set(contract.CONFIG_KEYS)
    assert set(result) == set(contract.SECTIONS)
    with pytest.raises(contract.ContractError):
        contract.job_record("complete", config={"no_such_key": 1})
    with pytest.raises(contract.ContractError):
        contract.check_row_key("tflops_aggregat")


def test_rerun_of_a_launched_job_is_skipped(train_cfg, tmp_path):
    """Each launched rank hashes the config it reloads from YAML; the parent's hash of the
    composed config must be the same, or a finished multi-rank job would run again."""
    cfg = train_cfg("trainer=ddp_sim", "trainer.max_steps=1", "trainer.limit_val_batches=1")
    first = run(cfg)
    metrics_file = tmp_path / "job" / "metrics.json"
    stamp = metrics_file.stat().st_mtime_ns
    again = run(train_cfg("trainer=ddp_sim", "trainer.max_steps=1", "trainer.limit_val_batches=1"))
    assert again == first == json.loads(metrics_file.read_text())
    assert metrics_file.stat().st_mtime_ns == stamp
    assert first["config"]["world_size"] == 2 and first["config"]["emulated"] is False


def test_optimizer_without_partial_is_one_clear_error(train_cfg):
    from src.errors import ConfigError

    cfg = train_cfg("optim._partial_=false")
    with pytest.raises(ConfigError, match="_partial_: true"):
        build_module(cfg, build_datamodule(cfg))


def test_checkpoint_hparams_record_the_optimizer(train_cfg):
    cfg = train_cfg("optim.lr=0.003")
    module = build_module(cfg, build_datamodule(cfg))
    assert module.hparams["optimizer"] == {"class": "torch.optim.adam.Adam", "lr": 0.003,
                                           "betas": [0.9, 0.999], "eps": 1e-8,
                                           "weight_decay": 0.0, "fused": True}


def test_quality_knobs_reach_the_callback(train_cfg):
    from src.callbacks.quality import QualityMonitor
    from src.quality.target import QualityTarget
    from src.training.build import build_callbacks

    cfg = train_cfg("quality.target.metric=val_mae", "quality.target.param=sigma_8",
                    "quality.target.factor=0.5", "quality.early_stop=true",
                    "quality.baselines.pk_bins=2", "quality.baselines.ridge_alpha=0.5",
                    "quality.baselines.max_train_samples=7", "quality.valid_flops.exponent=3",
                    "quality.valid_flops.cap_at_one=false")
    cb = next(cb for cb in build_callbacks(cfg) if isinstance(cb, QualityMonitor))
    assert cb.target == QualityTarget("val_mae", "sigma_8", "summary_stats", 0.5, None)
    assert cb.early_stop is True and (cb.exponent, cb.cap) == (3.0, False)
    assert cb.baselines == {"enabled": True, "pk_bins": 2, "ridge_alpha": 0.5,
                            "max_train_samples": 7}
