"""Process-level performance settings.

:func:`prime_heap` (called by the evaluation loop on the CPU) frees one 31 MiB block, which is
what glibc's own *dynamic* mmap threshold waits for: from then on, blocks up to that size (a
model's activation tensors) come from the heap and are reused instead of being mapped, faulted
in and zeroed afresh on every forward pass. It calls no ``mallopt``; any program that frees a
tensor of that size gets the same. Measured: ResNet-20 lfc-hfc on 2,000 images from Python,
10.2 s without it, 7.2 s with it, the same as the command line (docs/benchmarks.md).

Large fresh tensors on Linux/glibc come from ``mmap``: every call that allocates new output
tensors pays a page fault (and the kernel zeroing a page) for each 4 KiB it touches, and on the
decomposition of 10,000 CIFAR-sized images that costs more than the arithmetic (measured: 479 ms
per call with fresh outputs vs 179 ms with the allocator tuned or buffers reused; see
docs/benchmarks.md). freqprobe itself avoids fresh outputs where it owns them (the evaluation
loop and ``freqprobe decompose`` reuse their buffers from batch to batch). :func:`tune_allocator`
is an opt-in for programs that allocate fresh large outputs themselves: it makes glibc serve and
keep such blocks on its heap (``mallopt``, process-wide, for good). freqprobe never calls it on
its own. Set ``FREQPROBE_NO_MALLOC_TUNING=1`` to make it a no-op.
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


_primed = False


def prime_heap() -> None:
    """Free one block just under glibc's DEFAULT_MMAP_THRESHOLD_MAX (32 MiB) once per process.

    glibc raises its mmap threshold (and trim threshold, to twice that) to the size of a freed
    mmapped block up to 32 MiB. Until something does, every tensor over 128 KiB is a fresh mmap
    whose pages fault in on first touch. A no-op after the first call, off Linux, and with
    ``FREQPROBE_NO_HEAP_PRIMING=1`` (for measuring what it changes).
    """
    global _primed
    if _primed or not sys.platform.startswith("linux") or os.environ.get("FREQPROBE_NO_HEAP_PRIMING"):
        return
    _primed = True
    import torch

    block = torch.empty((31 << 20,), dtype=torch.uint8)
    block.fill_(0)
    del block
