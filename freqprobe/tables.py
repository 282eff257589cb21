"""The two tables every run produces: the tidy summary and the per-sample table, and their CSV form."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch

#: the summary's fixed columns; variants with extra columns (attack, eps...) add theirs after ``param``
SUMMARY_COLUMNS = ["probe", "transform", "decomposer", "variant", "param", "metric", "value", "n"]


def fmt_param(p: Any) -> str:
    """A parameter as a table cell: ``8`` for 8.0, ``2.5``, ``""`` for none."""
    if p is None or (isinstance(p, str) and p == ""):
        return ""
    if isinstance(p, bool):
        return str(p).lower()
    if isinstance(p, (int, float, np.integer, np.floating)):
        f = float(p)
        return str(int(f)) if f.is_integer() else f"{f:g}"
    return str(p)


def extra_columns(variants: Iterable[Any]) -> list[str]:
    """The extra columns of a set of variants, in first-seen order."""
    cols: list[str] = []
    for v in variants:
        for k, _ in v.extra:
            if k not in cols:
                cols.append(k)
    return cols


def summary_columns(extra: Sequence[str] = ()) -> list[str]:
    i = SUMMARY_COLUMNS.index("param") + 1
    return SUMMARY_COLUMNS[:i] + [c for c in extra if c not in SUMMARY_COLUMNS] + SUMMARY_COLUMNS[i:]


def write_summary(rows: Sequence[Mapping[str, Any]], path: Path, extra: Sequence[str] = ()) -> None:
    cols = summary_columns(extra)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for row in rows:
            cells = {c: fmt_param(row.get(c)) for c in cols}  # names pass through, numbers as 8 / 2.5, None empty
            cells["value"] = f"{row['value']:.6f}"
            w.writerow(cells)


def _as_numpy(v: Any) -> np.ndarray:
    if isinstance(v, torch.Tensor):
        return v.detach().cpu().numpy()
    return np.asarray(v)


class SampleTable:
    """A columnar per-sample table: one row per sample and variant.

    Columns, in order: ``index``, the target columns (``label``), the variant columns (``variant``,
    ``param`` and any extra ones), then the adapter's columns (``pred``, ``confidence`` for a
    classifier). Rows arrive in blocks (one per batch and variant); a column given as a scalar
    (the variant's columns) holds that value for the whole block.
    """

    def __init__(self, columns: Sequence[str]) -> None:
        self.columns = list(columns)
        self._blocks: list[tuple[int, dict[str, Any]]] = []
        self._n = 0

    def append(self, block: Mapping[str, Any], n: int) -> None:
        """Add ``n`` rows."""
        got = {}
        for c in self.columns:
            v = block.get(c)
            if isinstance(v, (torch.Tensor, np.ndarray, list)):
                a = _as_numpy(v)
                if len(a) != n:
                    raise ValueError(f"column {c!r} has {len(a)} values for {n} rows")
                got[c] = a
            else:
                got[c] = v
        self._blocks.append((n, got))
        self._n += n

    def insert_constant(self, name: str, value: Any, *, after: str) -> None:
        """Add a column holding ``value`` on every row so far, placed after column ``after``."""
        if name in self.columns:
            raise ValueError(f"the per-sample table already has a column {name!r}")
        self.columns.insert(self.columns.index(after) + 1, name)
        for _, b in self._blocks:
            b[name] = value

    def extend(self, other: "SampleTable") -> None:
        """Append another table's rows (same columns), e.g. another shard's."""
        if other.columns != self.columns:
            raise ValueError(f"cannot merge per-sample tables with columns {other.columns} into {self.columns}")
        self._blocks.extend(other._blocks)
        self._n += other._n

    def __len__(self) -> int:
        return self._n

    def _blocks_where(self, eq: Mapping[str, Any]) -> list[tuple[int, dict[str, Any]]]:
        return [(n, b) for n, b in self._blocks if all(not isinstance(b.get(k), np.ndarray) and b.get(k) == v for k, v in eq.items())]

    @staticmethod
    def _concat(blocks: list[tuple[int, dict[str, Any]]], name: str) -> np.ndarray:
        parts = [b[name] if isinstance(b[name], np.ndarray) else np.full(n, b[name], dtype=object) for n, b in blocks]
        if not parts:
            return np.empty(0)
        if any(p.dtype == object for p in parts):
            arr = np.concatenate([p.astype(object) for p in parts])
            try:  # a scalar column of numbers reads back as numbers
                return arr.astype(float) if all(isinstance(x, (int, float, np.number)) for x in arr) else arr
            except (TypeError, ValueError):
                return arr
        return np.concatenate(parts)

    def column(self, name: str, **eq: Any) -> np.ndarray:
        """One column over all rows, or over the rows whose variant columns equal ``eq`` (``variant="low", param=8.0``)."""
        return self._concat(self._blocks_where(eq), name)

    def where(self, **eq: Any) -> dict[str, np.ndarray]:
        """All columns of the rows whose variant columns equal ``eq``."""
        blocks = self._blocks_where(eq)
        return {c: self._concat(blocks, c) for c in self.columns}

    def write_csv(self, path: Path, float_format: str = "%.6f") -> None:
        """Write all rows as CSV, block by block (vectorised formatting)."""
        with open(path, "w", newline="") as f:
            f.write(",".join(self.columns) + "\n")
            for n, b in self._blocks:
                if n:
                    cells = [_format_cells(b[c], n, float_format) for c in self.columns]
                    f.writelines(",".join(row) + "\n" for row in zip(*cells))


def _format_cells(v: Any, size: int, float_format: str) -> list[str]:
    if not isinstance(v, np.ndarray):
        return [_csv_cell(fmt_param(v))] * size
    if v.dtype.kind in "iub":
        return v.astype(np.int64).astype(str).tolist() if v.dtype.kind != "b" else np.where(v, "true", "false").tolist()
    if v.dtype.kind == "f":
        return [float_format % x for x in v.tolist()]
    return [_csv_cell(str(x)) for x in v.tolist()]


def _csv_cell(s: str) -> str:
    if any(ch in s for ch in ',"\n'):
        return '"' + s.replace('"', '""') + '"'
    return s
