"""``freqprobe report``: one self-contained HTML page summarising run folders.

Every image is embedded as a base64 PNG ``data:`` URI; the page has no external CSS, JS or fonts
and loads nothing from the network (the only link is to the paper). What a folder holds is told by
the ``report_folder`` hook: each implementation recognises its own folders and returns their
section, built with the pieces of :class:`Report`. The core's probe runs (``manifest.json`` +
``summary.csv``, docs/results.md) are the built-in implementation; plugins add theirs.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterable, Sequence

from .errors import UserFacingError

PAPER_URL = "https://arxiv.org/abs/1905.13545"
PAPER_TITLE = "High-frequency Component Helps Explain the Generalization of Convolutional Neural Networks"
MAX_PANELS = 6
SCORE_VARIANT = "hfc-reliance"
#: the columns a probe run's summary.csv must have for its section (docs/results.md)
SUMMARY_REQUIRED = ("variant", "param", "metric", "value")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

_CSS = """
body{font-family:sans-serif;margin:1.5em auto;max-width:1150px;color:#222;background:#fff}
h1{border-bottom:2px solid #444}
section.run{border-top:1px solid #bbb;margin-top:2em;padding-top:.5em}
section.sub{margin-left:1.5em}
table{border-collapse:collapse;margin:.6em 0}
th,td{border:1px solid #ccc;padding:.2em .6em;text-align:right;font-variant-numeric:tabular-nums}
th{background:#eee}
td.l,th.l{text-align:left}
img{max-width:100%;border:1px solid #ddd;margin:.3em 0;display:block}
.score{font-weight:bold}
.meta{color:#555;font-size:.9em}
pre{background:#f6f6f6;padding:.6em;overflow:auto;font-size:.8em}
"""


# ------------------------------------------------------------------ reading
def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            r = csv.DictReader(f)
            return list(r.fieldnames or []), list(r)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserFacingError(f"cannot read {path}: {exc}") from None


#: what each kind of checked column of :func:`_read_table` must hold
_CELL_KINDS = {
    "number": "a number",  # nan and inf count (a run with --allow-nonfinite writes them)
    "count": "a whole number >= 0 or empty",
    "index": "a whole number",
}
_JSON_KINDS = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "true/false", type(None): "null"}


def _cell_ok(kind: str, text: str) -> bool:
    if kind == "number":
        return not math.isnan(_num(text)) or text.strip().lower() in ("nan", "+nan", "-nan")
    if kind == "count" and text == "":
        return True
    return bool(re.fullmatch(r"-?\d+" if kind == "index" else r"\d+", text.strip()))


def _read_table(path: Path, columns: Sequence[str] = (), kinds: dict[str, str] | None = None) -> tuple[list[str], list[dict[str, str]]]:
    """``(header, rows)`` of the CSV ``path``, or a one-line :class:`UserFacingError` naming the file and what is wrong.

    Refused: a file that cannot be read or is not UTF-8 text, an empty one, a header without each of ``columns``
    (or with a name twice), a row with more or fewer fields than the header, no row at all, and a cell of a
    column in ``kinds`` (``{column: "number" | "count" | "index"}``) that is not what its kind says. What the
    report then shows comes from a file that is what it claims to be (docs/results.md).
    """
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise UserFacingError(f"{path} is empty (no header line); not a readable table")
            missing = [c for c in columns if c not in header]
            if missing:
                first = ",".join(header)[:60]
                raise UserFacingError(f"{path} is not the table it should be: no column {', '.join(missing)} "
                                      f"(its first line: {first!r})")
            if len(set(header)) != len(header):
                raise UserFacingError(f"{path}: a column name occurs twice in the header ({','.join(header)[:60]!r})")
            rows = [_table_row(path, reader.line_num, header, raw, kinds or {}) for raw in reader]
    except UnicodeDecodeError as exc:
        raise UserFacingError(f"{path} is not a CSV text file (not UTF-8: {exc.reason} at byte {exc.start})") from None
    except (OSError, csv.Error) as exc:
        raise UserFacingError(f"cannot read {path}: {exc}") from None
    if not rows:
        raise UserFacingError(f"{path} holds no rows (only its header); nothing to report")
    return header, rows


def _table_row(path: Path, line: int, header: list[str], raw: list[str], kinds: dict[str, str]) -> dict[str, str]:
    if len(raw) != len(header):
        raise UserFacingError(f"{path} line {line}: {len(raw)} fields where the header has {len(header)} (a damaged file)")
    row = dict(zip(header, raw))
    for col, kind in kinds.items():
        if col in row and not _cell_ok(kind, row[col]):
            raise UserFacingError(f"{path} line {line}: {col} is {row[col]!r}, not {_CELL_KINDS[kind]}")
    return row


def _read_manifest(d: Path) -> dict[str, Any]:
    """The folder's ``manifest.json`` as a dict (``{}`` when there is none); unreadable or not an object is one line."""
    p = d / "manifest.json"
    if not p.is_file():
        return {}
    try:
        m = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserFacingError(f"cannot read {p}: {exc}") from None
    if not isinstance(m, dict):
        raise UserFacingError(f"{p} holds {_JSON_KINDS.get(type(m), type(m).__name__)}, not a JSON object: "
                              "not a freqprobe manifest")
    return m


def _sub(manifest: dict[str, Any], key: str) -> dict[str, Any]:
    """``manifest[key]`` when it is an object, else ``{}`` (a hand-edited manifest must not break a section)."""
    v = manifest.get(key)
    return v if isinstance(v, dict) else {}


def _spec(v: Any) -> str:
    if isinstance(v, dict):
        for k in ("spec", "name", "callable"):
            if v.get(k):
                return str(v[k])
        return ""
    return "" if v is None else str(v)


def _num(s: Any) -> float:
    try:
        return float(s)
    except (TypeError, ValueError):
        return math.nan


def _fmt(v: Any) -> str:
    x = _num(v)
    if x != x:
        return str(v) if v not in (None, "") else ""
    return f"{x:.4f}"


def _fmt_param(p: str) -> str:
    x = _num(p)
    return f"{x:g}" if x == x else p


def _param_key(p: str):
    x = _num(p)
    return (0, x, "") if x == x else (1, 0.0, p)


# ------------------------------------------------------------------ HTML pieces


def _e(s: Any) -> str:
    return html.escape(str(s), quote=True)


def _png_bytes_to_img(data: bytes, alt: str) -> str:
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode("ascii")}">'


def _img(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    if not data.startswith(_PNG_MAGIC):
        return ""
    return f"<figure>{_png_bytes_to_img(data, path.name)}<figcaption class=meta>{_e(path.name)}</figcaption></figure>"


def _table(header: list[str], rows: Iterable[list[Any]], left: int = 1) -> str:
    out = ["<table><thead><tr>"]
    out += [f'<th{" class=l" if i < left else ""}>{_e(h)}</th>' for i, h in enumerate(header)]
    out.append("</tr></thead><tbody>")
    for row in rows:
        out.append("<tr>" + "".join(f'<td{" class=l" if i < left else ""}>{_e(c)}</td>' for i, c in enumerate(row)) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _natural(p: Path):
    return [(0, float(t), "") if re.fullmatch(r"\d+(?:\.\d+)?", t) else (1, 0.0, t) for t in re.split(r"(\d+(?:\.\d+)?)", p.name)]


# ------------------------------------------------------------------ probe runs
def _extra_columns(header: list[str]) -> list[str]:
    if "param" in header and "metric" in header:
        return header[header.index("param") + 1:header.index("metric")]
    return []


def _summary_tables(header: list[str], rows: list[dict[str, str]]) -> str:
    rows = [r for r in rows if r.get("variant") != SCORE_VARIANT]
    if not rows:
        return "<p class=meta>(empty summary)</p>"
    extra = _extra_columns(header)
    lead = [c for c in ("transform",) if any(r.get(c) for r in rows)] + ["variant"] + extra
    metrics = list(dict.fromkeys(r.get("metric", "") for r in rows))
    parts = []
    if len(metrics) > 4:  # many numbers per variant (a detection metric's twelve): one row per variant and radius, metrics as columns
        keys = list(dict.fromkeys(tuple(r.get(c, "") for c in lead) + (r.get("param", ""),) for r in rows))
        cell = {(tuple(r.get(c, "") for c in lead) + (r.get("param", ""),), r.get("metric", "")): r.get("value") for r in rows}
        body = [[*k[:-1], _fmt_param(k[-1])] + [_fmt(cell.get((k, m), "")) for m in metrics] for k in keys]
        parts.append(_table(lead + ["param"] + metrics, body, left=len(lead) + 1))
    else:  # one table per metric: variants × params
        for m in metrics:
            mr = [r for r in rows if r.get("metric") == m]
            params = sorted({r.get("param", "") for r in mr if r.get("param", "")}, key=_param_key)
            keys = list(dict.fromkeys(tuple(r.get(c, "") for c in lead) for r in mr))
            cell = {(tuple(r.get(c, "") for c in lead), r.get("param", "")): r.get("value") for r in mr}
            ns = sorted({r.get("n", "") for r in mr if r.get("n")})
            body = []
            for k in keys:
                vals = [_fmt(cell.get((k, p), "")) for p in params]
                body.append([*k, _fmt(cell.get((k, ""), ""))] + vals)
            cap = f"{m}" + (f" (n={', '.join(ns)})" if ns else "")
            parts.append(f"<p class=meta>{_e(cap)}</p>" + _table(lead + ["—"] + [_fmt_param(p) for p in params], body,
                                                                  left=len(lead)))
    return "".join(parts)


def _backs(score: Any, row: dict[str, str]) -> bool:
    """Whether the summary row ``row`` of the score holds the manifest's ``score`` (same metric, transform, value)."""
    if not isinstance(score, dict) or str(score.get("metric")) != row.get("metric", ""):
        return False
    if str(score.get("transform") or "") != (row.get("transform") or ""):
        return False
    try:
        v = math.nan if score.get("value") is None else float(score["value"])
    except (TypeError, ValueError):
        return False
    return f"{v:.6f}" == f"{_num(row.get('value')):.6f}"


def _score_lines(manifest: dict[str, Any], rows: list[dict[str, str]]) -> list[str]:
    """One line per score row of the summary: in the manifest's words (its range) when the manifest holds that very
    score, else from the row alone. A manifest score that the summary does not hold is not shown."""
    from .scores import format_score

    scores = manifest.get("hfc_reliance")
    scores = scores if isinstance(scores, list) else []
    pn = str(_sub(manifest, "decomposer").get("param_name") or "r")
    out = []
    for r in rows:
        if r.get("variant") != SCORE_VARIANT:
            continue
        line = None
        for s in scores:
            if _backs(s, r):
                try:
                    line = format_score({**s, "value": math.nan if s.get("value") is None else s["value"]}, pn)
                except Exception:  # an older or hand-edited manifest entry: the row's own line
                    line = None
                break
        if line is None:
            t = f", transform {r['transform']}" if r.get("transform") else ""
            line = f"HFC-reliance ({r.get('metric', '')}{t}): {_fmt(r.get('value'))}"
        out.append(line)
    return out


def _heading(d: Path, manifest: dict[str, Any], first: Sequence[str] = ()) -> str:
    bits = list(first)
    for label, key in (("model", "model"), ("data", "data"), ("probe", "probe")):
        s = _spec(manifest.get(key))
        if s:
            bits.append(f"{label} {s}")
    return f"{d.name}" + (f" — {' · '.join(bits)}" if bits else "")


def _manifest_block(manifest: dict[str, Any]) -> str:
    if not manifest:
        return ""
    text = json.dumps(manifest, indent=2, sort_keys=False, default=str)
    return f"<details><summary>manifest.json</summary><pre>{_e(text)}</pre></details>"


def _images(d: Path, names: Sequence[str] = (), patterns: Sequence[str] = (), limit: int | None = None) -> str:
    """The PNGs ``names`` of ``d`` (in that order), then those matching each glob of ``patterns`` (natural order, ``limit`` each)."""
    paths = [d / n for n in names]
    for pat in patterns:
        paths += sorted(d.glob(pat), key=_natural)[:limit]
    return "".join(_img(p) for p in paths if p.is_file())


def _overlay_data(d: Path, manifest: dict[str, Any], header: list[str], rows: list[dict[str, str]]):
    """The accuracy (or first metric) of the original and the first two components per radius, or None."""
    extra = _extra_columns(header)
    rows = [r for r in rows if not r.get("transform") and not any(r.get(c) for c in extra)]
    metrics = list(dict.fromkeys(r.get("metric", "") for r in rows if r.get("variant") != SCORE_VARIANT))
    plot_metrics = _sub(manifest, "probe").get("plot_metrics")
    preferred = ["accuracy", *(plot_metrics if isinstance(plot_metrics, list) else [])]
    metric = next((m for m in preferred if m in metrics), metrics[0] if metrics else None)
    comps = _sub(manifest, "decomposer").get("components")
    comps = comps if isinstance(comps, list) and all(isinstance(c, str) for c in comps) and comps else ["low", "high"]
    if metric is None or len(comps) < 2:
        return None
    rows = [r for r in rows if r.get("metric") == metric]
    curves = {}
    for c in comps[:2]:
        pts = sorted((_num(r.get("param")), _num(r.get("value"))) for r in rows if r.get("variant") == c)
        curves[c] = [p for p in pts if p[0] == p[0]]
    if not any(curves.values()):
        return None
    orig = [_num(r.get("value")) for r in rows if r.get("variant") == "original"]
    return {"label": d.name, "metric": metric, "components": comps[:2], "curves": curves,
            "original": orig[0] if orig else math.nan,
            "param_name": str(_sub(manifest, "decomposer").get("param_name") or "param")}


def _overlay_png(runs: list[dict[str, Any]]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    colours = [f"C{i % 10}" for i in range(len(runs))]
    for run, col in zip(runs, colours):
        (c_low, c_high), curves = run["components"], run["curves"]
        if curves[c_low]:
            ax.plot(*zip(*curves[c_low]), ls="--", marker="o", color=col, label=f"{run['label']}: {c_low}")
        if curves[c_high]:
            ax.plot(*zip(*curves[c_high]), ls=":", marker="s", color=col, label=f"{run['label']}: {c_high}")
        if run["original"] == run["original"]:
            ax.axhline(run["original"], ls="-", lw=1, color=col, alpha=.7, label=f"{run['label']}: original")
    ys = [y for r in runs for c in r["components"] for _, y in r["curves"][c]] + [r["original"] for r in runs]
    ys = [y for y in ys if y == y]
    if ys and 0 <= min(ys) and max(ys) <= 1:  # accuracies: the whole range, so runs compare at a glance
        ax.set_ylim(-0.02, 1.02)
    pn = {r["param_name"] for r in runs}
    ax.set_xlabel("radius" if pn == {"r"} else " / ".join(sorted(pn)))
    ax.set_ylabel(" / ".join(sorted({r["metric"] for r in runs})))
    ax.set_title("low part (dashed) and high part (dotted) vs radius; original (solid)")
    ax.grid(alpha=.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _md_inline(text: str) -> str:
    """Escaped text with `code` spans."""
    bits = text.split("`")
    return "".join(f"<code>{_e(b)}</code>" if i % 2 else _e(b) for i, b in enumerate(bits))


def markdown_tables_to_html(md: str) -> str:
    """A small Markdown (a plugin's tables file): headings, paragraphs, pipe tables (all text escaped)."""
    out, table = [], []

    def flush():
        if table:
            cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in table]
            cells = [c for c in cells if not all(re.fullmatch(r":?-{1,}:?", x) for x in c)]
            if cells:
                head, body = cells[0], cells[1:]
                out.append("<table><thead><tr>" + "".join(f"<th>{_md_inline(c)}</th>" for c in head) + "</tr></thead><tbody>"
                           + "".join("<tr>" + "".join(f"<td>{_md_inline(c)}</td>" for c in r) + "</tr>" for r in body)
                           + "</tbody></table>")
            table.clear()

    for line in md.splitlines():
        if line.lstrip().startswith("|"):
            table.append(line)
            continue
        flush()
        m = re.match(r"(#{1,6})\s+(.*)", line)
        if m:
            out.append(f"<p><b>{_md_inline(m.group(2))}</b></p>")
        elif line.strip():
            out.append(f"<p>{_md_inline(line.strip())}</p>")
    flush()
    return "".join(out)



# ------------------------------------------------------------------ the pieces a section is built of
class Report:
    """One report page being built: what a ``report_folder`` implementation uses to render its folder.

    Text helpers (``escape``, ``fmt``, ``fmt_param``), reading (``read_csv``, ``read_table`` (checked), ``read_manifest``),
    HTML pieces (``table``, ``images``, ``manifest_block``, ``markdown``), the core's probe-run
    section (``probe_section``), ``subfolders`` (each sub-folder through the hook again) and
    ``add_overlay`` (a run's low/high curves on the page's overlay figure). An implementation
    receives it as ``report`` with ``report.level``, the heading level of its section.
    """

    def __init__(self, pm: Any) -> None:
        self.pm = pm
        self.overlays: list[dict[str, Any]] = []

    # text
    escape = staticmethod(_e)
    fmt = staticmethod(_fmt)
    fmt_param = staticmethod(_fmt_param)
    param_key = staticmethod(_param_key)
    number = staticmethod(_num)
    natural = staticmethod(_natural)
    # reading
    read_csv = staticmethod(_read_csv)
    read_table = staticmethod(_read_table)
    read_manifest = staticmethod(_read_manifest)
    # HTML
    table = staticmethod(_table)
    image = staticmethod(_img)
    images = staticmethod(_images)
    manifest_block = staticmethod(_manifest_block)
    markdown = staticmethod(markdown_tables_to_html)
    png = staticmethod(_png_bytes_to_img)

    def heading(self, folder: Path, manifest: dict[str, Any], level: int, first: Sequence[str] = ()) -> str:
        """``<hN>`` with the folder's name (``first`` bits, then model, data and probe), then its command line."""
        h = f"h{level}"
        out = f"<{h}>{_e(_heading(folder, manifest, first))}</{h}>"
        if manifest.get("command"):
            out += f"<p class=meta><code>{_e(manifest['command'])}</code></p>"
        return out

    def probe_section(self, folder: Path, level: int, *, images: Sequence[str] = (), patterns: Sequence[str] = ()) -> str:
        """The section of a probe run: summary tables, scores, plots (and ``images``, ``patterns`` more), manifest."""
        manifest = _read_manifest(folder)
        header, rows = _read_table(folder / "summary.csv", SUMMARY_REQUIRED, {"value": "number", "n": "count"})
        parts = [self.heading(folder, manifest, level), _summary_tables(header, rows)]
        parts += [f"<p class=score>{_e(line)}</p>" for line in _score_lines(manifest, rows)]
        parts.append(_images(folder, ["accuracy.png", *images], ["figure2_*.png"]))
        parts.append(_images(folder, [], patterns, MAX_PANELS))
        parts.append(_manifest_block(manifest))
        ov = _overlay_data(folder, manifest, header, rows)
        if ov is not None:
            self.add_overlay(ov)
        return "".join(parts)

    def add_overlay(self, data: dict[str, Any]) -> None:
        """A run's curves (``label``, ``metric``, ``components``, ``curves``, ``original``, ``param_name``) on the overlay."""
        self.overlays.append(data)

    def section(self, folder: Path, level: int) -> str | None:
        """The section of ``folder`` from the first ``report_folder`` implementation that recognises it, or None."""
        return self.pm.hook.report_folder(folder=Path(folder), report=_Level(self, level))

    def subfolders(self, folder: Path, level: int) -> str:
        """Every sub-folder that some implementation recognises, as nested sections (natural order)."""
        out = []
        for sub in sorted((p for p in Path(folder).iterdir() if p.is_dir() and not p.name.startswith(".")), key=_natural):
            body = self.section(sub, level)
            if body:
                out.append(f'<section class="run sub">{body}</section>')
        return "".join(out)


class _Level:
    """The :class:`Report` as a ``report_folder`` implementation sees it: ``report.level`` is its heading level."""

    def __init__(self, report: Report, level: int) -> None:
        self._report, self.level = report, level

    def __getattr__(self, name: str) -> Any:
        return getattr(self._report, name)


def is_probe_run(folder: Path) -> bool:
    """A probe run's folder: ``manifest.json`` and ``summary.csv``."""
    return (Path(folder) / "manifest.json").is_file() and (Path(folder) / "summary.csv").is_file()


# ------------------------------------------------------------------ the comparison across runs
def probe_runs(dirs: Iterable[Path]) -> list[Path]:
    """The probe runs among ``dirs`` and, for a study's folder (``study.json``: one run folder per model), its runs."""
    out = []
    for d in dirs:
        if is_probe_run(d):
            out.append(d)
        elif (Path(d) / "study.json").is_file():
            out += sorted((p for p in d.iterdir() if p.is_dir() and is_probe_run(p)), key=_natural)
    return out


def _model_label(manifest: dict[str, Any]) -> str:
    model = _sub(manifest, "model")
    label = _spec(manifest.get("model"))
    ckpt = model.get("checkpoint")
    return f"{label} ({Path(str(ckpt)).name})" if ckpt else label


def comparison_rows(dirs: Iterable[Path]) -> tuple[list[str], list[list[Any]]]:
    """One row per (model, data) over every probe run found: the original accuracy, the HFC-reliance score (lfc-hfc),
    the mean heat-map error below/above the split radius per budget (fourier-heatmap) and each band's accuracy (bands),
    ranked by HFC-reliance (highest first), then by original accuracy. Unreadable runs are left out."""
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for d in probe_runs(dirs):
        try:
            manifest = _read_manifest(d)
            header, rows = _read_table(d / "summary.csv", SUMMARY_REQUIRED, {"value": "number", "n": "count"})
        except UserFacingError:
            continue
        extra = [c for c in _extra_columns(header) if c != "eps"]
        g = groups.setdefault((_model_label(manifest), _spec(manifest.get("data"))), {})
        for r in rows:
            if r.get("transform") or any(r.get(c) for c in extra):
                continue  # attacks, kernel smoothing...: not the model's plain frequency profile
            v, m, p, val = r.get("variant"), r.get("metric"), r.get("param", ""), _num(r.get("value"))
            if v == "original" and m == "accuracy":
                g.setdefault("original accuracy", val)
            elif v == SCORE_VARIANT and m == "accuracy":
                g["HFC-reliance"] = val
            elif v == "band" and m == "accuracy":
                g[f"band {p}"] = val
            elif v == "heatmap" and m == "error" and p != "all":
                g[f"heat-map error r{p} (eps {_fmt_param(r.get('eps', ''))})"] = val
    if not groups:
        return [], []
    keys: list[str] = []
    for g in groups.values():
        keys += [k for k in g if k not in keys]
    order = ["HFC-reliance", "original accuracy"]
    cols = [k for k in order if k in keys] + sorted((k for k in keys if k.startswith("heat-map")), key=_param_key)
    cols += [k for k in keys if k.startswith("band ")]

    def rank(item):
        g = item[1]
        a, b = g.get("HFC-reliance", math.nan), g.get("original accuracy", math.nan)
        return (-(a if a == a else -math.inf), -(b if b == b else -math.inf))

    out = []
    for (model, data), g in sorted(groups.items(), key=rank):
        out.append([model, data, *[g.get(c) for c in cols]])
    return ["model", "data", *cols], out


def _comparison_section(dirs: list[Path]) -> str:
    header, rows = comparison_rows(dirs)
    if len(rows) < 2:
        return ""
    body = [[r[0], r[1], *("" if v is None else _fmt(v) for v in r[2:])] for r in rows]
    return ("<h2>Comparison across runs</h2><p class=meta>One row per model and data, ranked by HFC-reliance "
            "(then original accuracy); empty cells: that probe was not run for the model.</p>"
            + _table(header, body, left=2))


# ------------------------------------------------------------------ the page
def build_report(run_dirs: Iterable[str | os.PathLike], *, title: str | None = None, pm: Any = None) -> str:
    """The HTML page (a string) for ``run_dirs``; a folder no implementation recognises is a :class:`UserFacingError`."""
    if pm is None:
        from .plugins import default_plugin_manager

        pm = default_plugin_manager()
    dirs = [Path(d) for d in run_dirs]
    if not dirs:
        raise UserFacingError("no run folders given")
    report = Report(pm)
    sections = []
    for d in dirs:
        if not d.is_dir():
            raise UserFacingError(f"{d} is not a folder")
        body = report.section(d, 2)
        if body is None:
            raise UserFacingError(f"{d} is not a freqprobe run folder: no installed report section recognises it (a probe run "
                                  "has manifest.json and summary.csv; plugins add their kinds, see `freqprobe plugins`)")
        sections.append(f'<section class="run">{body}</section>')
    title = title or "freqprobe report"
    head = [f"<h1>{_e(title)}</h1>",
            f'<p class=meta>{len(dirs)} folder(s). Paper: <a href="{_e(PAPER_URL)}">{_e(PAPER_TITLE)}</a>.</p>']
    head.append(_comparison_section(dirs))
    if report.overlays:
        head.append("<h2>Low and high parts vs radius, all runs</h2>"
                    + _png_bytes_to_img(_overlay_png(report.overlays), "overlay of accuracy vs radius"))
    return ("<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
            f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
            + "".join(head) + "".join(sections) + "</body></html>\n")


def write_report(run_dirs: Iterable[str | os.PathLike], out_path: str | os.PathLike, *, title: str | None = None,
                 pm: Any = None) -> Path:
    """Write the report to ``out_path`` (atomically: a temporary file beside it, then ``os.replace``)."""
    out = Path(out_path)
    if out.suffix.lower() not in (".html", ".htm"):
        raise UserFacingError(f"--out {out} must be an .html file")
    if out.is_dir():
        raise UserFacingError(f"--out {out} is a folder; give an .html file")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise UserFacingError(f"folder {parent} does not exist; create it or choose another --out")
    page = build_report(run_dirs, title=title, pm=pm)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=parent)
    except OSError as exc:
        raise UserFacingError(f"cannot write {out}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(page)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise UserFacingError(f"cannot write {out}: {exc.strerror or exc}") from None
    return out


__all__ = ["PAPER_TITLE", "PAPER_URL", "Report", "build_report", "comparison_rows", "is_probe_run", "markdown_tables_to_html",
           "probe_runs", "write_report"]
