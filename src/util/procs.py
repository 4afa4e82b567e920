"""Child processes that cannot outlive the process that started them."""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent: int | None = None, sig: int = signal.SIGKILL) -> None:
    """Ask Linux to send this process `sig` when its parent dies, even by SIGKILL (a no-op
    elsewhere). With `parent` (the pid the child expects as its parent): exit at once if that
    parent already died before the request took effect. SIGKILL suits a worker that has
    nothing to leave behind; a training rank gets SIGTERM, so that it can still record why it
    stopped."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, sig)
    except (OSError, AttributeError):
        return
    if parent is not None and os.getppid() != parent:
        os._exit(1)
