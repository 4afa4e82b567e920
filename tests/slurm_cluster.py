"""A real SLURM cluster on localhost for the tests: munged, slurmctld and two slurmd.

Everything lives in one temporary directory (config, state, spool, sockets, logs) on ports
picked free, so it touches no system SLURM. The two nodes are this host under two names that
resolve here (its hostname and `localhost`), so the ranks of a two-node job find rank 0. A
daemon that does not come up fails the test with its log: a machine like CI's must run these
tests, never skip them.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from src.training.launch import free_port

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "srun")
START_TIMEOUT_S = 60
CPUS_PER_NODE = 2
LOOPBACK = "127.0.0.1"


def missing_programs() -> list[str]:
    return [p for p in DAEMONS if shutil.which(p) is None and not Path("/usr/sbin", p).exists()]


def _program(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


class LocalSlurm:
    """`start()`, then run commands with `env`; `stop()` ends every daemon it started."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.conf = self.root / "slurm.conf"
        self.nodes = (socket.gethostname(), "localhost")
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self._pid_files: list[Path] = []

    def _write_conf(self) -> None:
        r = self.root
        for d in ("state", "log", "pmix", *(f"spool-{n}" for n in self.nodes)):
            (r / d).mkdir(parents=True, exist_ok=True)
        lines = [
            "ClusterName=saihtest", f"SlurmctldHost={self.nodes[0]}(127.0.0.1)",
            f"SlurmctldPort={free_port(LOOPBACK)}", "SlurmUser=root", "SlurmdUser=root",
            "AuthType=auth/munge", f"AuthInfo=socket={r / 'munge.sock'}", "CredType=cred/munge",
            f"StateSaveLocation={r / 'state'}", f"SlurmdSpoolDir={r}/spool-%n",
            f"SlurmctldPidFile={r / 'slurmctld.pid'}", f"SlurmdPidFile={r}/slurmd-%n.pid",
            f"SlurmctldLogFile={r / 'log/slurmctld.log'}", f"SlurmdLogFile={r}/log/slurmd-%n.log",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
            "SelectType=select/cons_tres", "SelectTypeParameters=CR_CPU",
            "JobAcctGatherType=jobacct_gather/none", "AccountingStorageType=accounting_storage/none",
            "MpiDefault=none", "ReturnToService=2", "SlurmdParameters=config_overrides",
            "SchedulerParameters=sched_interval=1", "MinJobAge=30",
        ]
        for name in self.nodes:
            lines.append(f"NodeName={name} NodeHostname={socket.gethostname()} NodeAddr=127.0.0.1 "
                         f"Port={free_port(LOOPBACK)} CPUs={CPUS_PER_NODE} RealMemory=4000 State=UNKNOWN")
        lines.append(f"PartitionName=debug Nodes={','.join(self.nodes)} Default=YES "
                     "MaxTime=INFINITE State=UP")
        self.conf.write_text("\n".join(lines) + "\n")
        # each step's PMIx directory under ours: job ids restart with every fresh cluster
        (r / "mpi.conf").write_text(f"PMIxCliTmpDirBase={r / 'pmix'}\n")

    def _daemon(self, *cmd: str, pid_file: Path) -> None:
        proc = subprocess.run(list(cmd), env=self.env, capture_output=True, text=True,
                              timeout=START_TIMEOUT_S)
        self._pid_files.append(pid_file)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): "
                               f"{proc.stderr}{self.logs()}")

    def start(self) -> LocalSlurm:
        self._write_conf()
        key = self.root / "munge.key"
        key.write_bytes(os.urandom(128))
        key.chmod(0o600)
        r = self.root
        self._daemon(_program("munged"), f"--key-file={key}", f"--socket={r / 'munge.sock'}",
                     f"--pid-file={r / 'munged.pid'}", f"--log-file={r / 'log/munged.log'}",
                     f"--seed-file={r / 'munge.seed'}", "--force", pid_file=r / "munged.pid")
        self._daemon(_program("slurmctld"), "-f", str(self.conf), pid_file=r / "slurmctld.pid")
        for name in self.nodes:
            self._daemon(_program("slurmd"), "-f", str(self.conf), "-N", name,
                         pid_file=r / f"slurmd-{name}.pid")
        self._wait_idle()
        return self

    def _wait_idle(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        out = ""
        while time.monotonic() < deadline:
            proc = self.run("sinfo", "-h", "-N", "-o", "%N %t")
            out = proc.stdout + proc.stderr
            states = [ln.split()[-1] for ln in proc.stdout.splitlines() if ln.strip()]
            if len(states) == len(self.nodes) and all(s == "idle" for s in states):
                return
            time.sleep(0.5)
        raise RuntimeError(f"the SLURM nodes did not become idle: {out}{self.logs()}")

    def run(self, *cmd: str, timeout: float = 60, extra_env: dict | None = None,
            **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(list(cmd), env={**self.env, **(extra_env or {})},
                              capture_output=True, text=True, timeout=timeout, **kwargs)

    def logs(self) -> str:
        parts = []
        for log in sorted((self.root / "log").glob("*.log")):
            parts.append(f"\n== {log}\n" + "\n".join(log.read_text().splitlines()[-30:]))
        return "".join(parts)

    def stop(self) -> None:
        """Cancel what is left, then end the daemons (newest first) by their pid files."""
        self.run("scancel", "--user=root", timeout=30)
        for pid_file in reversed(self._pid_files):
            try:
                pid = int(pid_file.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
            try:
                os.kill(pid, 15)
            except ProcessLookupError:
                continue
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
                time.sleep(0.1)
