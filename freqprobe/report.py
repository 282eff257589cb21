"""``freqprobe report``: one self-contained HTML page summarising run folders.

Every image is embedded as a base64 PNG ``data:`` URI; the page has no external CSS, JS or fonts
and loads nothing from the network (the only link is to the paper). Folder kinds, told apart by
their files:

- a probe run (``manifest.json`` + ``summary.csv``), see docs/results.md;
- a training run (``curves.csv``) and a grid of them (``grid.csv``), see docs/training.md;
- a Table 2 folder (``table2.csv``) with one probe run per row, see docs/attacks.md.
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
from typing import Any, Iterable

from .errors import UserFacingError

PAPER_URL = "https://arxiv.org/abs/1905.13545"
PAPER_TITLE = "High-frequency Component Helps Explain the Generalization of Convolutional Neural Networks"
MAX_PANELS = 6
SCORE_VARIANT = "hfc-reliance"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_BASE_COLUMNS = ("probe", "transform", "decomposer", "variant", "param", "metric", "value", "n")

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


def _kind(d: Path) -> str | None:
    if (d / "table2.csv").is_file():
        return "table2"
    if (d / "grid.csv").is_file():
        return "grid"
    if (d / "curves.csv").is_file():
        return "train"
    if (d / "manifest.json").is_file() and (d / "summary.csv").is_file():
        return "probe"
    return None


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            r = csv.DictReader(f)
            return list(r.fieldnames or []), list(r)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserFacingError(f"cannot read {path}: {exc}") from None


def _read_manifest(d: Path) -> dict[str, Any]:
    p = d / "manifest.json"
    if not p.is_file():
        return {}
    try:
        m = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserFacingError(f"cannot read {p}: {exc}") from None
    return m if isinstance(m, dict) else {}


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
    if len(metrics) > 2 and "AP" in metrics:  # coco-map: one row per variant and radius, the metrics as columns
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


def _score_lines(manifest: dict[str, Any], rows: list[dict[str, str]]) -> list[str]:
    scores = manifest.get("hfc_reliance")
    if isinstance(scores, list) and scores:
        from .scores import format_score

        pn = (manifest.get("decomposer") or {}).get("param_name") or "r"
        lines = []
        for s in scores:
            try:
                lines.append(format_score({**s, "value": math.nan if s.get("value") is None else s["value"]}, pn))
            except Exception:  # an older or hand-edited manifest: fall back to the summary rows
                lines = []
                break
        if lines:
            return lines
    out = []
    for r in rows:
        if r.get("variant") == SCORE_VARIANT:
            t = f", transform {r['transform']}" if r.get("transform") else ""
            out.append(f"HFC-reliance ({r.get('metric', '')}{t}): {_fmt(r.get('value'))}")
    return out


def _heading(d: Path, manifest: dict[str, Any], kind: str) -> str:
    bits = []
    if kind == "train" and manifest.get("setting"):
        bits.append(f"setting {manifest['setting']}")
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


def _images(d: Path) -> str:
    paths = [d / n for n in ("accuracy.png", "curves.png", "comparison.png")]
    paths += sorted(d.glob("figure2_*.png"), key=_natural)
    paths += sorted((d / "panels").glob("*.png"), key=_natural)[:MAX_PANELS] if (d / "panels").is_dir() else []
    return "".join(_img(p) for p in paths if p.is_file())


def _section_head(d: Path, table: str, kind: str, level: int) -> tuple[dict, list, list, list[str]]:
    """A run folder's manifest, its table (header, rows), and the section's heading and command line."""
    manifest = _read_manifest(d)
    header, rows = _read_csv(d / table)
    h = f"h{level}"
    parts = [f"<{h}>{_e(_heading(d, manifest, kind))}</{h}>"]
    if manifest.get("command"):
        parts.append(f"<p class=meta><code>{_e(manifest['command'])}</code></p>")
    return manifest, header, rows, parts


def _probe_section(d: Path, level: int) -> tuple[str, dict[str, Any] | None]:
    manifest, header, rows, parts = _section_head(d, "summary.csv", "probe", level)
    parts.append(_summary_tables(header, rows))
    parts += [f"<p class=score>{_e(line)}</p>" for line in _score_lines(manifest, rows)]
    parts.append(_images(d))
    parts.append(_manifest_block(manifest))
    return "".join(parts), _overlay_data(d, manifest, header, rows)


def _overlay_data(d: Path, manifest: dict[str, Any], header: list[str], rows: list[dict[str, str]]):
    """The accuracy (or first metric) of the original and the first two components per radius, or None."""
    extra = _extra_columns(header)
    rows = [r for r in rows if not r.get("transform") and not any(r.get(c) for c in extra)]
    metrics = list(dict.fromkeys(r.get("metric", "") for r in rows if r.get("variant") != SCORE_VARIANT))
    metric = "accuracy" if "accuracy" in metrics else ("AP" if "AP" in metrics else (metrics[0] if metrics else None))
    comps = (manifest.get("decomposer") or {}).get("components") or ["low", "high"]
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
            "param_name": (manifest.get("decomposer") or {}).get("param_name") or "param"}


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


# ------------------------------------------------------------------ training, grids, table2


def _last_epoch_table(header: list[str], rows: list[dict[str, str]], lead: list[str]) -> str:
    if not rows:
        return "<p class=meta>(no curves yet)</p>"
    parts = []
    lead = [c for c in lead if c in header]
    for m in dict.fromkeys(r.get("metric", "") for r in rows):
        mr = [r for r in rows if r.get("metric") == m]
        keys_lead = list(dict.fromkeys(tuple(r.get(c, "") for c in lead) for r in mr))
        body = []
        params = sorted({r.get("param", "") for r in mr if r.get("param", "")}, key=_param_key)
        for k in keys_lead:
            kr = [r for r in mr if tuple(r.get(c, "") for c in lead) == k]
            last = max(int(_num(r.get("epoch")) if _num(r.get("epoch")) == _num(r.get("epoch")) else 0) for r in kr)
            kr = [r for r in kr if _num(r.get("epoch")) == last]
            for split in dict.fromkeys(r.get("split", "") for r in kr):
                sr = [r for r in kr if r.get("split") == split]
                for v in dict.fromkeys(r.get("variant", "") for r in sr):
                    cell = {r.get("param", ""): r.get("value") for r in sr if r.get("variant") == v}
                    body.append([*k, last, split, v, _fmt(cell.get("", ""))] + [_fmt(cell.get(p, "")) for p in params])
        parts.append(f"<p class=meta>{_e(m)} at the last epoch</p>"
                     + _table(lead + ["epoch", "split", "variant", "—"] + [_fmt_param(p) for p in params], body,
                              left=len(lead) + 3))
    return "".join(parts)


def _train_section(d: Path, level: int) -> str:
    manifest, header, rows, parts = _section_head(d, "curves.csv", "train", level)
    parts += [_last_epoch_table(header, rows, []), _images(d), _manifest_block(manifest)]
    return "".join(parts)


def _grid_section(d: Path, level: int) -> str:
    header, rows = _read_csv(d / "grid.csv")
    h = f"h{level}"
    parts = [f"<{h}>{_e(d.name)} — training grid</{h}>", _last_epoch_table(header, rows, ["setting"]), _images(d)]
    return "".join(parts)


def _md_inline(text: str) -> str:
    """Escaped text with `code` spans."""
    bits = text.split("`")
    return "".join(f"<code>{_e(b)}</code>" if i % 2 else _e(b) for i, b in enumerate(bits))


def markdown_tables_to_html(md: str) -> str:
    """The small Markdown of ``table2.md``: headings, paragraphs, pipe tables (all text escaped)."""
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


def _table2_section(d: Path, level: int, overlays: list) -> str:
    h = f"h{level}"
    parts = [f"<{h}>{_e(d.name)} — Table 2</{h}>"]
    md = d / "table2.md"
    if md.is_file():
        parts.append(markdown_tables_to_html(md.read_text(encoding="utf-8", errors="replace")))
    else:
        header, rows = _read_csv(d / "table2.csv")
        parts.append(_table(header, [[r.get(c, "") for c in header] for r in rows], left=3))
    parts.append(_subruns(d, level + 1, overlays))
    return "".join(parts)


def _subruns(d: Path, level: int, overlays: list) -> str:
    out = []
    for sub in sorted((p for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")), key=_natural):
        body = _section(sub, level, overlays)
        if body:
            out.append(f'<section class="run sub">{body}</section>')
    return "".join(out)


def _section(d: Path, level: int, overlays: list) -> str | None:
    kind = _kind(d)
    if kind == "probe":
        body, ov = _probe_section(d, level)
        if ov is not None:
            overlays.append(ov)
        return body
    if kind == "train":
        return _train_section(d, level)
    if kind == "grid":
        return _grid_section(d, level) + _subruns(d, level + 1, overlays)
    if kind == "table2":
        return _table2_section(d, level, overlays)
    return None


# ------------------------------------------------------------------ the page


def build_report(run_dirs: Iterable[str | os.PathLike], *, title: str | None = None) -> str:
    """The HTML page (a string) for ``run_dirs``; a folder that is no run is a :class:`UserFacingError`."""
    dirs = [Path(d) for d in run_dirs]
    if not dirs:
        raise UserFacingError("no run folders given")
    for d in dirs:
        if not d.is_dir():
            raise UserFacingError(f"{d} is not a folder")
        if _kind(d) is None:
            raise UserFacingError(f"{d} is not a freqprobe run folder (no manifest.json + summary.csv, curves.csv, "
                                  "grid.csv or table2.csv)")
    overlays: list[dict[str, Any]] = []
    sections = [f'<section class="run">{_section(d, 2, overlays)}</section>' for d in dirs]
    title = title or "freqprobe report"
    head = [f"<h1>{_e(title)}</h1>",
            f'<p class=meta>{len(dirs)} folder(s). Paper: <a href="{_e(PAPER_URL)}">{_e(PAPER_TITLE)}</a>.</p>']
    if overlays:
        head.append("<h2>Low and high parts vs radius, all runs</h2>"
                    + _png_bytes_to_img(_overlay_png(overlays), "overlay of accuracy vs radius"))
    return ("<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
            f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
            + "".join(head) + "".join(sections) + "</body></html>\n")


def write_report(run_dirs: Iterable[str | os.PathLike], out_path: str | os.PathLike, *, title: str | None = None) -> Path:
    """Write the report to ``out_path`` (atomically: a temporary file beside it, then ``os.replace``)."""
    out = Path(out_path)
    if out.suffix.lower() not in (".html", ".htm"):
        raise UserFacingError(f"--out {out} must be an .html file")
    if out.is_dir():
        raise UserFacingError(f"--out {out} is a folder; give an .html file")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise UserFacingError(f"folder {parent} does not exist; create it or choose another --out")
    page = build_report(run_dirs, title=title)
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
