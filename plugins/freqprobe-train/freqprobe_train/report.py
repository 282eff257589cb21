"""The training folders' sections of ``freqprobe report`` (the ``report_folder`` hook): a run (``curves.csv``)
and a grid of runs (``grid.csv``), each with its curves at the last epoch and its figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any


#: the columns of curves.csv (grid.csv: ``setting`` first) and what their cells must hold (the report refuses a
#: damaged file in one line rather than show a nonsense table: docs/results.md)
CURVE_COLUMNS = ("epoch", "split", "variant", "param", "metric", "value", "n")
CELL_KINDS = {"epoch": "index", "value": "number", "n": "count"}


def read_curves_table(report: Any, path: Path, lead: tuple[str, ...] = ()) -> tuple[list[str], list[dict[str, str]]]:
    """``(header, rows)`` of a curves.csv / grid.csv, checked (``report.read_table``)."""
    return report.read_table(path, (*lead, *CURVE_COLUMNS), CELL_KINDS)


def is_training_run(folder: Path) -> bool:
    """A ``freqprobe train`` run folder: ``curves.csv``."""
    return (Path(folder) / "curves.csv").is_file()


def is_grid(folder: Path) -> bool:
    """A ``freqprobe train --grid`` folder: ``grid.csv`` (and one run folder per setting)."""
    return (Path(folder) / "grid.csv").is_file()


def last_epoch_table(report: Any, header: list[str], rows: list[dict[str, str]], lead: list[str]) -> str:
    """Per metric, one table of the last epoch's values: a row per ``lead`` key, split and variant, a column per radius."""
    if not rows:
        return "<p class=meta>(no curves yet)</p>"
    num = report.number
    parts = []
    lead = [c for c in lead if c in header]
    for m in dict.fromkeys(r.get("metric", "") for r in rows):
        mr = [r for r in rows if r.get("metric") == m]
        keys_lead = list(dict.fromkeys(tuple(r.get(c, "") for c in lead) for r in mr))
        body = []
        params = sorted({r.get("param", "") for r in mr if r.get("param", "")}, key=report.param_key)
        for k in keys_lead:
            kr = [r for r in mr if tuple(r.get(c, "") for c in lead) == k]
            last = max(int(num(r.get("epoch")) if num(r.get("epoch")) == num(r.get("epoch")) else 0) for r in kr)
            kr = [r for r in kr if num(r.get("epoch")) == last]
            for split in dict.fromkeys(r.get("split", "") for r in kr):
                sr = [r for r in kr if r.get("split") == split]
                for v in dict.fromkeys(r.get("variant", "") for r in sr):
                    cell = {r.get("param", ""): r.get("value") for r in sr if r.get("variant") == v}
                    body.append([*k, last, split, v, report.fmt(cell.get("", ""))]
                                + [report.fmt(cell.get(p, "")) for p in params])
        parts.append(f"<p class=meta>{report.escape(m)} at the last epoch</p>"
                     + report.table(lead + ["epoch", "split", "variant", "—"] + [report.fmt_param(p) for p in params], body,
                                    left=len(lead) + 3))
    return "".join(parts)


def train_section(folder: Path, report: Any) -> str:
    """A training run: heading (with its setting), the curves at the last epoch, ``curves.png``, the manifest."""
    manifest = report.read_manifest(folder)
    header, rows = read_curves_table(report, folder / "curves.csv")
    first = [f"setting {manifest['setting']}"] if manifest.get("setting") else []
    return "".join([report.heading(folder, manifest, report.level, first=first), last_epoch_table(report, header, rows, []),
                    report.images(folder, ["curves.png"]), report.manifest_block(manifest)])


def grid_section(folder: Path, report: Any) -> str:
    """A grid: every setting's curves at the last epoch, ``comparison.png``, then each run's own section."""
    header, rows = read_curves_table(report, folder / "grid.csv", ("setting",))
    h = f"h{report.level}"
    return "".join([f"<{h}>{report.escape(folder.name)} — training grid</{h}>",
                    last_epoch_table(report, header, rows, ["setting"]), report.images(folder, ["comparison.png"]),
                    report.subfolders(folder, report.level + 1)])
