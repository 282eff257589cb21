"""Probes across processes with torchrun: ``torchrun --nproc_per_node N -m freqprobe run ...``.

Each process (rank) evaluates every ``world``-th batch of the data (whole batches: every sample is
computed in the same batch as in one process, so nothing drifts in the last bit); at the end of the
evaluation loop the ranks send their states — metric states, per-sample rows, observer states,
counts — to rank 0 (torch.distributed's ``gather_object``: gloo on CPUs, and a gloo group beside
NCCL on GPUs for these small Python objects), which merges them in batch order and writes exactly
the files one process writes. The other ranks write nothing.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import os
from typing import Any

from .errors import UserFacingError
from .tables import SampleTable


@dataclasses.dataclass
class Dist:
    rank: int
    world: int
    local_rank: int
    group: Any = None  # the process group for Python objects (gloo)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def from_env() -> tuple[int, int, int] | None:
    """``(rank, world, local_rank)`` when started by torchrun with more than one process, else None."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return None
    if world <= 1:
        return None
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def setup(device: str) -> tuple[Dist | None, str]:
    """Join the torchrun job (once per process); returns the Dist and the device this rank uses."""
    env = from_env()
    if env is None:
        return None, device
    import torch
    import torch.distributed as dist

    rank, world, local_rank = env
    use_cuda = torch.cuda.is_available() and str(device) in ("auto", "cuda") or str(device).startswith("cuda")
    if use_cuda:
        if not torch.cuda.is_available():
            raise UserFacingError(f"--device {device} under torchrun, but torch sees no CUDA GPU here")
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(local_rank)
    elif str(device) == "auto":
        device = "cpu"
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        atexit.register(_leave)
    group = dist.new_group(backend="gloo") if use_cuda else None
    return Dist(rank, world, local_rank, group), device


def _leave() -> None:
    """At exit: wait until every rank is done, then take the process group down (a rank with no batches, done early,
    would otherwise tear its communication threads down under the others: an abort instead of exit code 0)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return
    with contextlib.suppress(Exception):
        dist.barrier()
    with contextlib.suppress(Exception):
        dist.destroy_process_group()


def gather_state(state: Any, d: Dist) -> Any:
    """Rank 0: ``state`` with every rank's merged in, through the evaluator contract (rows in the order of one process).

    Each rank sends its evaluators' :meth:`~freqprobe.evaluators.Evaluator.state_dict`, its
    per-sample rows and counts; rank 0 folds them in with :meth:`~freqprobe.evaluators.Evaluator.merge`.
    An evaluator that cannot merge (no declared state) is one line, not a result of one rank's share.
    Other ranks: ``state`` as is.
    """
    import torch.distributed as dist

    from .evaluators import StateError

    table = state.table
    try:
        states = [ev.state_dict() for ev in state.evaluators]
    except StateError as exc:
        raise UserFacingError(f"cannot merge across torchrun processes: {exc} cannot be saved (declare it with add_state)") from None
    payload = {
        "evaluators": states,
        "columns": table.columns if table is not None else None,
        "blocks": table.blocks if table is not None else [],
        "n": state.n,
        "nonfinite": [int(c) for c in state.nonfinite],
    }
    got: list | None = [None] * d.world if d.is_main else None
    dist.gather_object(payload, got, dst=0, group=d.group)
    if not d.is_main:
        return state
    for other in got[1:]:
        for ev, theirs in zip(state.evaluators, other["evaluators"]):
            try:
                ev.merge(theirs)
            except (StateError, NotImplementedError) as exc:
                raise UserFacingError(f"{exc}; it cannot be merged across torchrun processes") from None
    state.n = sum(p["n"] for p in got)
    state.nonfinite = [sum(p["nonfinite"][i] for p in got) for i in range(len(state.variants))]
    columns = next((p["columns"] for p in got if p["columns"] is not None), None)
    if columns is not None:
        per_batch = len(state.variants)
        chunks = [[p["blocks"][i:i + per_batch] for i in range(0, len(p["blocks"]), per_batch)] for p in got]
        order = [blk for b in range(sum(len(c) for c in chunks))  # batch b was rank b % world's (b // world)-th
                 for blk in chunks[b % d.world][b // d.world]]
        state.table = SampleTable.from_blocks(columns, order)
    return state
