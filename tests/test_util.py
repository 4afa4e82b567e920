"""The small shared helpers of src/util/: atomic writes, progress lines, fractions, cpuinfo."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import torch

from src.sim.mesh import split_subvolumes
from src.util import atomic, cpuinfo
from src.util.fractions import parse_fraction
from src.util.progress import Progress
from src.util.symmetry import mirror_images, periodic_crop


def test_atomic_write_leaves_the_old_file_when_the_writer_fails(tmp_path):
    target = tmp_path / "out.json"
    atomic.write_json_atomic(target, {"a": 1})
    with pytest.raises(RuntimeError), atomic.atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert target.read_text().strip().startswith("{") and '"a": 1' in target.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]  # temporary removed
    assert atomic.temporary_name(target).name == f"out.json.{os.getpid()}{atomic.TMP_SUFFIX}"


def test_progress_without_a_terminal_logs_plain_lines_with_the_rate(caplog):
    caplog.set_level(logging.INFO, logger="src.util.progress")
    with Progress(4, "simulating (pool)", "sim", interval_s=0.0, terminal=False) as bar:
        for _ in range(4):
            bar.advance()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 5  # one per item (interval 0) and one at the end
    assert lines[-1].startswith("simulating (pool): 4/4, ") and " sim/s, " in lines[-1]
    assert bar.rate() > 0


def test_progress_rate_is_this_runs_items_over_its_time(monkeypatch, caplog):
    clock = iter([100.0, 100.0, 110.0, 120.0, 120.0, 120.0])  # a fake clock: no real waiting
    monkeypatch.setattr("src.util.progress.time.monotonic", lambda: next(clock))
    caplog.set_level(logging.INFO, logger="src.util.progress")
    bar = Progress(8, "simulating (mpi)", "sim", interval_s=1e9, terminal=False)
    bar.advance(2)
    bar.advance(2)  # 4 items in the 20 s since the start
    bar.close()
    assert "4/8, 0.2 sim/s, 0:00:20 elapsed, ETA 0:00:20" in caplog.records[-1].getMessage()


def test_progress_under_mpi_or_slurm_logs_lines_even_on_a_terminal(monkeypatch):
    monkeypatch.setattr("sys.stderr.isatty", lambda: True, raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    with Progress(2, "x") as bar:  # Open MPI and SLURM logs look like a terminal
        assert bar._bar is None


def test_disabled_progress_logs_nothing(caplog):
    caplog.set_level(logging.INFO, logger="src.util.progress")
    with Progress(3, "x", enabled=False, terminal=False) as bar:
        bar.advance()
    assert not caplog.records


@pytest.mark.parametrize("text,value", [("1/32", 1 / 32), ("0.25", 0.25), (1, 1.0), (" 3/4 ", 0.75)])
def test_parse_fraction(text, value):
    assert parse_fraction(text) == value


@pytest.mark.parametrize("bad", ["abc", "1/0", True, None])
def test_parse_fraction_refuses(bad):
    with pytest.raises(ValueError, match="not a number or a ratio"):
        parse_fraction(bad)


def test_cpuinfo_reads_this_machine(monkeypatch, tmp_path):
    fake = tmp_path / "cpuinfo"
    fake.write_text("processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: a b\n"
                    "processor\t: 1\nmodel name\t: Test CPU\nflags\t\t: a b\n")
    monkeypatch.setattr(cpuinfo, "CPUINFO", fake)
    assert cpuinfo.cpu_model() == "Test CPU"
    assert cpuinfo.cpu_signature() == "flags\t\t: a b\nmodel name\t: Test CPU"
    monkeypatch.setattr(cpuinfo, "CPUINFO", tmp_path / "missing")
    assert cpuinfo.cpu_model()  # platform's answer


@pytest.mark.parametrize("n", [1, 8, 48])
def test_mirror_images_are_distinct_rearrangements_of_each_cube_the_cube_first(n):
    x = torch.arange(2 * 3 * 4 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4, 4)
    images = list(mirror_images(x, n))
    assert len(images) == n and torch.equal(images[0], x)
    assert len({tuple(im.flatten().tolist()) for im in images}) == n
    for im in images:  # the same voxels of each channel of each cube, only moved
        assert im.shape == x.shape
        assert torch.equal(im.flatten(2).sort().values, x.flatten(2).sort().values)
        # a cube's voxel at one corner stays at some corner (axes flipped or reordered)
        corners = im[:, :, [0, -1]][:, :, :, [0, -1]][:, :, :, :, [0, -1]]
        assert x[0, 0, 0, 0, 0] in corners[0, 0]


def test_mirror_images_refuses_another_count():
    with pytest.raises(ValueError, match="choose one of"):
        next(mirror_images(torch.zeros(1, 1, 2, 2, 2), 5))


@pytest.mark.parametrize("origin", [(0, 0, 0), (4, 0, 4), (6, 7, 5), (3, 1, 2), (12, 8, 10)])
def test_periodic_crop_is_the_region_of_the_tiled_box_wrapping_round(origin):
    box = torch.arange(2 * 8**3, dtype=torch.float32).reshape(2, 8, 8, 8)
    subs = split_subvolumes(box, 8).numpy()  # the generator's tiling, (i, j, k) row-major
    touched = []

    def read_sub(k):
        touched.append(k)
        return subs[k]

    crop = periodic_crop(read_sub, 2, origin, 4)
    rolled = np.roll(box.numpy(), [-o for o in origin], axis=(1, 2, 3))
    assert np.array_equal(crop, rolled[:, :4, :4, :4])
    # only the sub-volumes the region touches are read: 1 at a corner, 8 inside no face
    aligned = sum(o % 4 == 0 for o in origin)
    assert len(touched) == len(set(touched)) == 2 ** (3 - aligned)
