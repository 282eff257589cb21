"""The one evaluation loop: a model over image variants of a data set, for every probe and task.

A probe declares *variant sources* (the original images, a decomposer's parts, later adversarial
images and compositions of these); :func:`evaluate` streams the data once and, for every batch,
lets the sources fill one preallocated stack of variant images, runs the model over the stack
(several variants concatenated into one forward pass where the task allows it), updates one
metric instance per variant, and records the per-sample columns the adapter declares. Design
notes and the contract for plugins: docs/engine.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import queue
import threading
import time
from collections import defaultdict
from typing import Any, Iterator, Mapping, Sequence

import torch

from . import guard as _guard
from .errors import FreqprobeError, IncompatibleError, ModelError, PluginError, UserFacingError, exception_line
from .interfaces import Batch, DataSource, Decomposer, Metric, ProbeResult, RunContext, Variant, VariantSource, batch_indices
from .tables import SampleTable, extra_columns

PRECISIONS = ("fp32", "tf32", "bf16", "fp16")


# ----------------------------------------------------------------------------- variant sources
class OriginalSource(VariantSource):
    """The batch's images as they are (the ``original`` variant)."""

    def __init__(self) -> None:
        self.variant = Variant("original")

    def variants(self) -> list[Variant]:
        return [self.variant]

    def produce(self, images, targets, ctx, out=None):
        yield self.variant, images

    def describe(self) -> dict[str, Any]:
        return {"source": "original"}


class DecomposerSource(VariantSource):
    """Each component of a decomposer at each parameter, of another source's images (default: the original).

    ``include_base`` also evaluates the base's own variants (the original images of ``lfc-hfc``,
    the adversarial images themselves of a robustness probe).
    """

    def __init__(self, decomposer: Decomposer, params: Sequence[Any], base: VariantSource | None = None, *,
                 include_base: bool = True) -> None:
        self.decomposer = decomposer
        self.params = list(params)
        self.base = base if base is not None else OriginalSource()
        self.include_base = include_base
        self._derived: dict[tuple, Variant] = {}
        for bv in self.base.variants():
            for p in self.params:
                for c in decomposer.components:
                    self._derived[(bv.key(), c, p)] = bv.derive(c, p)

    def variant_for(self, base: Variant, component: str, param: Any) -> Variant:
        """The variant holding ``component`` at ``param`` of the base variant ``base``."""
        return self._derived[(base.key(), component, param)]

    def variants(self) -> list[Variant]:
        out = []
        for bv in self.base.variants():
            if self.include_base:
                out.append(bv)
            out += [self._derived[(bv.key(), c, p)] for p in self.params for c in self.decomposer.components]
        return out

    def produce(self, images, targets, ctx, out=None):
        comps = self.decomposer.components
        for bv, bimgs in self.base.produce(images, targets, ctx, out):
            if self.include_base:
                yield bv, bimgs
            derived = {(c, p): self._derived[(bv.key(), c, p)] for p in self.params for c in comps}
            if isinstance(bimgs, (list, tuple)):  # images of different sizes: one at a time
                parts = {k: [] for k in derived}
                for img in bimgs:
                    for p, got in _guard.decompose_all(self.decomposer, img[None].contiguous(), self.params):
                        for c in comps:
                            parts[(c, p)].append(got[c][0])
                for k, v in derived.items():
                    yield v, parts[k]
                continue
            bufs = None
            if out is not None and all(v in out for v in derived.values()):
                bufs = {p: {c: out[derived[(c, p)]] for c in comps} for p in self.params}
            for p, got in _guard.decompose_all(self.decomposer, bimgs.contiguous(), self.params, out=bufs):
                for c in comps:
                    yield derived[(c, p)], got[c]

    def describe(self) -> dict[str, Any]:
        d = self.decomposer
        return {"source": "decomposer", "decomposer": d.name, "options": d.options(), "param_name": d.param_name,
                "params": self.params, "components": list(d.components), "base": self.base.describe(),
                "include_base": self.include_base}


# ----------------------------------------------------------------------------- settings
@dataclasses.dataclass
class EngineSettings:
    """How the loop runs on this device (defaults chosen per device; see docs/benchmarks.md)."""

    device: torch.device
    precision: str = "fp32"
    channels_last: bool = True
    #: images per forward pass; None: the whole stack of a batch's variants, up to ``stack_bytes`` of input
    forward_batch: int | None = None
    prefetch: bool = False
    cudnn_benchmark: bool = False
    #: with ``forward_batch`` None: the most bytes of input images one forward pass takes
    stack_bytes: int = 256 << 20

    @classmethod
    def for_context(cls, ctx: RunContext) -> "EngineSettings":
        dev = ctx.device
        cuda = dev.type == "cuda"
        check_precision(dev, ctx.precision)
        fb = ctx.forward_batch
        if fb is not None and fb < 1:
            raise UserFacingError(f"--forward-batch must be at least 1, got {fb}")
        if fb is None and not cuda:
            fb = ctx.batch_size  # 2-core CPU: batch-sized forwards are fastest (docs/benchmarks.md)
        return cls(
            device=dev,
            precision=ctx.precision,
            channels_last=True if ctx.channels_last is None else bool(ctx.channels_last),
            forward_batch=fb,
            prefetch=cuda,
            cudnn_benchmark=cuda,
        )

    def describe(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, torch.device) else v) for k, v in dataclasses.asdict(self).items()}


def check_precision(device: torch.device, precision: str) -> None:
    """Refuse a precision the device cannot run, in one line."""
    if precision not in PRECISIONS:
        raise UserFacingError(f"unknown precision {precision!r}; use one of: {', '.join(PRECISIONS)}")
    if device.type == "cpu":
        if precision == "tf32":
            raise UserFacingError("--precision tf32 is a CUDA setting; on the CPU use fp32 or bf16")
        if precision in ("bf16", "fp16"):
            dtype = torch.bfloat16 if precision == "bf16" else torch.float16
            try:
                with torch.autocast("cpu", dtype=dtype):
                    torch.nn.functional.conv2d(torch.ones(1, 1, 3, 3), torch.ones(1, 1, 2, 2))
            except (RuntimeError, TypeError) as exc:
                raise UserFacingError(f"--precision {precision} is not available on this CPU with torch {torch.__version__} "
                                      f"({str(exc).splitlines()[0][:80]}); use fp32 or bf16") from None
    elif device.type == "cuda":
        if precision == "bf16" and not torch.cuda.is_bf16_supported():
            raise UserFacingError(f"--precision bf16 is not supported by {torch.cuda.get_device_name(device)}; use fp16 or fp32")
    elif precision != "fp32":
        raise UserFacingError(f"--precision {precision} is not supported on {device.type}; use fp32")


@contextlib.contextmanager
def precision_context(device: torch.device, precision: str):
    """fp32 is exact float32 (TF32 off on CUDA); tf32 allows TF32; bf16/fp16 autocast the model."""
    if device.type != "cuda":
        if precision in ("bf16", "fp16"):
            with torch.autocast("cpu", dtype=torch.bfloat16 if precision == "bf16" else torch.float16):
                yield
        else:
            yield
        return
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    try:
        if precision in ("bf16", "fp16"):
            with torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16):
                yield
        else:
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


# ----------------------------------------------------------------------------- helpers
class StageTimer:
    """Seconds per stage without host synchronisation: wall clock on the CPU, CUDA events on a GPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.totals: dict[str, float] = defaultdict(float)
        self._events: list[tuple[str, Any, Any]] = []

    @contextlib.contextmanager
    def stage(self, name: str):
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            try:
                yield
            finally:
                end.record()
                self._events.append((name, start, end))
        else:
            t = time.perf_counter()
            try:
                yield
            finally:
                self.totals[name] += time.perf_counter() - t

    def results(self) -> dict[str, float]:
        if self._events:
            torch.cuda.synchronize()
            for name, start, end in self._events:
                self.totals[name] += start.elapsed_time(end) / 1000.0
            self._events.clear()
        return {f"{k}_s": v for k, v in self.totals.items()}


_END = object()


class Prefetcher:
    """Loads the next batches in a background thread (in pinned memory for a GPU) while the device works."""

    def __init__(self, batches: Iterator[Batch], *, pin: bool, depth: int = 2) -> None:
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._pin = pin
        self._thread = threading.Thread(target=self._work, args=(batches,), daemon=True, name="freqprobe-prefetch")
        self._thread.start()

    def _work(self, batches: Iterator[Batch]) -> None:
        try:
            for b in batches:
                if self._pin:
                    b = Batch(_pin(b.images), _pin(b.targets), b.indices)
                while not self._stop.is_set():
                    try:
                        self._q.put(b, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
            self._q.put(_END)
        except BaseException as exc:  # re-raised in the consumer
            self._q.put(exc)

    def __iter__(self) -> Iterator[Batch]:
        try:
            while True:
                item = self._q.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self._stop.set()


def _pin(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.pin_memory()
    if isinstance(x, list):
        return [_pin(t) for t in x]
    return x


def _to(x: Any, device: torch.device) -> Any:
    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, list):
        return [_to(t, device) for t in x]
    if isinstance(x, dict):
        return {k: _to(v, device) for k, v in x.items()}
    return x


def make_metric(cls: type, ctx: RunContext) -> Metric:
    """Build a metric with the run's context (or without, for a metric whose constructor takes none), then reset it."""
    try:
        params = list(inspect.signature(cls).parameters.values())
    except (TypeError, ValueError):
        params = []
    takes_ctx = any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL) for p in params)
    with _guard.guarded(cls, "the constructor"):
        m = cls(ctx) if takes_ctx else cls()
    with _guard.guarded(cls, "reset()"):
        m.reset()
    return m


class _HostValues:
    """Per-sample columns on their way to the host: asynchronous copies from a GPU, read one batch later."""

    def __init__(self, values: Mapping[str, Any], device: torch.device) -> None:
        self.event = None
        if device.type == "cuda":
            host = {}
            for k, v in values.items():
                if isinstance(v, torch.Tensor) and v.is_cuda:
                    h = torch.empty(v.shape, dtype=v.dtype, pin_memory=True)
                    h.copy_(v, non_blocking=True)
                    host[k] = h
                else:
                    host[k] = v
            self.event = torch.cuda.Event()
            self.event.record()
            self.values = host
        else:
            self.values = dict(values)

    def get(self) -> dict[str, Any]:
        if self.event is not None:
            self.event.synchronize()
        return {k: (v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in self.values.items()}


# ----------------------------------------------------------------------------- the loop
@dataclasses.dataclass
class EvalState:
    """What the loop accumulates; states of shards merge (:meth:`merge`) before :func:`summarize`."""

    variants: list
    metrics: dict  # variant -> [Metric]
    table: SampleTable | None
    n: int = 0
    timings: dict = dataclasses.field(default_factory=dict)
    extras: dict = dataclasses.field(default_factory=dict)

    def merge(self, other: "EvalState") -> None:
        for v in self.variants:
            for mine, theirs in zip(self.metrics[v], other.metrics[v]):
                mine.merge(theirs)
        if self.table is not None and other.table is not None:
            self.table.extend(other.table)
        self.n += other.n


def evaluate(ctx: RunContext, sources: Sequence[VariantSource], *, probe: str, observers: Sequence[Any] = (),
             samples: bool = True, constants: Mapping[str, Any] | None = None) -> ProbeResult:
    """Evaluate ``ctx.adapter`` on every variant of ``sources`` over ``ctx.data`` (its shard); a ProbeResult.

    ``constants``: per-sample columns with one value for the whole evaluation (after ``param``).
    """
    state = run_loop(ctx, sources, observers=observers, samples=samples, constants=constants)
    extras: dict[str, Any] = {}
    for ob in observers:
        finish = getattr(ob, "finish", None)
        if finish is not None:
            extras.update(finish() or {})
    return summarize(ctx, state, sources, probe=probe, extras=extras)


def evaluate_sweep(ctx: RunContext, probe: Any, transforms: Sequence[Any]) -> ProbeResult:
    """The probe's evaluation once per model transform (each on a copy of the model); one combined result."""
    import copy

    results = []
    for t in transforms:
        label = t.label()
        sub = dataclasses.replace(ctx, adapter=t.apply(copy.deepcopy(ctx.adapter)),
                                  transform=",".join(x for x in (ctx.transform, label) if x))
        res = evaluate(sub, probe.sources(sub), probe=probe.name, observers=probe.observers(sub),
                       constants={"transform": sub.transform})
        results.append((sub.transform, res))
    first = results[0][1]
    table = first.samples
    for _, res in results[1:]:
        if table is not None and res.samples is not None:
            table.extend(res.samples)
    timings: dict[str, float] = defaultdict(float)
    for _, res in results:
        for k, v in res.extras.get("timings", {}).items():
            timings[k] += v
    extras = {k: v for k, v in first.extras.items() if k not in ("timings",)}
    extras["timings"] = dict(timings)
    extras["sweep"] = [{"transform": label, **{k: v for k, v in res.extras.items() if k not in ("timings", "class_names", "engine", "sources", "extra_columns")}}
                       for label, res in results]
    return ProbeResult(probe=first.probe, summary=[row for _, res in results for row in res.summary], samples=table,
                       components=first.components, param_name=first.param_name, variants=first.variants, extras=extras)


def summarize(ctx: RunContext, state: EvalState, sources: Sequence[VariantSource], *, probe: str,
              extras: Mapping[str, Any] | None = None) -> ProbeResult:
    rows = []
    for v in state.variants:
        for m in state.metrics[v]:
            try:
                with _guard.guarded(m, "compute()"):
                    results = m.results()
            except FreqprobeError:
                raise
            except Exception as exc:
                raise PluginError(f"metric {getattr(m, 'name', type(m).__name__)!r} failed in compute(): {type(exc).__name__}: {exc}") from exc
            for name, value in results.items():
                rows.append({"probe": probe, "transform": ctx.transform, "decomposer": ctx.decomposer.name, **v.columns(),
                             "metric": name, "value": value, "n": state.n})
    if getattr(ctx, "allow_nonfinite", False):  # the summary counts what --allow-nonfinite let through
        counts = state.extras.get("nonfinite") or {}
        for v in state.variants:
            rows.append({"probe": probe, "transform": ctx.transform, "decomposer": ctx.decomposer.name, **v.columns(),
                         "metric": "nonfinite-outputs", "value": float(counts.get(v, 0)), "n": state.n})
    dec = ctx.decomposer
    return ProbeResult(
        probe=probe,
        summary=rows,
        samples=state.table,
        components=tuple(dec.components),
        param_name=dec.param_name,
        variants=list(state.variants),
        extras={
            "class_names": list(ctx.data.class_names) if ctx.data.class_names else None,
            "timings": dict(state.timings),
            "engine": state.extras.get("engine"),
            "sources": [s.describe() for s in sources],
            "extra_columns": extra_columns(state.variants),
            **(extras or {}),
        },
    )


def run_loop(ctx: RunContext, sources: Sequence[VariantSource], *, observers: Sequence[Any] = (),
             samples: bool = True, constants: Mapping[str, Any] | None = None) -> EvalState:
    """Stream ``ctx.data`` once; evaluate every variant of every batch. Returns the accumulated state.

    ``constants`` are per-sample columns with one value for the whole evaluation (a swept
    transform's label), placed after ``param``. With ``ctx.journal`` (a run writing to an output
    folder) the per-sample rows stream to disk and checkpoints let an interrupted run resume.
    """
    from .journal import StopRequested, stop_signal

    settings = EngineSettings.for_context(ctx)
    variants = [v for s in sources for v in s.variants()]
    seen: set = set()
    for v in variants:
        if v.key() in seen:
            raise PluginError(f"two variant sources produce the same variant {v.columns()}")
        seen.add(v.key())
    index_of = {v: i for i, v in enumerate(variants)}
    adapter, dev = ctx.adapter, settings.device
    if dev.type == "cpu":
        from .perf import prime_heap

        prime_heap()  # activations reuse heap blocks instead of fresh page-faulted maps (freqprobe/perf.py)
    was_training = bool(getattr(adapter.module, "training", False))
    adapter.prepare(channels_last=settings.channels_last)
    metrics = {v: [make_metric(cls, ctx) for cls in ctx.metrics] for v in variants}
    extra = extra_columns(variants)
    constants = dict(constants or {})
    scalar_cols = ["variant", "param", *constants, *extra]
    state = EvalState(variants=variants, metrics=metrics, table=None)
    nonfinite = [0] * len(variants)
    allow_nonfinite = bool(getattr(ctx, "allow_nonfinite", False))
    journal = getattr(ctx, "journal", None)
    seg = journal.begin(ctx.transform or "") if journal is not None else None
    start_batch = 0
    finished = False  # a resumed evaluation that was complete before the stop
    if seg is not None and seg.saved:
        start_batch = _restore(seg, state, observers, nonfinite, samples, journal, scalar_cols)
        finished = bool(seg.saved.get("done"))
        if ctx.progress and state.n:
            ctx.progress(state.n)
    timer = StageTimer(dev)
    rescale = ctx.rescale
    rescale_all = bool(getattr(rescale, "applies_to_original", False))
    identity_rescale = getattr(rescale, "name", "") == "none"
    stack: torch.Tensor | None = None
    pending: tuple | None = None
    data_wait = 0.0

    def flush(p: tuple | None) -> None:
        if p is None:
            return
        host, indices, target_cols, n, order = p
        vals = host.get()
        bad = vals.pop("__nonfinite__", None)
        if bad is not None:
            for i, c in enumerate(bad.tolist()):
                nonfinite[i] += int(c)
            if not allow_nonfinite and any(nonfinite):
                raise UserFacingError(_nonfinite_message(variants, nonfinite, state.n, ctx))
        if state.table is None:
            return
        for i, v in enumerate(order):
            block = {"index": indices, **target_cols, **v.columns(), **constants}
            for col in adapter.sample_columns:
                block[col] = vals[col][i * n:(i + 1) * n] if vals[col] is not None else None
            state.table.append(block, n)

    def checkpoint(batches: int, done: bool = False) -> None:
        seg.checkpoint(batches=batches, n=state.n, columns=state.table.columns if state.table is not None else None,
                       rows=len(state.table) if state.table is not None else 0,
                       metrics=[[_metric_state(m) for m in metrics[v]] for v in variants],
                       observers=[_observer_state(ob) for ob in observers], nonfinite=list(nonfinite), done=done)

    n_total = len(ctx.data) if ctx.limit is None else min(ctx.limit, len(ctx.data))
    batches = iter(()) if finished else _batches(ctx.data, ctx.batch_size, limit=ctx.limit, shard=ctx.shard, start=start_batch)
    if settings.prefetch and not finished:
        batches = iter(Prefetcher(batches, pin=dev.type == "cuda"))
    old_bench = torch.backends.cudnn.benchmark
    t_loop = time.perf_counter()
    b = start_batch
    try:
        torch.backends.cudnn.benchmark = settings.cudnn_benchmark
        with torch.inference_mode(), precision_context(dev, settings.precision):
            it = iter(batches)
            while not finished:
                if seg is not None and (stop_signal() is not None or journal.due()) and b > start_batch:
                    t_ck = time.perf_counter()
                    flush(pending)  # on a GPU this waits for the last batch: counted in the checkpoint's cost
                    pending = None
                    checkpoint(b)
                    journal.checkpoint_s = time.perf_counter() - t_ck
                if stop_signal() is not None:
                    raise StopRequested(f"stopped after {state.n} of {n_total} samples", stop_signal())
                t = time.perf_counter()
                batch = next(it, None)
                data_wait += time.perf_counter() - t
                if batch is None:
                    break
                images, targets = _to(batch.images, dev), _to(batch.targets, dev)
                n = len(batch.indices)
                ctx.current_indices = batch.indices
                target_cols = ctx.data.target_columns(batch.targets) if samples else {}
                if state.table is None and samples:
                    state.table = SampleTable(["index", *target_cols, "variant", "param", *constants, *extra, *adapter.sample_columns],
                                              sink=journal.csv() if journal is not None else None)
                stackable = isinstance(images, torch.Tensor) and adapter.stackable
                with timer.stage("decompose"):
                    if stackable:
                        if stack is None or stack.shape[1:] != images.shape or stack.dtype != images.dtype:
                            stack = torch.empty((len(variants), *images.shape), dtype=images.dtype, device=dev)
                        slots = {v: stack[i] for i, v in enumerate(variants)}
                        produced = _produce(sources, images, targets, ctx, slots, index_of)
                        for v in variants:
                            if not identity_rescale and (v.component or rescale_all):
                                slots[v].copy_(rescale.apply(slots[v]))
                        produced = slots
                    else:
                        produced = _produce(sources, images, targets, ctx, None, index_of)
                        if not identity_rescale:
                            produced = {v: (_rescale_list(rescale, x) if (v.component or rescale_all) else x) for v, x in produced.items()}
                with timer.stage("inference"):
                    if stackable:
                        flat = stack.view(len(variants) * n, *images.shape[1:])
                        with _model_call(adapter, b, n, images, settings):
                            outputs = _forward(adapter, flat, settings)
                        bad = _nonfinite_rows(outputs, len(variants), n)
                        vals = adapter.sample_values(outputs, targets.repeat(len(variants)) if isinstance(targets, torch.Tensor) else targets)
                        per_variant_out = {v: outputs[i * n:(i + 1) * n] for i, v in enumerate(variants)}
                        per_variant_vals = {v: {k: (t[i * n:(i + 1) * n] if t is not None else None) for k, t in vals.items()}
                                            for i, v in enumerate(variants)}
                    else:
                        per_variant_out, per_variant_vals = {}, {}
                        for v in variants:
                            with _model_call(adapter, b, n, images, settings):
                                out = adapter.predict(produced[v])
                            per_variant_out[v] = out
                            per_variant_vals[v] = adapter.sample_values(out, targets)
                        bad = torch.stack([_nonfinite_rows(per_variant_out[v], 1, n).reshape(()) for v in variants])
                        vals = None
                    for v in variants:
                        for m in metrics[v]:
                            _guard.call(m, "update()", m.update, per_variant_out[v], targets)
                with timer.stage("bookkeeping"):
                    if vals is None and samples:  # per-variant path: columns are concatenated in variant order
                        vals = {k: _cat([per_variant_vals[v][k] for v in variants]) for k in adapter.sample_columns}
                    flush(pending)
                    pending = (_HostValues({**(vals if samples else {}), "__nonfinite__": bad}, dev), batch.indices.numpy(),
                               _host_cols(target_cols), n, variants)
                    for ob in observers:
                        ob.on_batch(batch, produced, per_variant_vals, targets)
                state.n += n
                b += 1
                if ctx.progress:
                    ctx.progress(n)
            flush(pending)
            pending = None
            if seg is not None and not finished:
                checkpoint(b, done=True)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
    finally:
        torch.backends.cudnn.benchmark = old_bench
        adapter.module.train(was_training)  # a training loop that tracks per epoch gets its model back as it was
    wall = time.perf_counter() - t_loop
    timings = timer.results()
    for k in ("decompose_s", "inference_s", "bookkeeping_s"):
        timings.setdefault(k, 0.0)
    timings["data_s"] = data_wait
    timings["evaluate_s"] = wall - data_wait
    state.timings = timings
    state.extras["engine"] = settings.describe()
    state.extras["nonfinite"] = {v: c for v, c in zip(variants, nonfinite)}
    if getattr(ctx, "dist", None) is not None:  # torchrun: rank 0 merges every rank's share (freqprobe.distributed)
        from .distributed import gather_state

        state = gather_state(state, observers, ctx.dist)
    return state


@contextlib.contextmanager
def _model_call(adapter, b: int, n: int, images: Any, settings: EngineSettings):
    """The model raising in the middle of a run (a bug in user code, CUDA out of memory, ``sys.exit``): one line."""
    try:
        yield
    except FreqprobeError:
        raise
    except (Exception, SystemExit) as exc:
        name = adapter.spec or type(adapter.module).__name__
        shape = "×".join(map(str, images.shape[1:])) if isinstance(images, torch.Tensor) else "variable-size"
        why = exception_line(exc)
        hint = ""
        if "out of memory" in why.lower():
            hint = (f"; lower --forward-batch (now {settings.forward_batch or 'the whole stack'}) or --batch-size")
        raise ModelError(f"the model {name} failed in batch {b + 1} ({n} images of {shape}): {why}{hint} "
                         "(-vv shows the traceback)") from exc


def _batches(data, batch_size: int, *, limit, shard, start: int = 0):
    """The data's batches from the ``start``-th on (a resumed run skips what it finished without loading it)."""
    if start == 0:
        yield from data.batches(batch_size, limit=limit, shard=shard)
        return
    if type(data).batches is DataSource.batches:  # loads by index: skip without loading
        idx = batch_indices(len(data), batch_size, limit=limit, shard=shard)
        for i, ix in enumerate(idx):
            if i >= start:
                yield data.load(ix)
        return
    for i, batch in enumerate(data.batches(batch_size, limit=limit, shard=shard)):
        if i >= start:
            yield batch


def _nonfinite_rows(outputs: Any, groups: int, n: int) -> torch.Tensor:
    """Per group of ``n`` samples, how many have a non-finite output (NaN/inf), as a device tensor."""
    if isinstance(outputs, torch.Tensor) and outputs.is_floating_point() and outputs.numel():
        bad = ~torch.isfinite(outputs.reshape(groups * n, -1)).all(-1)
        return bad.view(groups, n).sum(1)
    if isinstance(outputs, (list, tuple)) and outputs and all(isinstance(o, Mapping) for o in outputs):
        flags = [any(isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all())
                     for t in o.values()) for o in outputs]
        return torch.tensor(flags, dtype=torch.int64).view(groups, -1).sum(1)
    return torch.zeros(groups, dtype=torch.int64)


def _nonfinite_message(variants, counts, n: int, ctx) -> str:
    pn = getattr(ctx.decomposer, "param_name", "param")
    parts = []
    for v, c in zip(variants, counts):
        if c:
            label = v.name + (f" {pn}={v.param:g}" if isinstance(v.param, (int, float)) else "")
            label += "".join(f" {k}={val}" for k, val in v.extra)
            parts.append(f"{label}: {c}")
    shown = ", ".join(parts[:6]) + (f", ... ({len(parts) - 6} more variants)" if len(parts) > 6 else "")
    total = max(counts)
    return (f"the model returned non-finite outputs (NaN or inf) for {total} of the first {n} samples ({shown}); "
            "nothing was published. Check the weights, --mean/--std and the data, "
            "or pass --allow-nonfinite to finish anyway and count them in the summary")


def _plain(v: Any) -> bool:
    """Whether a checkpoint can keep ``v`` (and load it back without unpickling code)."""
    if v is None or isinstance(v, (bool, int, float, str, torch.Tensor)):
        return True
    if isinstance(v, (list, tuple)):
        return all(_plain(x) for x in v)
    if isinstance(v, dict):
        return all(isinstance(k, (str, int, float)) and _plain(x) for k, x in v.items())
    return False


def _metric_state(m: Metric) -> dict:
    """A metric's state for a checkpoint: the declared state (add_state), else its plain attributes."""
    if m.__dict__.get("_states"):
        return {"declared": m.state()}
    attrs = {k: v for k, v in vars(m).items() if k not in ("ctx", "options")}
    odd = sorted(k for k, v in attrs.items() if not _plain(v))
    if odd:  # the run goes on; only a resume of it is refused
        return {"unsaved": f"{type(m).__name__}.{odd[0]}"}
    return {"attributes": {k: (v.detach().cpu() if isinstance(v, torch.Tensor) else v) for k, v in attrs.items()}}


def _load_metric_state(m: Metric, saved: Mapping[str, Any], device: torch.device) -> None:
    if "declared" in saved:
        m.load_state(saved["declared"])
        return
    if "unsaved" in saved:
        raise UserFacingError(f"cannot resume: metric {getattr(m, 'name', type(m).__name__)!r} keeps its state in "
                              f"{saved['unsaved']}, which a checkpoint cannot hold (declare it with add_state); "
                              "leave out --resume to start again")
    for k, v in saved["attributes"].items():
        setattr(m, k, v.to(device) if isinstance(v, torch.Tensor) else v)


def _observer_state(ob: Any) -> Any:
    fn = getattr(ob, "state_dict", None)
    return fn() if fn is not None else None


def _restore(seg, state: EvalState, observers, nonfinite: list, samples: bool, journal, scalar_cols) -> int:
    """Put a resumed segment's saved state back: metrics, observers, counts, the rows written so far."""
    saved = seg.saved
    for v, ms in zip(state.variants, saved["metrics"]):
        for m, st in zip(state.metrics[v], ms):
            _load_metric_state(m, st, getattr(m.ctx, "device", torch.device("cpu")) if m.ctx is not None else torch.device("cpu"))
    for ob, st in zip(observers, saved.get("observers") or []):
        if st is None:
            continue
        load = getattr(ob, "load_state_dict", None)
        if load is None:
            raise UserFacingError(f"cannot resume: {type(ob).__name__} cannot restore its state; leave out --resume to start again")
        load(st)
    nonfinite[:] = list(saved.get("nonfinite") or nonfinite)
    state.n = int(saved["n"])
    if samples and saved.get("columns"):
        state.table = SampleTable(saved["columns"])
        start = int(saved["rows_start"])
        state.table.load_csv_rows(journal.samples_path, start, start + int(saved["rows"]), scalar_cols)
        state.table.sink = journal.csv()
    return int(saved["batches"])


def _produce(sources, images, targets, ctx, slots, index_of) -> dict:
    produced: dict = {}
    for src in sources:
        for v, imgs in src.produce(images, targets, ctx, slots):
            if v not in index_of:
                raise PluginError(f"{type(src).__name__} produced a variant it did not declare: {v.columns()}")
            if slots is not None:
                slot = slots[v]
                if not isinstance(imgs, torch.Tensor) or imgs.shape != slot.shape:
                    raise PluginError(f"{type(src).__name__} produced images of shape "
                                      f"{tuple(getattr(imgs, 'shape', ()))} for {v.columns()}; expected {tuple(slot.shape)}")
                if imgs.data_ptr() != slot.data_ptr() or imgs.stride() != slot.stride():
                    slot.copy_(imgs)
                produced[v] = slot
            else:
                produced[v] = imgs
    missing = [v.columns() for v in index_of if v not in produced]
    if missing:
        raise PluginError(f"the variant sources did not produce {missing[0]} (and {len(missing) - 1} more) for a batch")
    return produced


def _rescale_list(rescale, x):
    if isinstance(x, (list, tuple)):
        return [rescale.apply(t[None])[0] for t in x]
    return rescale.apply(x)


def _forward(adapter, x: torch.Tensor, settings: EngineSettings) -> torch.Tensor:
    fb = settings.forward_batch
    if fb is None:  # the whole stack, bounded by the input bytes of one forward
        per_image = max(1, x[0].numel() * x.element_size()) if len(x) else 1
        fb = max(1, settings.stack_bytes // per_image)
    if len(x) > fb:  # equal chunks: no small remainder forward
        chunks = -(-len(x) // fb)
        fb = -(-len(x) // chunks)
    outs = []
    for s in range(0, max(len(x), 1), fb):
        xb = x[s:s + fb]
        if settings.channels_last and xb.dim() == 4:
            xb = xb.contiguous(memory_format=torch.channels_last)
        outs.append(adapter.predict(xb))
    return outs[0] if len(outs) == 1 else torch.cat(outs)


def _cat(parts: list) -> Any:
    if all(isinstance(p, torch.Tensor) for p in parts):
        return torch.cat(parts)
    out: list = []
    for p in parts:
        out.extend(p if isinstance(p, list) else p.tolist())
    return out


def _host_cols(cols: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in cols.items()}


def check_task(probe_requires: Mapping[str, Any], adapter, data, probe: str) -> None:
    """A probe, an adapter and a data set of different tasks are refused before any compute."""
    task = probe_requires.get("task")
    if task and adapter.task != task:
        raise IncompatibleError(f"probe '{probe}' needs a {task} model, but {adapter.spec} is a {adapter.task} model")
    dtask = getattr(data, "task", "classification")
    if dtask != adapter.task:
        raise IncompatibleError(f"{adapter.spec} is a {adapter.task} model but the data set {data.name!r} holds {dtask} targets; "
                                f"use a {dtask} model with a {dtask} probe (`freqprobe list probes`)")
