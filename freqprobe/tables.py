"""The two tables every run produces: the tidy summary and the per-sample table, and their CSV form."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

if TYPE_CHECKING:  # annotations only: numpy and torch are imported where they are used
    import numpy as np

#: the summary's fixed columns; variants with extra columns (attack, eps...) add theirs after ``param``
SUMMARY_COLUMNS = ["probe", "transform", "decomposer", "variant", "param", "metric", "value", "n"]


def fmt_param(p: Any) -> str:
    """A parameter as a table cell: ``8`` for 8.0, ``2.5``, ``""`` for none."""
    import numpy as np

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
    import numpy as np
    import torch

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

    def __init__(self, columns: Sequence[str], *, sink: Any = None, float_format: str = "%.6f") -> None:
        self.columns = list(columns)
        self._blocks: list[tuple[int, dict[str, Any]]] = []
        self._n = 0
        #: a binary file the rows stream into as they arrive (the run's ``samples.csv``); the
        #: header is written when the file is empty
        self.sink = sink
        self.float_format = float_format
        if sink is not None and sink.tell() == 0:
            sink.write(_header(self.columns))

    def append(self, block: Mapping[str, Any], n: int) -> None:
        """Add ``n`` rows."""
        import numpy as np
        import torch

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
        if self.sink is not None and n:
            try:
                self.sink.write(_block_text(self.columns, n, got, self.float_format).encode())
            except OSError as exc:  # e.g. a full disk: name the file (a write error alone does not)
                name = getattr(self.sink, "name", None)
                if exc.filename is not None or not isinstance(name, str):
                    raise
                raise OSError(exc.errno, exc.strerror, name) from exc

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

    @property
    def blocks(self) -> list[tuple[int, dict[str, Any]]]:
        """The rows as they arrived: ``(n, columns)`` blocks, one per batch and variant."""
        return list(self._blocks)

    @classmethod
    def from_blocks(cls, columns: Sequence[str], blocks: Sequence[tuple[int, dict[str, Any]]]) -> "SampleTable":
        """A table of ``blocks`` (as :attr:`blocks` gives them) in the order given: how shards' rows are put back together."""
        table = cls(columns)
        for n, block in blocks:
            table._blocks.append((n, block))
            table._n += n
        return table

    def _blocks_where(self, eq: Mapping[str, Any]) -> list[tuple[int, dict[str, Any]]]:
        import numpy as np

        return [(n, b) for n, b in self._blocks if all(not isinstance(b.get(k), np.ndarray) and b.get(k) == v for k, v in eq.items())]

    @staticmethod
    def _concat(blocks: list[tuple[int, dict[str, Any]]], name: str) -> np.ndarray:
        import numpy as np

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
        """Write all rows as CSV, block by block (vectorised formatting); the same bytes as a streamed table."""
        with open(path, "wb") as f:
            f.write(_header(self.columns))
            for n, b in self._blocks:
                if n:
                    f.write(_block_text(self.columns, n, b, float_format).encode())

    def load_csv_rows(self, path: Path, start: int, stop: int, scalar_columns: Sequence[str]) -> None:
        """Add rows ``start:stop`` (0 = the first after the header) of a CSV this table wrote, without
        streaming them again: how a resumed run gets back the rows it finished before it stopped.

        ``scalar_columns`` (the variant columns) are constant within a block, as when the rows were
        made; numbers are read back as numbers (integers as int64).
        """
        if stop <= start:
            return
        try:
            self._load_rows(path, start, stop, scalar_columns)
        except (OSError, ValueError, IndexError, csv.Error) as exc:
            from .errors import UserFacingError

            raise UserFacingError(f"cannot resume: {path} does not hold the rows its checkpoint records ({exc}; "
                                  "damaged or cut short); leave out --resume to start again") from None

    def _load_rows(self, path: Path, start: int, stop: int, scalar_columns: Sequence[str]) -> None:
        with open(path, newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header != self.columns:
                raise ValueError(f"its columns are {header}, expected {self.columns}")
            rows = [r for i, r in enumerate(reader) if start <= i < stop]
        if len(rows) != stop - start:
            raise ValueError(f"{len(rows)} of {stop - start} rows")
        if any(len(r) != len(self.columns) for r in rows):
            raise ValueError(f"a row without {len(self.columns)} cells")
        scalar = [c for c in self.columns if c in set(scalar_columns)]
        blocks = []
        i = 0
        while i < len(rows):
            key = [rows[i][self.columns.index(c)] for c in scalar]
            j = i + 1
            while j < len(rows) and [rows[j][self.columns.index(c)] for c in scalar] == key:
                j += 1
            block: dict[str, Any] = {}
            for k, c in enumerate(self.columns):
                cells = [r[k] for r in rows[i:j]]
                block[c] = _parse_scalar(cells[0]) if c in scalar else _parse_column(cells)
            blocks.append((j - i, block))
            i = j
        for n, block in blocks:  # all or nothing
            self._blocks.append((n, block))
            self._n += n


def _header(columns: Sequence[str]) -> bytes:
    return (",".join(_csv_cell(c) for c in columns) + "\n").encode()


def _block_text(columns: Sequence[str], n: int, block: Mapping[str, Any], float_format: str) -> str:
    cells = [_format_cells(block[c], n, float_format) for c in columns]
    return "".join(",".join(row) + "\n" for row in zip(*cells))


def _parse_scalar(s: str) -> Any:
    if s == "":
        return None
    if s in ("true", "false"):
        return s == "true"
    try:
        return float(s)
    except ValueError:
        return s


def _parse_column(cells: list[str]) -> np.ndarray:
    import numpy as np

    for conv in (np.int64, np.float64):
        try:
            return np.array([conv(c) for c in cells])
        except (TypeError, ValueError, OverflowError):
            continue
    if all(c in ("true", "false") for c in cells):
        return np.array([c == "true" for c in cells])
    return np.array(cells, dtype=object)


def _format_cells(v: Any, size: int, float_format: str) -> list[str]:
    import numpy as np

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
