"""Keep freed host memory for reuse instead of handing it back to the OS (glibc only).

glibc's malloc serves every block above 32 MiB with its own mmap and unmaps it on free, and
trims freed memory at the top of its heap: the next activation of that size is page-faulted
in again. A training step frees and reallocates the same large activations every time, so
at 32^3 and above a CPU step spends much of its time in page faults (what keeping them buys:
benchmarks/host_malloc_bench.py, docs/benchmarks.md "Kept host memory"). Raising
M_MMAP_THRESHOLD to `max_block_mib` serves blocks up to that size from the heap, and raising
M_TRIM_THRESHOLD to 2 GiB keeps freed heap memory for reuse, as a caching allocator would: the
process holds its peak working set until it exits. The heap settles within a few steps (torch's
64-byte-aligned requests do not always fit the block the same request freed until free blocks
have coalesced); the peak resident memory is measured by benchmarks/host_malloc_bench.py.
"""

from __future__ import annotations

import ctypes
import logging

from src.errors import MallocConfigError

log = logging.getLogger(__name__)

# mallopt() parameters, from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# mallopt takes an int: the largest threshold it can express, in MiB
MAX_BLOCK_MIB = (2**31 - 1) >> 20


def keep_freed_memory(max_block_mib: int) -> bool:
    """Ask glibc to keep freed blocks up to `max_block_mib` MiB for reuse. Returns whether
    glibc accepted both settings (False where the C library is not glibc, e.g. macOS or musl,
    or where this glibc refuses the size; a warning says so). Under a preloaded allocator
    (jemalloc, tcmalloc) glibc accepts them but that allocator's own policy applies."""
    if isinstance(max_block_mib, bool) or not isinstance(max_block_mib, int) \
            or not 1 <= max_block_mib <= MAX_BLOCK_MIB:
        raise MallocConfigError(
            f"speed.malloc_keep_mib: expected an integer in [1, {MAX_BLOCK_MIB}] MiB (or null "
            f"for the C library's default), got {max_block_mib!r}")
    try:
        libc = ctypes.CDLL(None)  # the symbols already loaded into this process
        mallopt = libc.mallopt
        # glibc's own version query: absent from other C libraries that may export mallopt
        libc.gnu_get_libc_version  # noqa: B018
    except (OSError, AttributeError):
        log.info("not glibc: freed host memory handling left to the C library")
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # trimming looks at all the free memory on top of the heap, not one block: only beyond
    # the most mallopt can express (2 GiB) is it given back
    accepted = [bool(mallopt(_M_MMAP_THRESHOLD, max_block_mib << 20)),
                bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))]
    if not all(accepted):
        log.warning("glibc refused speed.malloc_keep_mib=%d (mmap threshold accepted: %s, trim "
                    "threshold accepted: %s); older glibc caps the mmap threshold at 32 MiB",
                    max_block_mib, accepted[0], accepted[1])
    return all(accepted)
