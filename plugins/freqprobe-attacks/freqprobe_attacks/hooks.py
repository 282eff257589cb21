"""Hook implementations of the attacks plugin: exactly the hooks a third-party plugin uses."""

from __future__ import annotations

import csv
from pathlib import Path

from freqprobe import hookimpl


@hookimpl
def register_attacks():
    from .attacks import ATTACKS

    return list(ATTACKS)


@hookimpl
def register_probes():
    from .probe import RobustnessProbe

    return [RobustnessProbe]


@hookimpl
def register_commands(cli):
    from .table2 import table2_command

    cli.add_command(table2_command)


@hookimpl
def report_result(result, context):
    """``corollary1.csv``: every Corollary 1 witness (right on x, wrong on x_l at r) with d∞ and d2."""
    rows = result.extras.get("corollary1")
    out = getattr(context, "out_dir", None)
    if rows is None or out is None:
        return
    with open(Path(out) / "corollary1.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["param", "index", "label", "pred_original", "pred_low", "linf", "l2"])
        for p, i, y, po, pl, linf, l2 in rows:
            w.writerow([f"{p:g}", i, y, po, pl, f"{linf:.6f}", f"{l2:.6f}"])
