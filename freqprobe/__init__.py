"""freqprobe: how image models rely on low- and high-frequency components of their inputs.

Implements Wang et al., "High-frequency Component Helps Explain the Generalization of
Convolutional Neural Networks" (CVPR 2020). Images are N×C×H×W float tensors in [0, 1]
everywhere; only model adapters normalise.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import FreqprobeError, IncompatibleError, ModelError, PluginError, PluginWarning, UnknownNameError, UserFacingError
from .hookspecs import hookimpl, hookspec
from .interfaces import (
    Attack,
    Batch,
    BuiltModel,
    DataSource,
    Decomposer,
    Metric,
    ModelAdapter,
    ModelSource,
    Probe,
    ProbeResult,
    RescalePolicy,
    RunContext,
    Transform,
    Variant,
    VariantSource,
)
from .perf import tune_allocator
from .plugins import get_plugin_manager
from .registry import collect, get_class, list_entries
from .engine import DecomposerSource, OriginalSource, evaluate
from .runner import RunSpec, build_model, decompose, get_decomposer, open_data, run

__all__ = [
    "__version__",
    "Attack",
    "Batch",
    "BuiltModel",
    "DataSource",
    "Decomposer",
    "FreqprobeError",
    "IncompatibleError",
    "Metric",
    "ModelAdapter",
    "ModelError",
    "ModelSource",
    "PluginError",
    "PluginWarning",
    "Probe",
    "ProbeResult",
    "RescalePolicy",
    "RunContext",
    "Transform",
    "UnknownNameError",
    "Variant",
    "VariantSource",
    "UserFacingError",
    "build_model",
    "collect",
    "DecomposerSource",
    "OriginalSource",
    "RunSpec",
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
    "tune_allocator",
]
