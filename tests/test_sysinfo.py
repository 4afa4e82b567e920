"""available_memory_bytes against fake /proc and /sys/fs/cgroup trees."""

from pathlib import Path

import pytest

from src.perf.system import available_memory_bytes

GiB = 1 << 30
V1_NO_LIMIT = "9223372036854771712"  # LONG_MAX rounded to a page, as the kernel writes it


def tree(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")


def available(tmp_path, cgroup_files, self_cgroup, mem_available=8 * GiB):
    meminfo = f"MemTotal: 99999999 kB\nMemAvailable: {mem_available // 1024} kB"
    tree(tmp_path / "proc", {"meminfo": meminfo, "self/cgroup": self_cgroup})
    tree(tmp_path / "cg", cgroup_files)
    return available_memory_bytes(cgroup_root=tmp_path / "cg", proc=tmp_path / "proc")


V2_LIMITED = {"cgroup.controllers": "cpu memory", "job/memory.max": str(4 * GiB),
              "job/memory.current": str(3 * GiB),
              "job/memory.stat": f"anon 1\ninactive_file {GiB // 2}"}


@pytest.mark.parametrize("cgroup_files, self_cgroup, expected", [
    # v2 limit: limit - current + reclaimable (inactive) page cache
    (V2_LIMITED, "0::/job", 4 * GiB - 3 * GiB + GiB // 2),
    # a SLURM step without its own limit, inside a job with one: the ancestor's counts
    ({**V2_LIMITED, "job/step/memory.max": "max", "job/step/memory.current": "5"},
     "0::/job/step", GiB + GiB // 2),
    # a tighter limit below a looser one
    ({**V2_LIMITED, "job/step/memory.max": str(GiB), "job/step/memory.current": str(GiB // 4)},
     "0::/job/step", GiB - GiB // 4),
    # a container: its own cgroup at the root, /proc naming a path the container cannot see
    ({"cgroup.controllers": "memory", "memory.max": str(2 * GiB), "memory.current": str(GiB)},
     "0::/docker/abc", GiB),
    # v2 "max": no limit, MemAvailable decides
    ({"cgroup.controllers": "memory", "job/memory.max": "max", "job/memory.current": str(GiB)},
     "0::/job", 8 * GiB),
    # v1 (hybrid: a "0::" line as well), limit under the memory controller's hierarchy
    ({"memory/memory.limit_in_bytes": V1_NO_LIMIT, "memory/memory.usage_in_bytes": str(9 * GiB),
      "memory/slurm/job_1/memory.limit_in_bytes": str(2 * GiB),
      "memory/slurm/job_1/memory.usage_in_bytes": str(GiB),
      "memory/slurm/job_1/memory.stat": f"inactive_file 5\ntotal_inactive_file {GiB // 4}"},
     "4:memory:/slurm/job_1\n1:cpu,cpuacct:/\n0::/", GiB + GiB // 4),
    # v1 without a limit: huge values mean none
    ({"memory/memory.limit_in_bytes": V1_NO_LIMIT, "memory/memory.usage_in_bytes": str(GiB)},
     "4:memory:/", 8 * GiB),
    # no cgroup files at all
    ({}, "", 8 * GiB),
], ids=["v2", "v2-ancestor", "v2-nested", "v2-container", "v2-max", "v1", "v1-none", "none"])
def test_cgroup_limit_caps_available_memory(tmp_path, cgroup_files, self_cgroup, expected):
    assert available(tmp_path, cgroup_files, self_cgroup) == expected


def test_host_memory_caps_a_loose_cgroup_limit(tmp_path):
    assert available(tmp_path, V2_LIMITED, "0::/job", mem_available=GiB) == GiB


def test_over_the_limit_is_no_room(tmp_path):
    over = {**V2_LIMITED, "job/memory.current": str(5 * GiB), "job/memory.stat": "inactive_file 0"}
    assert available(tmp_path, over, "0::/job") == 0
