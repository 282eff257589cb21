"""Reading a data source's batches: in this process, or read and decoded in worker processes (``--workers``).

Every command that streams data (``run``, ``decompose``, ``train``, a model's fit) reads it with
:func:`iter_batches`. The core cuts the samples into batches (:func:`~freqprobe.interfaces.batch_indices`:
limit, shuffle, torchrun shard, the batches a resumed run already finished) and hands each batch's
indices to the source's :meth:`~freqprobe.interfaces.DataSource.load`. With ``workers`` ≥ 1 those
calls run in a :class:`torch.utils.data.DataLoader`'s worker processes, one whole batch per call,
delivered in data order (pinned memory for a GPU, at most ``workers × depth`` batches ahead), so
a batch holds the same values whatever the worker count: the results are identical for every
``--workers``. A data source gets workers without doing anything, as long as it loads by index;
one that overrides :meth:`~freqprobe.interfaces.DataSource.batches` is read in this process.

A failure in a worker is the same one-line error as in this process; a worker that dies (killed,
out of memory) is one line too. Workers ignore SIGINT and SIGTERM: the main process stops at a
batch boundary (docs/cli.md, "Interrupting and resuming") and takes its workers down with it.
"""

from __future__ import annotations

import logging
import os
import pickle
import queue
import signal
import threading
from typing import Any, Iterator, Sequence

from .errors import FreqprobeError, UserFacingError, exception_line
from .interfaces import Batch, DataSource, batch_indices

log = logging.getLogger("freqprobe.loading")

#: the most worker processes ``--workers auto`` starts per process (a GPU box with many cores)
MAX_AUTO_WORKERS = 16
#: ``--workers auto`` starts workers only with this many cores per process: on 2 cores the main loop
#: needs the second one, and reading ahead in a thread was faster than a worker (docs/benchmarks.md)
MIN_AUTO_CORES = 4


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def loads_by_index(data: DataSource) -> bool:
    """Whether ``data`` reads batches through :meth:`~DataSource.load` (so workers can read them)."""
    return type(data).batches is DataSource.batches and type(data).load is not DataSource.load


def check_workers(workers: Any, flag: str = "--workers") -> int | None:
    """``workers`` as None (auto) or a count ≥ 0; anything else is one :class:`UserFacingError` line."""
    if workers is None or (isinstance(workers, str) and workers.strip().lower() == "auto"):
        return None
    if isinstance(workers, str):
        try:
            workers = int(workers.strip())
        except ValueError:
            raise UserFacingError(f"{flag} must be a number of worker processes (0: read in this process) or 'auto', "
                                  f"got {workers!r}") from None
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise UserFacingError(f"{flag} must be a number of worker processes >= 0 (0: read in this process) or 'auto', "
                              f"got {workers!r}")
    return workers


def resolve_workers(workers: Any, data: DataSource) -> int:
    """The worker processes to read ``data`` with: ``workers`` itself, or for None ('auto') the cores
    available to this process less one for the main loop, shared among torchrun's local ranks, at
    most :data:`MAX_AUTO_WORKERS`, none below :data:`MIN_AUTO_CORES` cores — and 0 for a source whose
    images are already decoded in memory (:attr:`~DataSource.in_memory`: a worker would only copy
    them) or that cannot load by index."""
    n = check_workers(workers)
    if not loads_by_index(data):
        if n:
            log.info("data set %r reads its own batches (it overrides batches()): read in this process, not in %d workers",
                     getattr(data, "name", type(data).__name__), n)
        return 0
    if n is not None:
        return n
    if getattr(data, "in_memory", False):
        return 0
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    per_rank = available_cores() // local
    if per_rank < MIN_AUTO_CORES:
        return 0
    return max(0, min(MAX_AUTO_WORKERS, per_rank - 1))


def iter_batches(
    data: DataSource, batch_size: int, *, start: int = 0, limit: int | None = None, shuffle: bool = False,
    seed: int = 0, shard: tuple[int, int] | None = None, workers: int = 0, pin: bool = False, depth: int = 2,
    background: bool = False,
) -> Iterator[Batch]:
    """The :class:`Batch` es of ``data`` from the ``start``-th on (as :meth:`DataSource.batches`), read with
    ``workers`` worker processes (0: in this process; None: :func:`resolve_workers`' 'auto').

    ``pin``: in pinned memory (a GPU run). ``background`` (always with ``pin``): with no workers,
    read ahead in one background thread while the caller works (image decoding releases the GIL).
    The batches and their values do not depend on ``workers``.
    """
    workers = resolve_workers(workers, data)
    ahead = pin or background
    if not loads_by_index(data):
        if shuffle:
            it = (b for i, b in enumerate(data.batches(batch_size, limit=limit, shuffle=True, seed=seed, shard=shard))
                  if i >= start)
        else:
            it = data.batches_from(start, batch_size, limit=limit, shard=shard)
        return iter(Prefetcher(it, pin=pin, depth=depth)) if ahead else it
    order = list(batch_indices(len(data), batch_size, limit=limit, shuffle=shuffle, seed=seed, shard=shard))[start:]
    if not order:
        return iter(())
    if workers == 0:
        it = (_load(data, idx) for idx in order)
        return iter(Prefetcher(it, pin=pin, depth=depth)) if ahead else it
    return _from_workers(data, order, min(workers, len(order)), pin=pin, depth=depth)


def _load(data: DataSource, idx: Any) -> Batch:
    from .guard import guarded

    with guarded(data, "load()"):
        return data.load(idx)


# ------------------------------------------------------------------------------- worker processes
class _Failed:
    """An exception raised in a worker, carried to the main process and raised there as it was."""

    def __init__(self, exc: BaseException) -> None:
        try:
            pickle.loads(pickle.dumps(exc))
            self.exc: BaseException = exc
        except Exception:
            cls = UserFacingError if isinstance(exc, FreqprobeError) else RuntimeError
            self.exc = cls(str(exc) if isinstance(exc, FreqprobeError) else exception_line(exc))
        self.exc.__traceback__ = None


class _ByBatch:
    """A map-style data set whose i-th item is the whole i-th batch (``DataLoader(batch_size=None)``)."""

    def __init__(self, data: DataSource, order: Sequence[Any]) -> None:
        self.data, self.order = data, order

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i: int) -> Any:
        try:
            return _load(self.data, self.order[i])
        except BaseException as exc:  # noqa: BLE001 - carried to the main process and raised there
            return _Failed(exc)


def _keep(item: Any) -> Any:
    return item


def _worker_init(_: int) -> None:
    # the main process decides when to stop (at a batch boundary, keeping its checkpoint); its workers
    # end when it does (the loader's shutdown, or the loader's watchdog when the main process is gone)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _from_workers(data: DataSource, order: list, workers: int, *, pin: bool, depth: int) -> Iterator[Batch]:
    import multiprocessing as mp

    from torch.utils.data import DataLoader

    methods = mp.get_all_start_methods()
    loader = DataLoader(
        _ByBatch(data, order), batch_size=None, shuffle=False, num_workers=workers, collate_fn=_keep,
        pin_memory=pin, prefetch_factor=depth, persistent_workers=False, worker_init_fn=_worker_init,
        # fork: a source (and a third-party plugin's class) need not be picklable; the workers never touch a GPU
        multiprocessing_context="fork" if "fork" in methods else None,
    )
    it = iter(loader)
    try:
        while True:
            try:
                item = next(it)
            except StopIteration:
                return
            except RuntimeError as exc:
                if "DataLoader worker" not in str(exc):
                    raise
                raise UserFacingError(f"a data worker process died while reading {getattr(data, 'name', 'the data')!r} "
                                      f"({str(exc).splitlines()[0].rstrip('. ')}); rerun with --workers 0 to read in "
                                      "this process and see why") from None
            if isinstance(item, _Failed):
                raise item.exc
            yield item
    finally:
        del it  # shuts the workers down now, not at garbage collection


# ------------------------------------------------------------------------------- one background thread
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
    import torch

    if isinstance(x, torch.Tensor):
        return x.pin_memory()
    if isinstance(x, list):
        return [_pin(t) for t in x]
    if isinstance(x, dict):
        return {k: _pin(v) for k, v in x.items()}
    return x


__all__ = ["MAX_AUTO_WORKERS", "MIN_AUTO_CORES", "Prefetcher", "available_cores", "check_workers", "iter_batches", "loads_by_index",
           "resolve_workers"]
