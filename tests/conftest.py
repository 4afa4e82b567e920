"""Shared fixtures: tiny real HDF5 sets through the contract writer, composed real configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from src.sim.synthetic import write_synthetic_dataset

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

# The smallest configuration that still runs the whole job: 16^3 cubes, 2 steps.
SMALL_OVERRIDES = [
    "logger=csv",
    "trainer.max_epochs=1",
    "trainer.max_steps=2",
    "trainer.limit_val_batches=2",
    "trainer.enable_progress_bar=false",
    "~callbacks.progress",
    "data.batch_size=2",
]


@pytest.fixture
def one_torch_thread():
    """One intra-op torch thread for the test, restored after it."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """8 simulations x 8 sub-volumes of 16^3, one channel (64 samples)."""
    path = tmp_path_factory.mktemp("tiny16")
    write_synthetic_dataset(path, n_sims=8, size=16, seed=3)
    return path


def compose_cfg(config_name: str, overrides: list[str], output_dir: Path | None = None):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides)
    if output_dir is not None:
        with open_dict(cfg):
            cfg.paths.output_dir = str(output_dir)
    return cfg


@pytest.fixture
def train_cfg(tiny_data, tmp_path):
    """A factory: the real train config, shrunk, writing into this test's tmp dir."""

    def make(*overrides: str, out: Path | None = None):
        cfg = compose_cfg(
            "train", [*SMALL_OVERRIDES, f"data.dir={tiny_data}", *overrides], out or tmp_path / "job"
        )
        OmegaConf.resolve(cfg)
        return cfg

    return make
