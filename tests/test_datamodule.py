"""CosmoDataModule on real HDF5 files: split, nested fractions, shards, staging, transforms."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from src.datamodules.cosmo import CosmoDataModule
from src.datamodules.dataset import CosmoDataset
from src.datamodules.sampler import ShardSampler
from src.datamodules.split import data_fraction
from src.dist import EMULATED_FLAG
from src.errors import DataError
from src.sim.store import read_simulation
from src.sim.synthetic import write_synthetic_dataset


def make_dm(data_dir, world=1, rank=0, num_devices=1, **kwargs):
    dm = CosmoDataModule(str(data_dir), **kwargs)
    dm.trainer = SimpleNamespace(global_rank=rank, world_size=world, num_devices=num_devices)
    dm.setup("fit")
    return dm


def test_split_of_existing_simulations_stays_put_when_simulations_are_added(tmp_path):
    """The side of a simulation is a function of its id: 24 more simulations in the directory
    leave the first 8 where they were; fractions still nest on the larger set."""
    write_synthetic_dataset(tmp_path / "d", n_sims=8, size=4, n_sub=1, seed=0)
    small = make_dm(tmp_path / "d", val_fraction=0.3)
    write_synthetic_dataset(tmp_path / "d", n_sims=32, size=4, n_sub=1, seed=0)
    big = make_dm(tmp_path / "d", val_fraction=0.3)
    assert set(big.val_sim_ids) & set(range(8)) == set(small.val_sim_ids)
    assert set(big.train_sim_ids) & set(range(8)) == set(small.train_sim_ids)
    assert len(big.val_sim_ids) > len(small.val_sim_ids)
    half = make_dm(tmp_path / "d", val_fraction=0.3, fraction="1/2")
    np.testing.assert_array_equal(half.train_set.index, big.train_set.index[:len(half.train_set)])


def test_split_keeps_whole_simulations_on_one_side(tiny_data):
    dm = make_dm(tiny_data)
    train_files = set(dm.train_set.index[:, 0].tolist())
    val_files = set(dm.val_set.index[:, 0].tolist())
    assert train_files and val_files and not train_files & val_files
    # the seeded hash puts simulation 7 alone below val_fraction 0.25 (split_seed 0)
    assert dm.val_sim_ids == [7] and len(dm.val_set) == 8 and len(dm.train_set) == 56
    assert dm.train_sim_ids == list(range(7))


@pytest.mark.parametrize("fraction", ["1/2", 0.25, "1/8"])
def test_fractions_are_nested_prefixes(tiny_data, fraction):
    full = make_dm(tiny_data, fraction=1)
    part = make_dm(tiny_data, fraction=fraction)
    n = len(part.train_set)
    assert n == int(56 * data_fraction(fraction))
    np.testing.assert_array_equal(part.train_set.index, full.train_set.index[:n])


def test_data_fraction_accepts_ratios():
    assert data_fraction("1/32") == 1 / 32 and data_fraction(1) == 1.0 and data_fraction("0.5") == 0.5


def test_labels_normalised_and_inputs_log1p(tiny_data):
    dm = make_dm(tiny_data)
    x, y = dm.train_set[0]
    file_idx, sub = dm.train_set.index[0]
    raw_x, raw_y, _ = read_simulation(dm.train_set.files[file_idx])
    np.testing.assert_allclose(x.numpy(), np.log1p(raw_x[sub]), rtol=1e-6)
    lo = np.array([dm.param_ranges[n][0] for n in dm.param_names])
    hi = np.array([dm.param_ranges[n][1] for n in dm.param_names])
    np.testing.assert_allclose(y.numpy(), 2 * (raw_y - lo) / (hi - lo) - 1, rtol=1e-5)
    assert torch.all(y.abs() <= 1)


def test_rank_shards_are_disjoint_equal_and_fixed_across_epochs():
    shards = [ShardSampler(50, r, 3, shuffle=True, seed=0, equal=True) for r in range(3)]
    assert [len(s) for s in shards] == [16, 16, 16]
    owned = [set(s.positions.tolist()) for s in shards]
    assert not (owned[0] & owned[1]) and not (owned[1] & owned[2])
    first = list(shards[0])
    shards[0].set_epoch(1)
    second = list(shards[0])
    assert sorted(first) == sorted(second) and first != second  # same shard, new order


def test_a_skipped_pass_yields_the_rest_of_the_same_order_once():
    """A resume inside a cut epoch: that epoch's order again, minus what the cut part trained."""
    sampler = ShardSampler(40, 1, 2, shuffle=True, seed=5, equal=True)
    sampler.set_epoch(3)
    whole = list(sampler)
    sampler.skip_next(6)
    assert list(sampler) == whole[6:]
    assert list(sampler) == whole  # only the one pass is shortened


@pytest.mark.parametrize("stage", ["ram", "dir"])
def test_staging_gives_the_same_samples(tiny_data, tmp_path, stage):
    target = "ram" if stage == "ram" else str(tmp_path / "local")
    plain = make_dm(tiny_data, world=2, rank=1)
    staged = make_dm(tiny_data, world=2, rank=1, stage=target)
    mine = plain.train_dataloader().sampler.positions
    for i in mine[:4]:
        assert torch.equal(plain.train_set[int(i)][0], staged.train_set[int(i)][0])
    assert staged.staging_s > 0
    if stage == "dir":
        assert list((tmp_path / "local").glob("sim_*.h5"))


def test_stage_auto_takes_ram_only_when_the_local_shards_fit(tiny_data, monkeypatch):
    """stage: auto (the default) stages to RAM when the shards of all ranks on this machine fit
    in stage_ram_max_frac (0.25) of the available memory; emulated nodes all count as local."""
    import src.datamodules.staging as staging

    shard = len(make_dm(tiny_data, world=2).train_dataloader().sampler.positions)
    one = shard * make_dm(tiny_data).sample_bytes

    def dm_with(available, num_devices=1):
        monkeypatch.setattr(staging, "available_memory_bytes", lambda: available)
        return make_dm(tiny_data, world=2, num_devices=num_devices, stage="auto")

    two_local = dm_with(8 * one, num_devices=2)  # 2 shards = a quarter of 8
    assert two_local.staged_to == "ram" and two_local.staging_s > 0
    assert len(two_local.train_set.cache) == shard
    too_big = dm_with(8 * one - 1, num_devices=2)
    assert too_big.staged_to is None and not too_big.train_set.cache
    assert torch.equal(too_big.train_set[0][0], two_local.train_set[0][0])
    assert dm_with(4 * one).staged_to == "ram"  # one rank per machine
    monkeypatch.setenv(EMULATED_FLAG, "1")
    assert dm_with(4 * one).staged_to is None  # both emulated nodes share this machine
    assert dm_with(None).staged_to is None  # memory unknown: read the files


def test_augment_preserves_values_and_labels(tiny_data):
    plain = make_dm(tiny_data)
    aug = make_dm(tiny_data, augment=True)
    for i in range(4):
        (x0, y0), (x1, y1) = plain.train_set[i], aug.train_set[i]
        assert torch.equal(y0, y1)
        assert torch.equal(torch.sort(x0.flatten()).values, torch.sort(x1.flatten()).values)


def test_augment_is_reproducible_from_the_seed(tiny_data):
    aug = make_dm(tiny_data, augment=True)

    def draw(seed):
        torch.manual_seed(seed)
        return torch.stack([aug.train_set[i][0] for i in range(6)])

    assert torch.equal(draw(1), draw(1))
    assert not torch.equal(draw(1), draw(2))


def test_random_shift_cuts_each_sample_from_its_simulations_box(tiny_data):
    """A shifted sample is a 16³ region of its simulation's periodic 32³ box, at its own
    sub-volume's corner moved by 0..15 voxels per axis, wrapping round; its label stays."""
    plain = make_dm(tiny_data, transform="none")
    shifted = make_dm(tiny_data, transform="none", random_shift=True)
    torch.manual_seed(0)
    moved = 0
    for i in range(0, len(plain.train_set), 7):
        file_idx, sub = (int(v) for v in plain.train_set.index[i])
        subs = read_simulation(plain.train_set.files[file_idx])[0]  # [8, 1, 16, 16, 16]
        box = subs.reshape(2, 2, 2, 1, 16, 16, 16).transpose(3, 0, 4, 1, 5, 2, 6).reshape(1, 32, 32, 32)
        x, y = shifted.train_set[i]
        assert torch.equal(y, plain.train_set[i][1])
        corner = np.array(np.unravel_index(sub, (2, 2, 2))) * 16
        twice = np.tile(box, (1, 2, 2, 2))  # every 16³ region of the periodic box, unwrapped
        offsets = [o for o in np.ndindex(16, 16, 16) if np.array_equal(
            twice[:, corner[0] + o[0]:, corner[1] + o[1]:, corner[2] + o[2]:][:, :16, :16, :16], x.numpy())]
        assert len(offsets) == 1
        moved += offsets[0] != (0, 0, 0)
    assert moved >= 7  # of 8 draws: not the fixed sub-volumes


@pytest.mark.parametrize("world", [1, 2])
def test_random_shift_reads_the_same_box_staged_or_not(tiny_data, world):
    """Staged in RAM, a rank's shard lacks some sub-volumes of its simulations' boxes (with two
    ranks): those come from the files, and every sample is what reading the files gives."""
    plain = make_dm(tiny_data, world=world, random_shift=True)
    staged = make_dm(tiny_data, world=world, random_shift=True, stage="ram")
    assert staged.train_set.cache
    for i in staged.train_dataloader().sampler.positions[:6]:
        torch.manual_seed(int(i))
        a = plain.train_set[int(i)][0]
        torch.manual_seed(int(i))
        assert torch.equal(a, staged.train_set[int(i)][0])


def test_random_shift_leaves_gan_cubes_as_they_are(tiny_data, tmp_path):
    """A GAN file's cubes are drawn one by one, not cut from one box: in an extra training
    dir they are read unshifted, while data.dir's simulations are shifted."""
    extra = tmp_path / "gan"
    write_synthetic_dataset(extra, n_sims=2, size=16, seed=9)
    manifest = json.loads((extra / "manifest.json").read_text())
    for entry in manifest["files"]:
        entry["method"] = "gan"
    (extra / "manifest.json").write_text(json.dumps(manifest))
    dm = make_dm(tiny_data, transform="none", random_shift=True, extra_train_dirs=[str(extra)])
    ds = dm.train_set
    torch.manual_seed(0)
    first_gan = dm.n_primary_train
    assert len(ds) == first_gan + 16
    for i in range(first_gan, len(ds)):
        assert np.array_equal(ds[i][0].numpy(), ds.read_raw(i))
    assert sum(not np.array_equal(ds[i][0].numpy(), ds.read_raw(i)) for i in range(8)) >= 7


def test_random_shift_with_a_fraction_or_a_partial_box_is_a_clear_error(tiny_data):
    with pytest.raises(DataError, match=r"data.random_shift=true .* data.fraction=1/2"):
        make_dm(tiny_data, random_shift=True, fraction="1/2")
    dm = make_dm(tiny_data)
    partial = dm.train_set.index[dm.train_set.index[:, 1] != 3]
    with pytest.raises(DataError, match=r"sim_.*h5: a random shift .* \[0, 1, 2, 4, 5, 6, 7\]"):
        CosmoDataset(dm.train_set.files, partial, np.zeros((8, 3)), shift_files=range(8))


def test_fewer_validation_samples_than_ranks_is_a_clear_error(tiny_data):
    with pytest.raises(DataError, match="8 validation samples .* for 9 ranks"):
        make_dm(tiny_data, world=9)


def test_loader_batches_have_contract_shapes(tiny_data):
    dm = make_dm(tiny_data, batch_size=4)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 1, 16, 16, 16) and x.dtype == torch.float32
    assert y.shape == (4, 3)


def test_workers_open_their_own_files(tiny_data):
    dm = make_dm(tiny_data, batch_size=8, num_workers=2, persistent_workers=False)
    batches = list(dm.train_dataloader())
    assert sum(len(b[0]) for b in batches) == 56
