"""The hooks freqprobe calls. Built-in components use exactly these hooks too.

Every ``register_*`` hook takes no arguments and returns one class or a list of classes;
each class carries a kebab-case ``name`` (the hatch shape). A plugin that needs hooks of
its own adds them with ``pm.add_hookspecs`` under names prefixed with ``<plugin>_``.
"""

from __future__ import annotations

from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("freqprobe")
hookimpl = pluggy.HookimplMarker("freqprobe")


@hookspec
def register_decomposers() -> Any:
    """Return :class:`freqprobe.Decomposer` subclasses (spectral splits such as ``fft-radial``)."""


@hookspec
def register_probes() -> Any:
    """Return :class:`freqprobe.Probe` subclasses (experiments such as ``lfc-hfc``)."""


@hookspec
def register_model_sources() -> Any:
    """Return :class:`freqprobe.ModelSource` subclasses; ``name`` is the spec prefix (``timm`` in ``timm:resnet18``)."""


@hookspec
def register_adapters() -> Any:
    """Return :class:`freqprobe.ModelAdapter` subclasses, one per task (``classifier`` built in; ``detector`` from the COCO plugin).

    A model is wrapped in the adapter of its task: the task its source reports
    (``BuiltModel.info["task"]``, e.g. torchvision's detection models), else the one the probe
    and the data ask for (``coco-map`` on ``coco:`` data wraps ``file.py:callable`` as a detector).
    """


@hookspec
def register_datasets() -> Any:
    """Return :class:`freqprobe.DataSource` subclasses; ``name`` is the data spec (``cifar10``, ``npz`` in ``npz:PATH``)."""


@hookspec
def register_rescale_policies() -> Any:
    """Return :class:`freqprobe.RescalePolicy` subclasses: how out-of-range component images are fed to a model."""


@hookspec
def register_metrics() -> Any:
    """Return :class:`freqprobe.Metric` subclasses (``accuracy`` built in; ``coco-map`` from the detection plugin)."""


@hookspec
def register_attacks() -> Any:
    """Return :class:`freqprobe.Attack` subclasses (``forward(images01, labels) -> adv01``; attacks never normalise)."""


@hookspec
def register_transforms() -> Any:
    """Return :class:`freqprobe.Transform` subclasses: model -> model rewrites such as first-layer kernel smoothing."""


@hookspec
def register_commands(cli: Any) -> None:
    """Add click commands to the ``freqprobe`` group ``cli`` (e.g. a plugin's ``train``)."""


@hookspec
def report_result(result: Any, context: Any) -> None:
    """Broadcast: a probe finished with ``result`` (a :class:`freqprobe.ProbeResult`); ``context`` is the run context.

    Writers and loggers implement this; return values are ignored.
    """


@hookspec
def manifest_entries(context: Any, result: Any) -> Any:
    """Return a dict of sections to add to a run's ``manifest.json`` (or None).

    ``context`` is the :class:`freqprobe.RunContext`, ``result`` the :class:`freqprobe.ProbeResult`.
    A section may not reuse a name the core writes (``model``, ``data``, ...): that is a PluginError.
    """
