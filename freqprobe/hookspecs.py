"""The hooks freqprobe calls. Built-in components use exactly these hooks too.

Every ``register_*`` hook takes no arguments and returns one class or a list of classes;
each class carries a kebab-case ``name`` (the hatch shape). A plugin that needs hooks of
its own adds them with ``pm.add_hookspecs`` under names prefixed with ``<plugin>_``.

This module imports only pluggy at run time (the types below are for readers and type
checkers), so a plugin's hook module that imports ``hookimpl`` stays cheap to import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import pluggy

if TYPE_CHECKING:
    from pathlib import Path

    import click

    from .evaluators import Metric
    from .interfaces import Attack, DataSource, Decomposer, ModelAdapter, ModelSource, ProbeResult, RescalePolicy, Transform
    from .options import OptionParser
    from .probing import Probe, RunContext
    from .report import Report

hookspec = pluggy.HookspecMarker("freqprobe")
hookimpl = pluggy.HookimplMarker("freqprobe")



@hookspec
def register_decomposers() -> "type[Decomposer] | Sequence[type[Decomposer]] | None":
    """Return :class:`freqprobe.Decomposer` subclasses (spectral splits such as ``fft-radial``)."""


@hookspec
def register_probes() -> "type[Probe] | Sequence[type[Probe]] | None":
    """Return :class:`freqprobe.Probe` subclasses (experiments such as ``lfc-hfc``)."""


@hookspec
def register_model_sources() -> "type[ModelSource] | Sequence[type[ModelSource]] | None":
    """Return :class:`freqprobe.ModelSource` subclasses; ``name`` is the spec prefix (``timm`` in ``timm:resnet18``)."""


@hookspec
def register_adapters() -> "type[ModelAdapter] | Sequence[type[ModelAdapter]] | None":
    """Return :class:`freqprobe.ModelAdapter` subclasses, one per task (``classifier`` built in; a plugin adds a detector's).

    A model is wrapped in the adapter of its task: the task its source reports
    (``BuiltModel.info["task"]``, e.g. torchvision's detection models), else the one the probe
    and the data ask for (a detection probe on detection data wraps ``file.py:callable`` as a detector).
    """


@hookspec
def register_datasets() -> "type[DataSource] | Sequence[type[DataSource]] | None":
    """Return :class:`freqprobe.DataSource` subclasses; ``name`` is the data spec (``cifar10``, ``npz`` in ``npz:PATH``)."""


@hookspec
def register_rescale_policies() -> "type[RescalePolicy] | Sequence[type[RescalePolicy]] | None":
    """Return :class:`freqprobe.RescalePolicy` subclasses: how out-of-range component images are fed to a model."""


@hookspec
def register_metrics() -> "type[Metric] | Sequence[type[Metric]] | None":
    """Return :class:`freqprobe.Metric` subclasses (``accuracy`` and ``top5-accuracy`` built in)."""


@hookspec
def register_attacks() -> "type[Attack] | Sequence[type[Attack]] | None":
    """Return :class:`freqprobe.Attack` subclasses (``forward(images01, labels) -> adv01``; attacks never normalise)."""


@hookspec
def register_transforms() -> "type[Transform] | Sequence[type[Transform]] | None":
    """Return :class:`freqprobe.Transform` subclasses: model -> model rewrites such as first-layer kernel smoothing."""


@hookspec
def add_options(parser: "OptionParser") -> None:
    """Declare options of ``freqprobe run`` (and ``decompose``) with ``parser.add_option(...)`` (pytest's ``pytest_addoption``).

    The values reach the plugin's probe, attack or transform through the run's configuration
    (``ctx.config[dest]``) or, with ``key=``, as an option of the probe or decomposer they
    belong to; they are recorded in the manifest. A name the core or another plugin declares
    is refused at registration.
    """


@hookspec
def register_commands(cli: "click.Group") -> None:
    """Add click commands to the ``freqprobe`` group ``cli`` (a plugin's own command; the core's cannot be replaced)."""


@hookspec(firstresult=True)
def report_folder(folder: "Path", report: "Report") -> "str | None":
    """Return the HTML section of ``freqprobe report`` for ``folder`` when this plugin wrote it, else None.

    ``report`` (:class:`freqprobe.report.Report`) offers the page's pieces: tables, images,
    the manifest block, sub-folders (through this hook again) and the overlay of curves.
    The first implementation that recognises the folder wins (plugins before the built-ins).
    """


@hookspec
def report_result(result: "ProbeResult", context: "RunContext") -> None:
    """Broadcast: a probe finished with ``result`` (a :class:`freqprobe.ProbeResult`); ``context`` is the run context.

    Writers and loggers implement this; return values are ignored.
    """


@hookspec
def manifest_entries(context: "RunContext", result: "ProbeResult") -> "dict | None":
    """Return a dict of sections to add to a run's ``manifest.json`` (or None).

    ``context`` is the :class:`freqprobe.RunContext`, ``result`` the :class:`freqprobe.ProbeResult`.
    A section may not reuse a name the core writes (``model``, ``data``, ...): that is a PluginError.
    """
