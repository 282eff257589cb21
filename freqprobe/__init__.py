"""freqprobe: how image models rely on low- and high-frequency components of their inputs.

Implements Wang et al., "High-frequency Component Helps Explain the Generalization of
Convolutional Neural Networks" (CVPR 2020). Images are N×C×H×W float tensors in [0, 1]
everywhere; only model adapters normalise.

Everything a user or a plugin needs is importable from here (``freqprobe.__all__``), and a
plugin's second namespace is :mod:`freqprobe.plugin`; what is in neither may change. The base
classes, the hook markers and the errors import without torch; the functions that compute
(``run``, ``evaluate``, ``decompose``...) load it when first used.
"""

from __future__ import annotations

from typing import Any

from .errors import (FreqprobeError, IncompatibleError, ModelError, NonFiniteOutputs, PluginError, PluginWarning,
                     StopRequested, UnknownNameError, UserFacingError)
from .evaluators import EvalStep, Evaluator, Metric
from .hookspecs import hookimpl, hookspec
from .interfaces import (Attack, Batch, BuiltModel, ClassifierAdapter, DataSource, Decomposer, ModelAdapter, ModelSource,
                         ProbeResult, RescalePolicy, SourceBatch, Transform, Variant, VariantSource)
from .options import RunConfig
from .plugins import collect, get_class, get_plugin_manager, list_entries
from .probing import Probe, RunContext, Services
from .version import __version__

#: names loaded on first use (they import torch): name -> module
_LAZY = {
    "BandSource": "sources",
    "DecomposerSource": "sources",
    "OriginalSource": "sources",
    "evaluate": "engine",
    "build_model": "runner",
    "decompose": "runner",
    "get_decomposer": "runner",
    "open_data": "runner",
    "run": "runner",
    "run_study": "runner",
    "tune_allocator": "perf",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'freqprobe' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "__version__",
    "Attack",
    "Batch",
    "BuiltModel",
    "ClassifierAdapter",
    "DataSource",
    "Decomposer",
    "BandSource",
    "DecomposerSource",
    "EvalStep",
    "Evaluator",
    "FreqprobeError",
    "IncompatibleError",
    "Metric",
    "ModelAdapter",
    "ModelError",
    "ModelSource",
    "NonFiniteOutputs",
    "OriginalSource",
    "PluginError",
    "PluginWarning",
    "Probe",
    "ProbeResult",
    "RescalePolicy",
    "RunConfig",
    "RunContext",
    "Services",
    "SourceBatch",
    "StopRequested",
    "Transform",
    "UnknownNameError",
    "UserFacingError",
    "Variant",
    "VariantSource",
    "build_model",
    "collect",
    "decompose",
    "evaluate",
    "get_class",
    "get_decomposer",
    "get_plugin_manager",
    "hookimpl",
    "hookspec",
    "list_entries",
    "open_data",
    "run",
    "run_study",
    "tune_allocator",
]
