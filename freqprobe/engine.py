"""The one evaluation loop: a model over image variants of a data set, for every probe and task.

A probe declares *variant sources* (the original images, a decomposer's parts, adversarial images
and compositions of these) and *evaluators*; an :class:`Evaluation` streams the data once and, for
every batch, runs its named stages: the sources fill one preallocated stack of variant images
(:meth:`~Evaluation.produce`), the model runs over the stack — several variants concatenated into
one forward pass where the task allows it (:meth:`~Evaluation.forward`) — every evaluator (one
metric instance per variant, and the probe's own) sees the batch (:meth:`~Evaluation.update`), and
the per-sample columns the adapter declares are recorded (:meth:`~Evaluation.bookkeep`). Design
notes and the contract for plugins: docs/engine.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections import defaultdict
from typing import Any, Iterator, Mapping, Sequence

import torch

from . import guard as _guard
from .errors import (FreqprobeError, IncompatibleError, ModelError, NonFiniteOutputs, PluginError, StopRequested,
                     UserFacingError, exception_line)
from .evaluators import EvalStep, Metric, StateError, as_evaluator
from .interfaces import Batch, ProbeResult, SourceBatch, Variant, VariantSource
from .loading import iter_batches
from .sources import DecomposerSource, OriginalSource  # noqa: F401  (the loop's built-in sources, importable from here as before)
from .tables import SampleTable, extra_columns

PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
#: the input bytes of one forward the engine chooses on the CPU (see EngineSettings.forward_bytes)
CPU_FORWARD_BYTES = 24 << 20


# ----------------------------------------------------------------------------- settings
@dataclasses.dataclass
class EngineSettings:
    """How the loop runs on this device (defaults chosen per device; see docs/benchmarks.md)."""

    device: torch.device
    precision: str = "fp32"
    channels_last: bool = True
    #: images per forward pass; None: the whole stack of a batch's variants, up to ``stack_bytes`` of input
    forward_batch: int | None = None
    #: with no workers, read the next batches in a background thread (a GPU run; files decoded on the CPU)
    prefetch: bool = False
    #: worker processes reading the data (``--workers``, resolved: freqprobe.loading)
    workers: int = 0
    #: batches in pinned memory (a GPU run)
    pin: bool = False
    cudnn_benchmark: bool = False
    #: with ``forward_batch`` None: the most bytes of input images one forward pass takes
    stack_bytes: int = 256 << 20
    #: with ``forward_batch`` chosen by the engine (not ``--forward-batch``) on the CPU: at most this many bytes of
    #: input per forward, below glibc's 32 MiB mmap threshold, so that a forward's image-sized temporaries
    #: (channels_last copy, normalisation) reuse heap memory instead of fresh page-faulted maps: 224-px images
    #: then go 41 to a forward, CIFAR's 128 as before (measured: docs/benchmarks.md, "End to end")
    forward_bytes: int | None = None

    @classmethod
    def for_context(cls, ctx: Any) -> "EngineSettings":
        dev = ctx.device
        cuda = dev.type == "cuda"
        check_precision(dev, ctx.precision)
        fb = ctx.forward_batch
        if fb is not None and fb < 1:
            raise UserFacingError(f"--forward-batch must be at least 1, got {fb}")
        cap = None
        if fb is None and not cuda:
            fb = ctx.batch_size  # 2-core CPU: batch-sized forwards are fastest (docs/benchmarks.md)
            cap = CPU_FORWARD_BYTES
        from .loading import resolve_workers

        return cls(
            device=dev,
            precision=ctx.precision,
            channels_last=True if ctx.channels_last is None else bool(ctx.channels_last),
            forward_batch=fb,
            # decoding files in a thread overlaps the CPU's work too (measured: docs/benchmarks.md); arrays need not
            prefetch=cuda or not getattr(ctx.data, "in_memory", False),
            cudnn_benchmark=cuda,
            workers=resolve_workers(getattr(ctx, "workers", 0), ctx.data),
            pin=cuda,
            forward_bytes=cap,
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


def _to(x: Any, device: torch.device) -> Any:
    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, list):
        return [_to(t, device) for t in x]
    if isinstance(x, dict):
        return {k: _to(v, device) for k, v in x.items()}
    return x


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


# ----------------------------------------------------------------------------- what the loop accumulates
@dataclasses.dataclass
class EvalState:
    """What one evaluation accumulates: the evaluators (metrics first), the per-sample table, counts, timings."""

    variants: list
    evaluators: list
    table: SampleTable | None = None
    n: int = 0
    nonfinite: list = dataclasses.field(default_factory=list)
    timings: dict = dataclasses.field(default_factory=dict)
    extras: dict = dataclasses.field(default_factory=dict)
    #: how many of ``evaluators`` are the run's metrics (one per variant and metric class, variant-major)
    n_metrics: int = 0

    @property
    def metrics(self) -> list:
        return self.evaluators[: self.n_metrics]

    def merge(self, other: "EvalState") -> None:
        """Fold another shard's state in: evaluators through the contract (:meth:`Evaluator.merge`), counts summed,
        the other's per-sample rows appended after these (torchrun's gather puts round-robin shards' rows back in
        data order: :func:`freqprobe.distributed.gather_state`)."""
        for mine, theirs in zip(self.evaluators, other.evaluators):
            mine.merge(theirs)
        if self.table is not None and other.table is not None:
            self.table.extend(other.table)
        self.n += other.n
        self.nonfinite = [a + b for a, b in zip(self.nonfinite, other.nonfinite)]


@dataclasses.dataclass
class _Forwarded:
    """One batch after the model: per-variant outputs and per-sample values, the stacked values, non-finite counts."""

    outputs: dict
    values: dict
    stacked: Any
    bad: Any


def declared_variants(sources: Sequence[VariantSource]) -> list[Variant]:
    """Every source's declared variants in order; two sources declaring the same variant is a PluginError."""
    variants = [v for s in sources for v in s.variants()]
    seen: set = set()
    for v in variants:
        if v.key() in seen:
            raise PluginError(f"two variant sources produce the same variant {v.columns()}")
        seen.add(v.key())
    return variants


class Evaluation:
    """One pass of the data through the model, over every variant of ``sources``: the loop, as named stages.

    For each batch: :meth:`produce` (the variant images, into one preallocated stack where the
    task allows), :meth:`forward` (stacked or per variant), :meth:`update` (every evaluator sees
    the :class:`~freqprobe.evaluators.EvalStep`), :meth:`bookkeep` (per-sample rows, non-finite
    counts, progress); between batches :meth:`maybe_checkpoint`. :meth:`restore` puts a resumed
    segment back, :meth:`finish` adds timings and, under torchrun, gathers the ranks' states.
    """

    def __init__(self, ctx: Any, sources: Sequence[VariantSource], evaluators: Sequence[Any] = (), *,
                 samples: bool = True, constants: Mapping[str, Any] | None = None) -> None:
        self.ctx, self.sources = ctx, list(sources)
        self.settings = EngineSettings.for_context(ctx)
        self.dev = self.settings.device
        self.variants = declared_variants(self.sources)
        self.index_of = {v: i for i, v in enumerate(self.variants)}
        metrics = [_build_metric(cls, ctx, v) for v in self.variants for cls in ctx.metrics]
        evs = metrics + [as_evaluator(e) for e in evaluators]
        for ev in evs:
            _guard.call(_owner(ev), "reset()", ev.reset)
        self.state = EvalState(variants=self.variants, evaluators=evs, nonfinite=[0] * len(self.variants),
                               n_metrics=len(metrics))
        self.samples = samples
        self.constants = dict(constants or {})
        self.extra = extra_columns(self.variants)
        self.journal = ctx.journal
        n_total = len(ctx.data) if ctx.limit is None else min(ctx.limit, len(ctx.data))
        self.segment = self.journal.begin(ctx.transform or "", total=n_total) if self.journal is not None else None
        self.timer = StageTimer(self.dev)
        rescale = ctx.rescale
        self.rescale_all = bool(getattr(rescale, "applies_to_original", False))
        self.identity_rescale = getattr(rescale, "name", "") == "none"
        self.stack: Any = None
        self.pending: tuple | None = None
        self.number = 0  # how many batches of this process's share are done (the next one's position in the share)
        rank, world = ctx.shard or (0, 1)
        self._rank, self._world = rank, world
        self.start = 0
        self.data_wait = 0.0

    # -- the loop
    def run(self) -> EvalState:
        ctx, dev = self.ctx, self.dev
        if dev.type == "cpu":
            from .perf import prime_heap

            prime_heap()  # activations reuse heap blocks instead of fresh page-faulted maps (freqprobe/perf.py)
        was_training = bool(getattr(ctx.adapter.module, "training", False))
        ctx.adapter.prepare(channels_last=self.settings.channels_last)
        finished = self.restore()
        old_bench = torch.backends.cudnn.benchmark
        t_loop = time.perf_counter()
        try:
            torch.backends.cudnn.benchmark = self.settings.cudnn_benchmark
            with torch.inference_mode(), precision_context(dev, self.settings.precision):
                if not finished:
                    self.loop()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
        finally:
            torch.backends.cudnn.benchmark = old_bench
            ctx.adapter.module.train(was_training)  # a training loop that tracks per epoch gets its model back as it was
        return self.finish(time.perf_counter() - t_loop)

    def loop(self) -> None:
        it = iter(self.batches())
        while True:
            self.maybe_checkpoint()
            t = time.perf_counter()
            batch = next(it, None)
            self.data_wait += time.perf_counter() - t
            if batch is None:
                break
            self.step(batch)
        self.flush()
        if self.segment is not None:
            self.checkpoint(done=True)

    def batches(self) -> Iterator[Batch]:
        ctx = self.ctx
        return iter_batches(ctx.data, ctx.batch_size, start=self.start, limit=ctx.limit, shard=ctx.shard,
                            workers=self.settings.workers, pin=self.settings.pin, background=self.settings.prefetch)

    def step(self, batch: Batch) -> None:
        """One batch through the stages."""
        images, targets = _to(batch.images, self.dev), _to(batch.targets, self.dev)
        n = len(batch.indices)
        number = self.number * self._world + self._rank  # the batch's position in data order (the same in every shard)
        with self.timer.stage("decompose"):
            produced = self.produce(SourceBatch(images, targets, batch.indices, number))
        with self.timer.stage("inference"):
            fwd = self.forward(produced, images, targets, n)
        with self.timer.stage("update"):
            self.update(EvalStep(batch, number, self.variants, produced, fwd.outputs, fwd.values, targets))
        with self.timer.stage("bookkeeping"):
            self.bookkeep(batch, fwd, n)

    # -- stage 1: the variant images
    def produce(self, sb: SourceBatch) -> dict:
        """Every declared variant's images for this batch (rescaled where the policy applies)."""
        images = sb.images
        if isinstance(images, torch.Tensor) and self.ctx.adapter.stackable:
            k = len(self.variants)
            if self.stack is None or self.stack.shape[1:] != images.shape or self.stack.dtype != images.dtype:
                self.stack = torch.empty((k, *images.shape), dtype=images.dtype, device=self.dev)
            slots = {v: self.stack[i] for i, v in enumerate(self.variants)}
            self._collect(sb, slots)
            if not self.identity_rescale:
                for v in self.variants:
                    if v.component or self.rescale_all:
                        slots[v].copy_(self.ctx.rescale.apply(slots[v]))
            return slots
        produced = self._collect(sb, None)
        if self.identity_rescale:
            return produced
        return {v: (_rescale_list(self.ctx.rescale, x) if (v.component or self.rescale_all) else x) for v, x in produced.items()}

    def _collect(self, sb: SourceBatch, slots: dict | None) -> dict:
        produced: dict = {}
        for src in self.sources:
            for v, imgs in src.generate(sb, self.ctx, slots):
                if v not in self.index_of:
                    raise PluginError(f"{type(src).__name__} produced a variant it did not declare: {v.columns()}")
                if slots is None:
                    produced[v] = imgs
                    continue
                slot = slots[v]
                if not isinstance(imgs, torch.Tensor) or imgs.shape != slot.shape:
                    raise PluginError(f"{type(src).__name__} produced images of shape "
                                      f"{tuple(getattr(imgs, 'shape', ()))} for {v.columns()}; expected {tuple(slot.shape)}")
                if imgs.data_ptr() != slot.data_ptr() or imgs.stride() != slot.stride():
                    slot.copy_(imgs)
                produced[v] = slot
        missing = [v.columns() for v in self.index_of if v not in produced]
        if missing:
            raise PluginError(f"the variant sources did not produce {missing[0]} (and {len(missing) - 1} more) for a batch")
        return produced

    # -- stage 2: the model
    def forward(self, produced: dict, images: Any, targets: Any, n: int) -> _Forwarded:
        """The model's outputs per variant: the whole stack in forward passes of ``forward_batch`` images, or one per variant."""
        adapter, variants, k = self.ctx.adapter, self.variants, len(self.variants)
        if isinstance(images, torch.Tensor) and adapter.stackable:
            flat = self.stack.view(k * n, *images.shape[1:])
            with _model_call(adapter, self.number, n, images, self.settings):
                outputs = _forward(adapter, flat, self.settings)
            bad = _nonfinite_rows(outputs, k, n)
            vals = adapter.sample_values(outputs, targets.repeat(k) if isinstance(targets, torch.Tensor) else targets)
            per_out = {v: outputs[i * n:(i + 1) * n] for i, v in enumerate(variants)}
            per_vals = {v: {c: (t[i * n:(i + 1) * n] if t is not None else None) for c, t in vals.items()}
                        for i, v in enumerate(variants)}
            return _Forwarded(per_out, per_vals, vals, bad)
        per_out, per_vals = {}, {}
        for v in variants:
            with _model_call(adapter, self.number, n, images, self.settings):
                out = adapter.predict(produced[v])
            per_out[v] = out
            per_vals[v] = adapter.sample_values(out, targets)
        bad = torch.stack([_nonfinite_rows(per_out[v], 1, n).reshape(()) for v in variants])
        return _Forwarded(per_out, per_vals, None, bad)

    # -- stage 3: the evaluators
    def update(self, step: EvalStep) -> None:
        for ev in self.state.evaluators:
            _guard.call(_owner(ev), _what(ev, "update()"), ev.process, step)

    # -- stage 4: rows, counts, progress
    def bookkeep(self, batch: Batch, fwd: _Forwarded, n: int) -> None:
        vals = fwd.stacked
        if self.samples and vals is None:  # per-variant path: columns are concatenated in variant order
            vals = {c: _cat([fwd.values[v][c] for v in self.variants]) for c in self.ctx.adapter.sample_columns}
        target_cols = self.ctx.data.target_columns(batch.targets) if self.samples else {}
        if self.state.table is None and self.samples:
            cols = ["index", *target_cols, "variant", "param", *self.constants, *self.extra, *self.ctx.adapter.sample_columns]
            self.state.table = SampleTable(cols, sink=self.journal.csv() if self.journal is not None else None)
        self.flush()
        self.pending = (_HostValues({**(vals if self.samples else {}), "__nonfinite__": fwd.bad}, self.dev),
                        batch.indices.numpy(), _host_cols(target_cols), n)
        self.state.n += n
        self.number += 1
        if self.ctx.progress:
            self.ctx.progress(n)

    def flush(self) -> None:
        """The previous batch's host values: non-finite counts (a NaN fails the run here) and its per-sample rows."""
        if self.pending is None:
            return
        host, indices, target_cols, n = self.pending
        self.pending = None
        vals = host.get()
        bad = vals.pop("__nonfinite__", None)
        nonfinite = self.state.nonfinite
        if bad is not None:
            for i, c in enumerate(bad.tolist()):
                nonfinite[i] += int(c)
            if not self.ctx.allow_nonfinite and any(nonfinite):
                raise NonFiniteOutputs(_nonfinite_message(self.variants, nonfinite, self.state.n, self.ctx),
                                       {_variant_label(v, self.ctx.decomposer.param_name): c
                                        for v, c in zip(self.variants, nonfinite) if c}, self.state.n)
        if self.state.table is None:
            return
        for i, v in enumerate(self.variants):
            block = {"index": indices, **target_cols, **v.columns(), **self.constants}
            for col in self.ctx.adapter.sample_columns:
                block[col] = vals[col][i * n:(i + 1) * n] if vals[col] is not None else None
            self.state.table.append(block, n)

    # -- checkpoints and resume
    def maybe_checkpoint(self) -> None:
        """At a batch boundary: a checkpoint when one is due or a stop was asked for; then stop if asked."""
        from .journal import stop_signal

        if self.segment is not None and (stop_signal() is not None or self.journal.due()) and self.number > self.start:
            t = time.perf_counter()
            self.flush()  # on a GPU this waits for the last batch: counted in the checkpoint's cost
            self.checkpoint()
            self.journal.checkpoint_s = time.perf_counter() - t
        if stop_signal() is not None:
            n_total = len(self.ctx.data) if self.ctx.limit is None else min(self.ctx.limit, len(self.ctx.data))
            raise StopRequested(f"stopped after {self.state.n} of {n_total} samples", stop_signal())

    def checkpoint(self, done: bool = False) -> None:
        table = self.state.table
        self.segment.checkpoint(batches=self.number, n=self.state.n, columns=table.columns if table is not None else None,
                                rows=len(table) if table is not None else 0,
                                evaluators=[_saved_state(ev) for ev in self.state.evaluators],
                                nonfinite=list(self.state.nonfinite), done=done)

    def restore(self) -> bool:
        """Put a resumed segment's saved state back (evaluators, counts, the rows so far); whether it had finished."""
        seg = self.segment
        if seg is None or not seg.saved:
            return False
        saved = seg.saved
        for ev, st in zip(self.state.evaluators, saved["evaluators"]):
            _load_state(ev, st)
        self.state.nonfinite[:] = list(saved.get("nonfinite") or self.state.nonfinite)
        self.state.n = int(saved["n"])
        if self.samples and saved.get("columns"):
            table = SampleTable(saved["columns"])
            start = int(saved["rows_start"])
            table.load_csv_rows(self.journal.samples_path, start, start + int(saved["rows"]),
                                ["variant", "param", *self.constants, *self.extra])
            table.sink = self.journal.csv()
            self.state.table = table
        self.start = self.number = int(saved["batches"])
        if self.ctx.progress and self.state.n:
            self.ctx.progress(self.state.n)
        return bool(saved.get("done"))

    # -- the end
    def finish(self, wall: float) -> EvalState:
        timings = self.timer.results()
        for k in ("decompose_s", "inference_s", "update_s", "bookkeeping_s"):
            timings.setdefault(k, 0.0)
        timings["data_s"] = self.data_wait
        timings["evaluate_s"] = wall - self.data_wait
        self.state.timings = timings
        self.state.extras["engine"] = self.settings.describe()
        if self.ctx.dist is not None:  # torchrun: rank 0 merges every rank's share (freqprobe.distributed)
            from .distributed import gather_state

            gather_state(self.state, self.ctx.dist)
        return self.state


def _build_metric(cls: type, ctx: Any, variant: Variant) -> Metric:
    with _guard.guarded(cls, "the constructor"):
        return Metric.build(cls, ctx, variant)


def _owner(ev: Any) -> Any:
    """The object whose plugin is blamed when ``ev`` fails (a wrapped observer's own object)."""
    return getattr(ev, "observer", ev)


def _what(ev: Any, default: str) -> str:
    return "on_batch()" if hasattr(ev, "observer") else default


def _saved_state(ev: Any) -> dict:
    """An evaluator's state for a checkpoint; one a checkpoint cannot hold is marked (only a resume of the run is refused)."""
    try:
        state = ev.state_dict()
    except StateError as exc:
        return {"unsaved": str(exc)}
    return {"state": state}


def _load_state(ev: Any, saved: Mapping[str, Any]) -> None:
    if "unsaved" in saved:
        raise UserFacingError(f"cannot resume: {ev.label()} keeps its state in {saved['unsaved']}, which a checkpoint cannot "
                              "hold (declare it with add_state); leave out --resume to start again")
    try:
        ev.load_state_dict(saved["state"])
    except StateError as exc:
        raise UserFacingError(f"cannot resume: {exc}; leave out --resume to start again") from None


# ----------------------------------------------------------------------------- evaluate: the loop, then the result
def run_loop(ctx: Any, sources: Sequence[VariantSource], *, evaluators: Sequence[Any] = (), observers: Sequence[Any] = (),
             samples: bool = True, constants: Mapping[str, Any] | None = None) -> EvalState:
    """Stream ``ctx.data`` (its shard) once over every variant of ``sources``; the accumulated :class:`EvalState`
    (states of several shards :meth:`~EvalState.merge`; :func:`summarize` makes the result)."""
    return Evaluation(ctx, sources, [*evaluators, *observers], samples=samples, constants=constants).run()


def evaluate(ctx: Any, sources: Sequence[VariantSource], *, probe: str, evaluators: Sequence[Any] = (),
             observers: Sequence[Any] = (), samples: bool = True, constants: Mapping[str, Any] | None = None) -> ProbeResult:
    """Evaluate ``ctx.adapter`` on every variant of ``sources`` over ``ctx.data`` (its shard); a ProbeResult.

    ``evaluators`` see every batch besides the run's metrics (``observers`` of the earlier API are
    wrapped as evaluators); ``constants``: per-sample columns with one value for the whole
    evaluation (after ``param``).
    """
    state = run_loop(ctx, sources, evaluators=evaluators, observers=observers, samples=samples, constants=constants)
    return summarize(ctx, state, sources, probe=probe)


def summarize(ctx: Any, state: EvalState, sources: Sequence[VariantSource], *, probe: str) -> ProbeResult:
    """The :class:`ProbeResult` of a finished evaluation: the evaluators' rows (metrics first), extras and files."""
    base = {"probe": probe, "transform": ctx.transform, "decomposer": ctx.decomposer.name}
    extra_cols = extra_columns(state.variants)
    rows = []

    def add(got: list) -> None:
        for r in got:
            row = {**base, **r}
            row.setdefault("n", state.n)
            for c in extra_cols:
                row.setdefault(c, None)
            rows.append(row)

    publishing = ctx.dist is None or ctx.dist.is_main  # the other torchrun ranks publish nothing
    checked = publishing and not ctx.allow_nonfinite and state.n > 0  # a metric of zero samples answers NaN
    for ev in state.metrics:
        got = _metric_rows(ev)
        if checked:
            _check_metric_values(ev, got, state.n, ctx)
        add(got)
    if ctx.allow_nonfinite:  # the summary counts what --allow-nonfinite let through
        add([{**v.columns(), "metric": "nonfinite-outputs", "value": float(c)} for v, c in zip(state.variants, state.nonfinite)])
    extras: dict[str, Any] = {}
    for ev in state.evaluators[state.n_metrics:]:
        add(_guard.call(_owner(ev), _what(ev, "rows()"), ev.rows))
    for ev in state.evaluators:
        _merge_extras(extras, _guard.call(_owner(ev), _what(ev, "extras()"), ev.extras))
    dec = ctx.decomposer
    return ProbeResult(
        probe=probe, summary=rows, samples=state.table, components=tuple(dec.components), param_name=dec.param_name,
        variants=list(state.variants),
        extras={
            "class_names": list(ctx.data.class_names) if ctx.data.class_names else None,
            "timings": dict(state.timings),
            "engine": state.extras.get("engine"),
            "sources": [s.describe() for s in sources],
            "extra_columns": extra_cols,
            **extras,
        },
        evaluators=list(state.evaluators),
    )


def _metric_rows(m: Metric) -> list:
    """A metric's rows; whatever its ``compute()`` raises is one line naming the metric."""
    try:
        with _guard.guarded(m, "compute()"):
            return m.rows()
    except FreqprobeError:
        raise
    except Exception as exc:
        raise PluginError(f"metric {getattr(m, 'name', type(m).__name__)!r} failed in compute(): {type(exc).__name__}: {exc}") from exc


def _check_metric_values(m: Metric, rows: list, n: int, ctx: Any) -> None:
    """A registered metric's values must be finite (``--allow-nonfinite`` publishes them as they are)."""
    import math

    for r in rows:
        v = r.get("value")
        if isinstance(v, (int, float)) and not math.isfinite(v):
            label = _variant_label(m.variant, getattr(ctx.decomposer, "param_name", "param")) if m.variant else "the run"
            what = f" ({r['metric']})" if r.get("metric") not in (None, getattr(m, "name", None)) else ""
            raise PluginError(f"{_guard.describe(m, 'metric')} returned {v}{what} for {label} over {n} samples; a metric's "
                              "compute() must give finite numbers (NaN only before any sample); nothing was published "
                              "(--allow-nonfinite publishes such values as they are)")


def _variant_label(v: Variant, pn: str) -> str:
    """``low r=4`` / ``adversarial attack=pgd eps=0.03``: a variant in a message."""
    label = v.name + (f" {pn}={v.param:g}" if isinstance(v.param, (int, float)) else "")
    return label + "".join(f" {k}={val}" for k, val in v.extra)


def _merge_extras(into: dict, got: Mapping[str, Any]) -> None:
    """Extras of several evaluators: dict values under the same key merge (each metric adds its variant's detections)."""
    for k, v in (got or {}).items():
        if isinstance(v, Mapping) and isinstance(into.get(k), dict):
            into[k].update(v)
        else:
            into[k] = dict(v) if isinstance(v, Mapping) else v


def evaluate_sweep(ctx: Any, probe: Any, transforms: Sequence[Any]) -> ProbeResult:
    """The probe's evaluation once per model transform (each on a copy of the model); one combined result.

    Rows come from every evaluation; extras and the evaluators' files from the first (as one
    evaluation's), with each evaluation's own extras under ``extras["sweep"]``.
    """
    import copy

    results = []
    for t in transforms:
        label = ",".join(x for x in (ctx.transform, t.label()) if x)
        sub = ctx.replace(adapter=t.apply(copy.deepcopy(ctx.adapter)), transform=label)
        res = evaluate(sub, probe.sources(sub), probe=probe.name, evaluators=probe.evaluators(sub),
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
    skip = ("timings", "class_names", "engine", "sources", "extra_columns")
    extras["sweep"] = [{"transform": label, **{k: v for k, v in res.extras.items() if k not in skip}} for label, res in results]
    return ProbeResult(probe=first.probe, summary=[row for _, res in results for row in res.summary], samples=table,
                       components=first.components, param_name=first.param_name, variants=first.variants, extras=extras,
                       evaluators=first.evaluators)


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
            parts.append(f"{_variant_label(v, pn)}: {c}")
    shown = ", ".join(parts[:6]) + (f", ... ({len(parts) - 6} more variants)" if len(parts) > 6 else "")
    total = max(counts)
    transformed = f" (the model as transformed by {ctx.transform})" if ctx.transform else ""
    return (f"the model{transformed} returned non-finite outputs (NaN or inf) for {total} of the first {n} samples "
            f"({shown}); nothing was published. Check the weights, --mean/--std{', the transform' if transformed else ''} "
            "and the data, or allow them (--allow-nonfinite; allow_nonfinite=True from Python) to finish anyway and "
            "count them in the summary")


def _rescale_list(rescale, x):
    if isinstance(x, (list, tuple)):
        return [rescale.apply(t[None])[0] for t in x]
    return rescale.apply(x)


def _forward(adapter, x: torch.Tensor, settings: EngineSettings) -> torch.Tensor:
    fb = settings.forward_batch
    per_image = max(1, x[0].numel() * x.element_size()) if len(x) else 1
    if fb is None:  # the whole stack, bounded by the input bytes of one forward
        fb = max(1, settings.stack_bytes // per_image)
    if settings.forward_bytes:
        fb = min(fb, max(1, settings.forward_bytes // per_image))
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
