"""freqprobe-filters: smooth-edged radial frequency filters (``gaussian``, ``butterworth``) as freqprobe decomposers.

An example third-party plugin: installed with pip, found through its ``freqprobe`` entry point
(``filters = "freqprobe_filters.hooks"``).
"""

from .filters import ButterworthDecomposer, GaussianDecomposer, RadialFilterDecomposer

__version__ = "0.1.0"
__all__ = ["ButterworthDecomposer", "GaussianDecomposer", "RadialFilterDecomposer", "__version__"]
