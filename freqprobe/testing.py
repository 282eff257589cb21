"""The plugin-testing kit: fixtures ``freqprobe_*`` and ``check_decomposer``/``check_attack``/``check_metric``/``check_evaluator``.

It lives in the top-level package :mod:`freqprobe_testing` (the pytest plugin, entry point ``freqprobe``
in ``pytest11``), so that pytest's start-up does not import torch; import it from here.
"""

from freqprobe_testing import check_attack, check_decomposer, check_evaluator, check_metric, make_classifier, make_images

__all__ = ["check_attack", "check_decomposer", "check_evaluator", "check_metric", "make_classifier", "make_images"]
