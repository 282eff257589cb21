"""Probes and what they run with: the immutable :class:`RunContext` and the run's explicit :class:`Services`.

A probe is a declaration — variant sources, evaluators, an optional model sweep and derived
rows — over the one evaluation loop (:mod:`freqprobe.engine`); it does not loop over data itself.
"""

from __future__ import annotations

import dataclasses
from abc import ABC
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping, Sequence

from .evaluators import Evaluator, as_evaluator
from .interfaces import ProbeResult, VariantSource, check_declared_options
from .options import RunConfig

if TYPE_CHECKING:
    from pathlib import Path

    from .interfaces import DataSource, Decomposer, ModelAdapter, RescalePolicy


@dataclasses.dataclass(frozen=True)
class Services:
    """What a run lends its evaluation besides options: explicit objects, never read with ``getattr``.

    ``pm``: the plugin manager; ``progress``: a callback receiving counts of evaluated samples;
    ``journal``: the run's :class:`freqprobe.journal.RunJournal` (streamed ``samples.csv``,
    checkpoints; None for a bare evaluation); ``dist``: the torchrun job
    (:class:`freqprobe.distributed.Dist`) or None; ``out_dir``: the folder writers write into (the
    run's unfinished folder; None when nothing is written); ``say``: prints a line for the user (the
    command line's announcements; None: the line is only logged, at INFO).
    """

    pm: Any = None
    progress: Callable[[int], None] | None = None
    journal: Any = None
    dist: Any = None
    out_dir: "Path | None" = None
    say: Callable[[str], None] | None = None


@dataclasses.dataclass(frozen=True)
class RunContext:
    """Everything a probe, its sources and its evaluators need: built and checked before any compute; immutable.

    The parts (adapter, data, decomposer and its checked ``params``, rescale policy, metric
    classes, device), the run's :class:`~freqprobe.options.RunConfig` (every option's value),
    the :class:`Services` and the probe's checked ``options``. ``ctx.replace(...)`` makes a
    changed copy (a model sweep evaluates each transform with one).
    """

    adapter: "ModelAdapter"
    data: "DataSource"
    decomposer: "Decomposer"
    params: tuple
    rescale: "RescalePolicy"
    metrics: tuple = ()
    device: Any = None
    config: RunConfig = dataclasses.field(default_factory=RunConfig)
    services: Services = dataclasses.field(default_factory=Services)
    #: label of the model transforms applied (the ``transform`` column)
    transform: str = ""
    #: the probe's options (``--probe-opt KEY=VALUE`` over the probe's declared defaults)
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def create(cls, adapter: "ModelAdapter", data: "DataSource", decomposer: "Decomposer", params: Sequence[Any],
               rescale: "RescalePolicy", *, metrics: Sequence[type] = (), device: Any = None, transform: str = "",
               options: Mapping[str, Any] | None = None, pm: Any = None, progress: Callable[[int], None] | None = None,
               journal: Any = None, dist: Any = None, out_dir: "Path | None" = None, **config: Any) -> "RunContext":
        """A context from its parts; keywords not named here are configuration values (``batch_size=500``...)."""
        if device is None:
            device = adapter.device
        return cls(adapter=adapter, data=data, decomposer=decomposer, params=tuple(params), rescale=rescale,
                   metrics=tuple(metrics), device=device, config=RunConfig(config),
                   services=Services(pm=pm, progress=progress, journal=journal, dist=dist, out_dir=out_dir),
                   transform=transform, options=dict(options or {}))

    def replace(self, **changes: Any) -> "RunContext":
        """A copy with ``changes`` (fields; ``out_dir=``/``journal=``... change the services)."""
        svc = {k: changes.pop(k) for k in [k for k in changes if k in _SERVICE_FIELDS]}
        if svc:
            changes["services"] = dataclasses.replace(self.services, **svc)
        return dataclasses.replace(self, **changes)

    # -- the configuration, as attributes (what the engine and plugins read)
    def _cfg(self, key: str, default: Any = None) -> Any:
        v = self.config.get(key, default)
        return default if v is None else v

    @property
    def batch_size(self) -> int:
        return int(self._cfg("batch_size", 128))

    @property
    def limit(self) -> int | None:
        return self.config.get("limit")

    @property
    def seed(self) -> int:
        return int(self._cfg("seed", 0))

    @property
    def precision(self) -> str:
        return str(self._cfg("precision", "fp32"))

    @property
    def channels_last(self) -> bool | None:
        return self.config.get("channels_last")

    @property
    def forward_batch(self) -> int | None:
        return self.config.get("forward_batch")

    @property
    def workers(self) -> int | None:
        """``--workers``: worker processes reading the data (None: auto; freqprobe.loading)."""
        return self.config.get("workers")

    @property
    def allow_nonfinite(self) -> bool:
        return bool(self._cfg("allow_nonfinite", False))

    # -- the services, as attributes
    @property
    def pm(self) -> Any:
        return self.services.pm

    @property
    def progress(self) -> Callable[[int], None] | None:
        return self.services.progress

    @property
    def journal(self) -> Any:
        return self.services.journal

    @property
    def dist(self) -> Any:
        return self.services.dist

    @property
    def out_dir(self) -> "Path | None":
        return self.services.out_dir

    def announce(self, line: str) -> None:
        """Tell the user one line (a probe's cost up front...): printed by the command line, else logged at INFO."""
        if self.services.say is not None:
            self.services.say(line)
        else:
            import logging

            logging.getLogger("freqprobe").info(line)

    @property
    def shard(self) -> tuple[int, int] | None:
        d = self.services.dist
        return (d.rank, d.world) if d is not None else self.config.get("shard")

    def evaluate(self, sources: Sequence[VariantSource], *, probe: str, evaluators: Sequence[Any] = (),
                 observers: Sequence[Any] = (), **kw: Any) -> ProbeResult:
        """Run the one evaluation loop (:func:`freqprobe.engine.evaluate`) over ``sources``."""
        from .engine import evaluate  # the loop imports torch: loaded when a probe runs, not with the base classes

        return evaluate(self, sources, probe=probe, evaluators=[*evaluators, *observers], **kw)


_SERVICE_FIELDS = {f.name for f in dataclasses.fields(Services)}


class Probe(ABC):
    """An experiment: a declaration of the image variants to evaluate, the evaluators, and derived rows.

    :meth:`run` hands :meth:`sources` and :meth:`evaluators` to the one evaluation loop (once per
    model transform of :meth:`model_sweep`), then lets :meth:`derive` add rows computed from the
    result (the HFC-reliance score); override those, not :meth:`run`. ``options`` declares what
    ``--probe-opt KEY=VALUE`` may set, with defaults (a value is converted to the default's type).
    """

    name: ClassVar[str]
    requires: ClassVar[Mapping[str, Any]] = {"task": "classification"}
    options: ClassVar[Mapping[str, Any]] = {}
    #: the metrics computed when the user names none (``--metric``)
    default_metrics: ClassVar[tuple[str, ...]] = ("accuracy",)
    #: per decomposer name, the parameters used when the user gives none (else the decomposer's defaults)
    default_params: ClassVar[Mapping[str, tuple]] = {}
    #: the metrics worth a panel of ``accuracy.png`` when there are many (e.g. a detection probe's AP, AP50); empty: all
    plot_metrics: ClassVar[tuple[str, ...]] = ()
    #: whether the run keeps a per-sample table (``samples.csv``); False for a probe of very many variants (a heat map)
    samples: ClassVar[bool] = True

    def __init__(self, **options: Any) -> None:
        self.opts = self.check_options(options)

    @classmethod
    def check_options(cls, given: Mapping[str, Any]) -> dict[str, Any]:
        """The declared defaults updated with ``given``; unknown keys and bad types raise UserFacingError."""
        return check_declared_options("probe", cls.name, cls.options, given)

    def check_params(self, decomposer: Any, given: list | None) -> tuple:
        """The run's parameters from ``--radii``/``--ranks`` as given (None: not given), checked before anything loads.

        Default: the probe's :attr:`default_params` for this decomposer (else the decomposer's own) through the
        decomposer's :meth:`~freqprobe.Decomposer.check_params`. A probe whose parameters mean something else
        (the band edges of ``bands``, where 0 is allowed) overrides it.
        """
        if given is None:
            default = (self.default_params or {}).get(decomposer.name)
            given = list(default) if default else None
        return tuple(decomposer.check_params(given))

    def sources(self, ctx: RunContext) -> list[VariantSource]:
        """The variant sources to evaluate; default: the original images and the decomposer's parts."""
        from .sources import DecomposerSource

        return [DecomposerSource(ctx.decomposer, ctx.params)]

    def evaluators(self, ctx: RunContext) -> list[Evaluator]:
        """Evaluators beyond the run's metrics (:class:`~freqprobe.evaluators.Evaluator`: a gallery, witnesses...).

        Default: the :meth:`observers` of the earlier probe API, each wrapped as an evaluator.
        """
        return [as_evaluator(o) for o in self.observers(ctx)]

    def observers(self, ctx: RunContext) -> list:
        """The earlier form of :meth:`evaluators`: objects with ``on_batch(batch, images, values, targets)`` and
        ``finish() -> dict`` (and ``state_dict``/``load_state_dict``/``merge_state`` to resume and merge)."""
        return []

    def model_sweep(self, ctx: RunContext) -> list:
        """Model transforms to evaluate the model under, one evaluation each (kernel smoothing at several ρ).

        ``[]`` (the default) evaluates the model as given. Each transform is applied to a copy of
        the run's model (after any ``--transform``); its label joins the ``transform`` column and
        the per-sample table gets a ``transform`` column.
        """
        return []

    def derive(self, result: ProbeResult, ctx: RunContext) -> None:
        """Add what follows from the finished result (rows computed from other rows, extras); default: nothing."""

    def configure(self, ctx: RunContext) -> RunContext:
        """The run's context for this probe, before anything is evaluated; default: as given. A probe may return
        ``ctx.replace(config=ctx.config.replace(batch_size=...))`` (a batch that fits its many variants) — a
        deterministic function of the context, so a resumed run makes the same choice."""
        return ctx

    def run(self, ctx: RunContext) -> ProbeResult:
        """The evaluation (or one per transform of the sweep), then :meth:`derive`. Not meant to be overridden."""
        from .engine import evaluate_sweep

        ctx = self.configure(ctx)
        sweep = self.model_sweep(ctx)
        if sweep:
            result = evaluate_sweep(ctx, self, sweep)
        else:
            result = ctx.evaluate(self.sources(ctx), probe=self.name, evaluators=self.evaluators(ctx), samples=self.samples)
        if self.plot_metrics:
            result.extras.setdefault("plot_metrics", list(self.plot_metrics))
        self.derive(result, ctx)
        return result


__all__ = ["Probe", "RunContext", "Services"]
