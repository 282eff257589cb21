"""Hook implementations of the freqprobe-filters plugin (entry point ``filters``)."""

from __future__ import annotations

import freqprobe

from .filters import ButterworthDecomposer, GaussianDecomposer


@freqprobe.hookimpl
def register_decomposers():
    return [GaussianDecomposer, ButterworthDecomposer]
