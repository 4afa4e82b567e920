"""Keeping freed host memory (speed.malloc_keep_mib): the setting's effect, its config path and
its errors."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from src.errors import MallocConfigError
from src.perf.host_malloc import MAX_BLOCK_MIB, keep_freed_memory
from src.training import build as training
from tests.conftest import ROOT, compose_cfg

glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")

# In a fresh process (the setting cannot be undone), steps like a training step's: three 48 MiB
# activations allocated, filled and freed. Printed: the page faults of the tenth step (kept,
# the heap settles within 2-5 steps here: glibc's 64-byte-aligned allocations do not always
# fit the block freed by the same request until free blocks have coalesced).
_FAULTS = """
import resource, sys, torch
from src.perf.host_malloc import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory(64)

def step():
    acts = [torch.empty(48 << 18).fill_(1.0) for _ in range(3)]
    del acts

for _ in range(9):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _tenth_step_faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", _FAULTS, mode], cwd=ROOT, check=True,
                         capture_output=True, text=True)
    return int(out.stdout.split()[-1])


@glibc_only
def test_kept_blocks_are_not_page_faulted_in_again():
    pages = 3 * (48 << 20) // 4096
    default, kept = _tenth_step_faults("default"), _tenth_step_faults("keep")
    # glibc's default unmaps each freed 48 MiB block and maps it afresh: every page faults
    # (fewer if the kernel backs them with huge pages); kept, the heap blocks are reused
    assert kept < 0.01 * pages
    assert default > kept


@pytest.mark.parametrize("bad", [0, -1, MAX_BLOCK_MIB + 1, "1g", 1.5, True])
def test_bad_setting_is_one_clear_error(bad):
    with pytest.raises(MallocConfigError, match=r"speed.malloc_keep_mib: expected an integer"):
        keep_freed_memory(bad)


def test_cpu_speed_settings_apply_it(monkeypatch):
    seen = []
    monkeypatch.setattr(training, "keep_freed_memory", seen.append)
    speed = compose_cfg("train", ["trainer=cpu"]).speed
    assert speed.malloc_keep_mib == 1024
    training.apply_speed_settings(speed)
    assert seen == [1024]
    speed.malloc_keep_mib = None  # null: the C library's default, nothing called
    training.apply_speed_settings(speed)
    assert seen == [1024]


def test_bad_setting_stops_a_training_job_before_it_starts(train_cfg, tmp_path):
    from train import run

    with pytest.raises(MallocConfigError, match="speed.malloc_keep_mib"):
        run(train_cfg("speed.malloc_keep_mib=-1"))
    assert not (tmp_path / "job" / "checkpoints").exists()


class _FakeLibc:
    """A C library whose mallopt accepts (1) or refuses (0) every setting; `glibc` adds the
    glibc-only symbol the module checks for."""

    def __init__(self, answer: int, glibc: bool):
        self.calls = []
        self.mallopt = lambda *args: self.calls.append(args) or answer
        if glibc:
            self.gnu_get_libc_version = object()


@pytest.mark.parametrize("answer,glibc,expected", [(1, True, True), (0, True, False),
                                                   (1, False, False)])
def test_refused_or_foreign_libc_reports_false(monkeypatch, caplog, answer, glibc, expected):
    from src.perf import host_malloc

    fake = _FakeLibc(answer, glibc)
    monkeypatch.setattr(host_malloc.ctypes, "CDLL", lambda name: fake)
    with caplog.at_level("INFO", logger=host_malloc.__name__):
        assert keep_freed_memory(64) is expected
    # glibc: both thresholds asked for, even when the first is refused; elsewhere none
    assert len(fake.calls) == (2 if glibc else 0)
    if glibc and not answer:
        assert "glibc refused speed.malloc_keep_mib=64" in caplog.text
    if not glibc:
        assert "not glibc" in caplog.text
