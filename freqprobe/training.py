"""Fitting a classifier with the paper's vanilla recipe (Adam, batch 100, pixels in [0,1])."""

from __future__ import annotations

import logging
import time
from typing import Callable

import torch

from .interfaces import DataSource, ModelAdapter
from .journal import check_stop
from .loading import iter_batches

log = logging.getLogger("freqprobe.training")


def fit(
    adapter: ModelAdapter,
    data: DataSource,
    *,
    epochs: int,
    lr: float = 1e-4,
    batch_size: int = 100,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: Callable[[int], None] | None = None,
    on_epoch: Callable[[int, dict], None] | None = None,
    workers: int | None = 0,
) -> dict:
    """Train ``adapter.module`` on ``data`` (its train split) with Adam and cross-entropy.

    Images stay in [0,1]; the adapter normalises; ``workers`` read them (freqprobe.loading). Returns a record
    for the manifest.
    """
    torch.manual_seed(seed)
    adapter.to(device)
    if torch.device(device).type == "cpu":
        from .perf import prime_heap

        prime_heap()
    module = adapter.module
    opt = torch.optim.Adam(module.parameters(), lr=lr)
    loss_fn = torch.nn.CrossEntropyLoss()
    history = []
    t0 = time.perf_counter()
    module.train()
    for epoch in range(epochs):
        correct = total = 0
        loss_sum = 0.0
        for x, y, _ in iter_batches(data, batch_size, shuffle=True, seed=seed * 1000 + epoch, workers=workers):
            check_stop("fitting")  # SIGINT/SIGTERM under the CLI: stop between batches
            x, y = x.to(device), y.to(device)
            opt.zero_grad(set_to_none=True)
            logits = adapter.forward(x)
            loss = loss_fn(logits, y)
            loss.backward()
            opt.step()
            loss_sum += float(loss.detach()) * len(y)
            correct += int((logits.argmax(1) == y).sum())
            total += len(y)
            if progress:
                progress(len(y))
        rec = {"epoch": epoch + 1, "loss": loss_sum / max(total, 1), "train_accuracy": correct / max(total, 1)}
        history.append(rec)
        log.info("epoch %d/%d: loss %.4f, train accuracy %.4f", epoch + 1, epochs, rec["loss"], rec["train_accuracy"])
        if on_epoch:
            on_epoch(epoch + 1, rec)
    module.eval()
    return {
        "optimizer": "Adam",
        "lr": lr,
        "batch_size": batch_size,
        "epochs": epochs,
        "train_n": len(data),
        "history": history,
        "seconds": time.perf_counter() - t0,
    }
