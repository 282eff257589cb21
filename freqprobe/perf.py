"""Process-level performance settings.

Large fresh tensors on Linux/glibc come from ``mmap``: every call that allocates new output
tensors pays a page fault (and the kernel zeroing a page) for each 4 KiB it touches, and on the
decomposition of 10,000 CIFAR-sized images that costs more than the arithmetic (measured: 479 ms
per call with fresh outputs vs 179 ms with the allocator tuned or buffers reused; see
docs/benchmarks.md). :func:`tune_allocator` makes glibc serve and keep such blocks on its heap,
so freed outputs are reused without new page faults. The ``freqprobe`` command calls it at
start-up; notebooks and other tools may call it themselves. Set ``FREQPROBE_NO_MALLOC_TUNING=1``
to leave the allocator alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

#: glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

_tuned: bool | None = None


def tune_allocator(mmap_threshold: int = 1 << 30, trim_threshold: int = (1 << 31) - 1) -> bool:
    """Raise glibc's mmap and trim thresholds; returns whether the settings were applied.

    A no-op (returning False) off Linux, on non-glibc C libraries, or when
    ``FREQPROBE_NO_MALLOC_TUNING`` is set. Idempotent.
    """
    global _tuned
    if _tuned is not None:
        return _tuned
    _tuned = False
    if os.environ.get("FREQPROBE_NO_MALLOC_TUNING") or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _tuned = bool(mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold))) and bool(mallopt(_M_TRIM_THRESHOLD, int(trim_threshold)))
    return _tuned
