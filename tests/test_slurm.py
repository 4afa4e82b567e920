"""Against a real SLURM on localhost (tests/slurm_cluster.py): the node sweep through
`hydra/launcher=slurm`, jobs SLURM cannot start, and generate.py under srun with and
without PMIx. docs/scaling.md shows these commands."""

from __future__ import annotations

import json
import sys

import pytest

from src.sim.store import read_manifest
from tests.conftest import ROOT
from tests.slurm_cluster import LocalSlurm, missing_programs
from tests.test_generate import SHRINK
from tests.test_sweep import QUIET

# the job's bounds: a test that goes wrong fails, it never waits forever
SWEEP_TIMEOUT_S = 420


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    missing = missing_programs()
    if missing:  # CI installs them (.ci/run); a machine like CI's must not skip these tests
        pytest.fail(f"SLURM programs missing: {missing}; install Debian's slurmctld slurmd "
                    "slurm-client munge libpmix-dev (.ci/run does)")
    cluster = LocalSlurm(tmp_path_factory.mktemp("slurm"))
    try:
        yield cluster.start()
    finally:
        cluster.stop()


def _train(slurm, *args):
    cmd = [sys.executable, "train.py", "-m", "hydra/launcher=slurm", *args]
    return slurm.run(*cmd, cwd=ROOT, timeout=SWEEP_TIMEOUT_S)


def _job(sweep, j) -> dict:
    return json.loads((sweep / str(j) / "metrics.json").read_text())


def test_node_sweep_gives_each_job_its_nodes_and_reruns_skip(slurm, tiny_data, tmp_path):
    sweep = tmp_path / "sweep"
    args = [f"data.dir={tiny_data}", "trainer=ddp_cpu", "trainer.num_nodes=1,2,4",
            "hydra.launcher.poll_s=1", f"hydra.sweep.dir={sweep}", *QUIET]
    proc = _train(slurm, *args)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out  # job 2 asks for 4 nodes of a 2-node cluster...
    for j, nodes in ((0, 1), (1, 2)):  # ...and the others ran, each with its own nodes
        config = _job(sweep, j)["config"]
        assert (config["num_nodes"], config["world_size"], config["emulated"]) == (nodes, nodes, False)
    failed = _job(sweep, 2)
    assert failed["status"] == "failed" and "PartitionConfig" in failed["error"], failed
    assert "SchedulerError" in (sweep / "2" / "error.txt").read_text()
    outs = sorted((sweep / ".submitit").glob("*/*_log.out"))
    printed = [ln for log in outs for ln in log.read_text().splitlines() if ln.startswith("metrics:")]
    assert sorted(printed) == [f"metrics: {sweep / str(j) / 'metrics.json'}" for j in (0, 1)]

    stamp = (sweep / "1" / "metrics.json").stat().st_mtime_ns
    logs = set((sweep / ".submitit").glob("*/*_log.*"))
    again = _train(slurm, *args)  # the same sweep again: finished jobs are skipped
    assert again.returncode != 0
    assert (sweep / "1" / "metrics.json").stat().st_mtime_ns == stamp
    rerun = [p.read_text() for p in (sweep / ".submitit").glob("*/*_log.*") if p not in logs]
    skipped = sum(text.count(f"skipping {sweep / '1'}:") for text in rerun)
    assert skipped == 2, "both ranks of the finished two-node job skip it"


def test_job_pending_past_its_limit_is_reported_and_cancelled(slurm, tiny_data, tmp_path):
    sweep = tmp_path / "sweep"
    proc = _train(slurm, f"data.dir={tiny_data}", "trainer=cpu", "seed=1",
                  "+hydra.launcher.additional_parameters.begin=now+1hour",
                  "hydra.launcher.pending_limit_s=2", "hydra.launcher.poll_s=1",
                  f"hydra.sweep.dir={sweep}", *QUIET)
    assert proc.returncode != 0
    error = _job(sweep, 0)["error"]
    assert "BeginTime" in error and "pending_limit_s=2" in error, error
    assert slurm.run("squeue", "-h").stdout.strip() == ""  # cancelled, not left behind


def _generate(slurm, tmp_path, *srun_args):
    data_dir = tmp_path / "data"
    cmd = ["srun", *srun_args, sys.executable, "generate.py", *SHRINK, "campaign.n_sims=3",
           f"paths.data_dir={data_dir}", f"hydra.run.dir={tmp_path / 'run'}"]
    return slurm.run(*cmd, cwd=ROOT, timeout=SWEEP_TIMEOUT_S,
                     extra_env={"OMP_NUM_THREADS": "1"}), data_dir


def test_generate_under_srun_with_pmix_is_one_mpi_campaign(slurm, tmp_path):
    proc, data_dir = _generate(slurm, tmp_path, "--mpi=pmix", "-N1", "-n2")
    assert proc.returncode == 0, proc.stdout + proc.stderr + slurm.logs()
    assert proc.stdout.count("3 files") == 1 and "mpi" in proc.stdout
    run = read_manifest(data_dir)["campaign_run"]
    assert (run["mode"], run["ranks"]) == ("mpi", 2) and run["hosts"]
    assert "parameter server" in proc.stdout + proc.stderr
    assert "rank 1 on" in proc.stdout + proc.stderr


def test_generate_under_srun_without_pmi_is_one_clear_error(slurm, tmp_path):
    proc, data_dir = _generate(slurm, tmp_path, "-N1", "-n2")
    assert proc.returncode != 0
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("generate.py: error:")]
    assert len(errors) == 2 and all("srun --mpi=pmix" in ln for ln in errors), proc.stderr
    assert "campaign.mpi=false" in errors[0]
    assert not list(data_dir.glob("sim_*.h5"))  # no campaign ran at all
