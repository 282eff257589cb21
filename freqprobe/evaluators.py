"""The one accumulator contract: evaluators (metrics are evaluators of one variant).

An :class:`Evaluator` sees every batch of an evaluation (:meth:`~Evaluator.process` of an
:class:`EvalStep`: the batch, each variant's images, model outputs and per-sample values),
keeps declared state (:meth:`~Evaluator.add_state`, the shape of torchmetrics' ``add_state``),
and contributes summary rows (:meth:`~Evaluator.rows`), extras for writers
(:meth:`~Evaluator.extras`) and files (:meth:`~Evaluator.write`). The engine, the resume
journal and the torchrun gather use only this contract — :meth:`~Evaluator.reset`,
:meth:`~Evaluator.state_dict`, :meth:`~Evaluator.load_state_dict`, :meth:`~Evaluator.merge` —
so every evaluator resumes after an interrupt and merges across processes.

A :class:`Metric` is an evaluator bound to one variant: the engine builds one per evaluated
variant and metric class, and its :meth:`~Metric.process` hands that variant's outputs to
:meth:`~Metric.update` (``update(outputs, targets)`` / ``compute()``, as metrics always had).

Reductions (``reduce=`` of :meth:`~Evaluator.add_state`), for numbers and tensors alike:

========  ================================================================================
``sum``   ``a + b`` (the default; counts, sums)
``mean``  the mean over the merged instances, weighted by how many each one holds
``cat``   tensors: ``torch.cat`` along the first axis; lists: concatenated
``max``   element-wise maximum (``torch.maximum`` for tensors)
``min``   element-wise minimum
callable  ``fn(mine, theirs) -> merged``
========  ================================================================================

Floating-point sums depend on the order they are added in. A state that must come out bit for
bit the same whatever the number of processes keeps one entry per batch (``reduce="cat"``,
keyed by :attr:`EvalStep.number`) and adds them up in batch order when it reports.
"""

from __future__ import annotations

import dataclasses
import inspect
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping, Sequence

from .interfaces import Batch, Variant

if TYPE_CHECKING:
    from pathlib import Path


# ----------------------------------------------------------------------------- reductions
def _is_tensor(v: Any) -> bool:
    return type(v).__module__.startswith("torch") and hasattr(v, "dim")


def _align(mine: Any, theirs: Any) -> Any:
    """``theirs`` on ``mine``'s device (tensor states may live on the run's device)."""
    if _is_tensor(mine) and _is_tensor(theirs) and theirs.device != mine.device:
        return theirs.to(mine.device)
    return theirs


def _sum(a: Any, b: Any) -> Any:
    return a + _align(a, b)


def _cat(a: Any, b: Any) -> Any:
    if _is_tensor(a) or _is_tensor(b):
        import torch

        if not _is_tensor(a):
            return torch.cat([torch.as_tensor(a), b])
        return torch.cat([a, torch.as_tensor(_align(a, b)).to(a.dtype)])
    return list(a) + list(b)


def _max(a: Any, b: Any) -> Any:
    if _is_tensor(a) or _is_tensor(b):
        import torch

        return torch.maximum(torch.as_tensor(a), torch.as_tensor(_align(a, b)))
    return max(a, b)


def _min(a: Any, b: Any) -> Any:
    if _is_tensor(a) or _is_tensor(b):
        import torch

        return torch.minimum(torch.as_tensor(a), torch.as_tensor(_align(a, b)))
    return min(a, b)


#: ``mean`` is handled by :meth:`Evaluator.merge` (it needs the counts of both sides)
REDUCTIONS: dict[str, Callable[[Any, Any], Any] | None] = {"sum": _sum, "mean": None, "cat": _cat, "max": _max, "min": _min}

#: the key of :meth:`Evaluator.state_dict` holding how many instances a state is the merge of
MERGED_KEY = "__merged__"


def fresh(default: Any) -> Any:
    """A new copy of a declared default (tensors cloned, containers copied)."""
    if _is_tensor(default):
        return default.clone()
    if isinstance(default, (list, dict, set)):
        return type(default)(default)
    return default


def _plain(v: Any) -> bool:
    """Whether a checkpoint can keep ``v`` (and load it back without unpickling code)."""
    if v is None or isinstance(v, (bool, int, float, str)) or _is_tensor(v):
        return True
    if isinstance(v, (list, tuple)):
        return all(_plain(x) for x in v)
    if isinstance(v, dict):
        return all(isinstance(k, (str, int, float)) and _plain(x) for k, x in v.items())
    return False


def _to_host(v: Any) -> Any:
    if _is_tensor(v):
        return v.detach().cpu()
    if isinstance(v, list):
        return [_to_host(x) for x in v]
    if isinstance(v, tuple):
        return tuple(_to_host(x) for x in v)
    if isinstance(v, dict):
        return {k: _to_host(x) for k, x in v.items()}
    return v


class StateError(NotImplementedError):
    """An evaluator whose state cannot be saved or merged (raised by the contract; the core words the message)."""


# ----------------------------------------------------------------------------- one batch, as evaluators see it
@dataclasses.dataclass(frozen=True)
class EvalStep:
    """One batch of an evaluation, as every evaluator sees it.

    ``batch``: the :class:`~freqprobe.interfaces.Batch` as the data source gave it (on the host);
    ``number``: its position in data order (the same in a resumed, sharded or one-process run: batch ``b`` of
    the data is ``number == b`` whichever process evaluates it);
    ``variants``: the evaluated variants in table order; per variant, ``images`` (as fed to the
    model, after the rescale policy), ``outputs`` (the model's) and ``values`` (the adapter's
    per-sample columns, e.g. ``pred``/``confidence``), all on the run's device; ``targets``: the
    batch's targets on the run's device.
    """

    batch: Batch
    number: int
    variants: Sequence[Variant]
    images: Mapping[Variant, Any]
    outputs: Mapping[Variant, Any]
    values: Mapping[Variant, Mapping[str, Any]]
    targets: Any

    @property
    def indices(self) -> Any:
        """The samples' positions in the data set (int64, on the host)."""
        return self.batch.indices

    def __len__(self) -> int:
        return len(self.batch.indices)


# ----------------------------------------------------------------------------- the contract
class Evaluator(ABC):
    """Accumulates what it needs from every batch; reports summary rows, extras and files.

    Life cycle (the engine's): construction (``cls(ctx)``), :meth:`reset`, :meth:`process` once
    per batch, then :meth:`rows` / :meth:`extras` / :meth:`write`. Between batches the journal
    saves :meth:`state_dict` (``--resume`` puts it back with :meth:`load_state_dict`) and a
    torchrun rank 0 folds the other ranks' states in with :meth:`merge`. Declare state with
    :meth:`add_state` and all of that works without more code.
    """

    name: ClassVar[str] = ""
    #: the task whose models it evaluates (None: any)
    task: ClassVar[str | None] = None

    def __init__(self, ctx: Any = None, **options: Any) -> None:
        self.ctx = ctx
        self.options = options

    # -- declared state
    def add_state(self, name: str, default: Any, reduce: str | Callable[[Any, Any], Any] = "sum") -> None:
        """Declare a state variable: :meth:`reset` restores ``default``; :meth:`merge` combines with ``reduce``
        (``sum``, ``mean``, ``cat``, ``max``, ``min`` or a function ``fn(mine, theirs)``)."""
        if not name.isidentifier() or name.startswith("_") or name in ("ctx", "options") or hasattr(type(self), name):
            raise ValueError(f"state name {name!r} of {type(self).__name__} would hide a member of the evaluator contract "
                             "(or is not a plain identifier); choose another name")
        if isinstance(reduce, str) and reduce not in REDUCTIONS:
            raise ValueError(f"unknown reduce {reduce!r}; use one of {', '.join(REDUCTIONS)} or a function")
        if not isinstance(reduce, str) and not callable(reduce):
            raise ValueError(f"reduce must be a name ({', '.join(REDUCTIONS)}) or a function, got {reduce!r}")
        states = self.__dict__.setdefault("_states", {})
        states[name] = (default, reduce)
        self.__dict__["_merged"] = 1
        setattr(self, name, fresh(default))

    @property
    def declared_states(self) -> dict[str, tuple[Any, Any]]:
        """``name -> (default, reduce)`` of the states declared with :meth:`add_state`."""
        return dict(self.__dict__.get("_states", {}))

    def reset(self) -> None:
        """Back to the declared defaults (override when the state is not declared with add_state)."""
        for name, (default, _) in self.__dict__.get("_states", {}).items():
            setattr(self, name, fresh(default))
        if "_states" in self.__dict__:
            self.__dict__["_merged"] = 1

    # -- per batch
    @abstractmethod
    def process(self, step: EvalStep) -> None:
        """Accumulate one batch (see :class:`EvalStep`); keep device tensors on the device (no host synchronisation)."""

    # -- state: resume and merge
    def state_dict(self) -> dict[str, Any]:
        """The state, on the host and picklable: the declared states (else the plain attributes).

        Raises :class:`StateError` when the state cannot be saved (an attribute a checkpoint cannot hold).
        """
        states = self.__dict__.get("_states")
        if states:
            out = {name: _to_host(getattr(self, name)) for name in states}
            if any(r == "mean" for _, r in states.values()):
                out[MERGED_KEY] = int(self.__dict__.get("_merged", 1))
            return out
        attrs = {k: v for k, v in vars(self).items() if k not in ("ctx", "options", "variant") and not k.startswith("_")}
        odd = sorted(k for k, v in attrs.items() if not _plain(v))
        if odd:
            raise StateError(f"{type(self).__name__}.{odd[0]}")
        return {k: _to_host(v) for k, v in attrs.items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Set the state from a :meth:`state_dict` (how a resumed run continues); tensors go to the run's device."""
        dev = getattr(self.ctx, "device", None) if self.ctx is not None else None
        states = self.__dict__.get("_states")
        names = list(states) if states else [k for k in state if k != MERGED_KEY]
        for name in names:
            v = state[name]
            setattr(self, name, v.to(dev) if _is_tensor(v) and dev is not None else fresh(v))
        if states:
            self.__dict__["_merged"] = int(state.get(MERGED_KEY, 1))

    def merge(self, other: "Evaluator | Mapping[str, Any]") -> None:
        """Fold another instance's state (or a :meth:`state_dict`) into this one."""
        states = self.__dict__.get("_states")
        if not states:
            raise StateError(f"{self.label()} declares no state (add_state), so it cannot merge partial results")
        theirs = other.state_dict() if isinstance(other, Evaluator) else other
        n_mine, n_theirs = int(self.__dict__.get("_merged", 1)), int(theirs.get(MERGED_KEY, 1))
        for name, (_, reduce) in states.items():
            mine, got = getattr(self, name), theirs[name]
            if reduce == "mean":
                merged = (mine * n_mine + _align(mine, got) * n_theirs) / (n_mine + n_theirs)
            else:
                fn = REDUCTIONS[reduce] if isinstance(reduce, str) else reduce
                merged = fn(mine, got)
            setattr(self, name, merged)
        self.__dict__["_merged"] = n_mine + n_theirs

    # -- what it contributes
    def rows(self) -> list[dict[str, Any]]:
        """Summary rows: the variant columns (``variant``, ``param``, extra ones), ``metric``, ``value`` and optionally
        ``n``; the engine adds ``probe``, ``transform`` and ``decomposer`` (and ``n``: the samples evaluated)."""
        return []

    def extras(self) -> dict[str, Any]:
        """Values for writers, merged into ``ProbeResult.extras`` (e.g. the Figure-2 gallery)."""
        return {}

    def write(self, out_dir: "Path") -> list[str]:
        """Write the files it contributes into the run's folder (on the process that publishes); their names."""
        return []

    def label(self) -> str:
        """How messages name it: ``evaluator 'NAME'`` (or its class)."""
        return f"evaluator {self.name!r}" if self.name else type(self).__name__


class Metric(Evaluator):
    """Accumulates one variant's model outputs against the targets; reports a dict of named numbers.

    Life cycle: the core builds a metric per evaluated variant with the run's context
    (``Metric(ctx)``, or ``Metric()`` for a constructor without arguments), calls :meth:`reset`,
    then :meth:`update` once per batch with the model's outputs for that variant and the batch's
    targets (both on the run's device), then :meth:`compute`. Declare the state with
    :meth:`add_state` and partial results merge and resume (see :class:`Evaluator`).
    """

    task: ClassVar[str | None] = "classification"
    #: the variant whose outputs this instance sees (set by :meth:`build`)
    variant: Variant | None = None

    @classmethod
    def build(cls, metric_class: type["Metric"], ctx: Any, variant: Variant | None) -> "Metric":
        """A metric instance for ``variant``: ``metric_class(ctx)`` (or ``metric_class()``), bound to the variant, reset."""
        try:
            params = list(inspect.signature(metric_class).parameters.values())
        except (TypeError, ValueError):
            params = []
        takes_ctx = any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL) for p in params)
        m = metric_class(ctx) if takes_ctx else metric_class()
        m.variant = variant
        return m

    @abstractmethod
    def update(self, outputs: Any, targets: Any) -> None: ...

    @abstractmethod
    def compute(self) -> "Mapping[str, float] | float":
        """The result: ``{name: value}`` (several numbers, e.g. mAP and AP50) or one number (named :attr:`name`)."""

    def process(self, step: EvalStep) -> None:
        self.update(step.outputs[self.variant], step.targets)

    def results(self) -> dict[str, float]:
        """:meth:`compute` as a dict."""
        got = self.compute()
        if isinstance(got, Mapping):
            return {str(k): float(v) for k, v in got.items()}
        return {self.name: float(got)}

    def rows(self) -> list[dict[str, Any]]:
        cols = self.variant.columns() if self.variant is not None else {}
        return [{**cols, "metric": k, "value": v} for k, v in self.results().items()]

    def label(self) -> str:
        return f"metric {self.name!r}" if self.name else type(self).__name__

    # the names before the evaluator contract
    def state(self) -> dict[str, Any]:
        """The declared state on the host (:meth:`state_dict` without bookkeeping)."""
        return {k: v for k, v in self.state_dict().items() if k != MERGED_KEY} if self.__dict__.get("_states") else {}

    def load_state(self, state: Mapping[str, Any]) -> None:
        """:meth:`load_state_dict`."""
        self.load_state_dict(state)


class ObserverEvaluator(Evaluator):
    """An observer of the earlier probe API (``on_batch``/``finish``/``state_dict``/``merge_state``) under the contract."""

    def __init__(self, observer: Any) -> None:
        super().__init__(None)
        self.observer = observer
        self.name = getattr(observer, "name", "") or ""

    def label(self) -> str:
        return f"observer {type(self.observer).__name__}"

    def reset(self) -> None:
        pass

    def process(self, step: EvalStep) -> None:
        self.observer.on_batch(step.batch, step.images, step.values, step.targets)

    def state_dict(self) -> dict[str, Any]:
        fn = getattr(self.observer, "state_dict", None)
        return {"observer": fn() if fn is not None else None}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        saved = state.get("observer")
        if saved is None:
            return
        load = getattr(self.observer, "load_state_dict", None)
        if load is None:
            raise StateError(f"{type(self.observer).__name__} cannot restore its state (no load_state_dict)")
        load(saved)

    def merge(self, other: "Evaluator | Mapping[str, Any]") -> None:
        theirs = other.state_dict() if isinstance(other, Evaluator) else other
        merge = getattr(self.observer, "merge_state", None)
        if theirs.get("observer") is None:
            return
        if merge is None:
            raise StateError(f"{self.label()} cannot merge another process's state (no merge_state)")
        merge(theirs["observer"])

    def rows(self) -> list[dict[str, Any]]:
        fn = getattr(self.observer, "rows", None)
        return list(fn()) if fn is not None else []

    def extras(self) -> dict[str, Any]:
        fn = getattr(self.observer, "finish", None)
        return dict(fn() or {}) if fn is not None else {}


def as_evaluator(obj: Any) -> Evaluator:
    """``obj`` itself when it is an :class:`Evaluator`, else an observer of the earlier API wrapped as one."""
    return obj if isinstance(obj, Evaluator) else ObserverEvaluator(obj)


__all__ = ["EvalStep", "Evaluator", "Metric", "ObserverEvaluator", "REDUCTIONS", "StateError", "as_evaluator", "fresh"]
