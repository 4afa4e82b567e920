"""torchrun with two "nodes" on loopback, each with its own output dir (as on a cluster with
node-local dirs): the job trains once, and its rerun is one decision for both ranks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from src.training.launch import free_port
from tests.conftest import ROOT
from tests.test_sweep import QUIET

TORCHRUN = str(Path(sys.executable).parent / "torchrun")
RUN_TIMEOUT_S = 300


def _two_nodes(tiny_data, tmp_path) -> list[str]:
    """Both nodes' torchrun, as docs/scaling.md shows it; returns each node's output."""
    port = free_port("127.0.0.1")
    procs = []
    for node in (0, 1):
        cmd = [TORCHRUN, "--nnodes", "2", "--nproc-per-node", "1", "--node-rank", str(node),
               "--master-addr", "127.0.0.1", "--master-port", str(port),
               "train.py", "trainer=ddp_cpu", "trainer.num_nodes=2", f"data.dir={tiny_data}",
               f"hydra.run.dir={tmp_path / f'node{node}'}", "launch.timeout_s=120", *QUIET]
        procs.append(subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outs = []
    try:
        for proc in procs:
            outs.append(proc.communicate(timeout=RUN_TIMEOUT_S)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert [p.returncode for p in procs] == [0, 0], "\n".join(outs)[-5000:]
    return outs


def test_two_node_torchrun_trains_once_and_its_rerun_skips_on_both_ranks(tiny_data, tmp_path):
    first = _two_nodes(tiny_data, tmp_path)
    saved = json.loads((tmp_path / "node0" / "metrics.json").read_text())
    assert (saved["config"]["num_nodes"], saved["config"]["world_size"]) == (2, 2)
    assert saved["config"]["emulated"] is False
    assert not (tmp_path / "node1" / "metrics.json").exists()  # rank 0 writes it
    # only the rank that wrote metrics.json prints its path
    assert f"metrics: {tmp_path / 'node0' / 'metrics.json'}" in first[0]
    assert "metrics:" not in first[1]

    # node 0 holds the finished result, node 1 does not: rank 0's verdict holds for both
    stamp = (tmp_path / "node0" / "metrics.json").stat().st_mtime_ns
    again = _two_nodes(tiny_data, tmp_path)
    assert all("already complete" in out for out in again), "\n".join(again)[-5000:]
    assert (tmp_path / "node0" / "metrics.json").stat().st_mtime_ns == stamp
