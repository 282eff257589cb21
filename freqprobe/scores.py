"""Single-number summaries of a run's tidy summary rows: the HFC-reliance score.

The paper's conclusion asks that "the performance of low-frequent counterparts needs to be
reported together with the performance of the original images". :func:`hfc_reliance` turns the
``lfc-hfc`` rows into one number per model: how much of the original accuracy is lost when only
the smooth (low-frequency) part of the images is kept, averaged over the evaluated radius range.
Definition and a worked example: docs/results.md, "The HFC-reliance score".

Pure Python/numpy: works on ``ProbeResult.summary`` rows and on rows read back from
``summary.csv`` (strings; empty cells for none).
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

#: the ``variant`` of the summary rows that hold the score
VARIANT = "hfc-reliance"
#: the summary's fixed columns (freqprobe.tables.SUMMARY_COLUMNS, repeated so this module imports nothing of the package)
_FIXED = ("probe", "transform", "decomposer", "variant", "param", "metric", "value", "n")
#: metrics that are never scored: counts, not scores (``--allow-nonfinite``)
_NOT_SCORES = ("nonfinite-outputs",)


def _empty(v: Any) -> bool:
    return v is None or (isinstance(v, str) and v == "") or (isinstance(v, float) and math.isnan(v))


def _is_number(v: Any) -> bool:
    try:
        return float(v) == float(v)
    except (TypeError, ValueError):
        return False


def _num(v: Any) -> float:
    return float("nan") if _empty(v) else float(v)


def _clean(row: Mapping[str, Any]) -> bool:
    """A row of the clean images: every column beyond the fixed eight (attack, eps...) is empty."""
    return all(_empty(v) for k, v in row.items() if k not in _FIXED)


def reliance_value(original: float, radii: Sequence[float], low: Sequence[float]) -> float:
    """The score from numbers: ``original`` = a_o, ``low[i]`` = a_l(``radii[i]``) (any order).

    ``(1/(r_k - r_1)) ∫ max(0, a_o - a_l(r)) dr / a_o`` by the trapezoidal rule on the clipped
    differences at the evaluated radii; ``max(0, a_o - a_l(r_1)) / a_o`` for one radius. NaN when
    a_o is not > 0 (or not a number) and when there are no radii.
    """
    import numpy as np

    if len(radii) != len(low):
        raise ValueError(f"{len(radii)} radii but {len(low)} low-part values")
    a_o = float(original)
    if not len(radii) or not a_o > 0:  # a_o = 0 (or NaN): undefined
        return float("nan")
    order = np.argsort(np.asarray(radii, dtype=float), kind="stable")
    r = np.asarray(radii, dtype=float)[order]
    if len(np.unique(r)) != len(r):
        raise ValueError(f"radii must be distinct, got {sorted(r.tolist())}")
    d = np.maximum(0.0, a_o - np.asarray(low, dtype=float)[order])  # NaN stays NaN
    if len(r) == 1:
        return float(d[0] / a_o)
    area = float(np.sum((d[1:] + d[:-1]) * np.diff(r)) / 2.0)  # the trapezoidal rule
    return area / float(r[-1] - r[0]) / a_o


def hfc_reliance(
    summary_rows: Iterable[Mapping[str, Any]],
    *,
    metric: str | Sequence[str] | None = "accuracy",
    component: str | None = None,
) -> list[dict[str, Any]]:
    """HFC-reliance scores of the clean images' rows, one dict per (transform, decomposer, metric).

    ``summary_rows``: tidy summary rows (``ProbeResult.summary`` or ``summary.csv`` read with
    ``csv.DictReader``). Only rows whose extra columns (an attack's ``attack``/``eps``...) are empty
    count; rows of the score itself are ignored. ``metric``: a metric name, several, or None for
    every metric that has component rows (except ``nonfinite-outputs`` counts). ``component``: the
    smooth part's variant name; None takes the first component in row order, which is the
    decomposer's first component (``low`` for fft-radial, ``dominant`` for svd) in the rows a run
    writes.

    Each dict: ``value`` (the score; NaN when a_o = 0, there is no ``original`` row or no
    component row), ``radii`` (sorted), ``low`` (a_l at those radii), ``original`` (a_o, or None),
    ``component``, ``metric``, ``transform``, ``decomposer``, ``n``.
    """
    rows = [r for r in summary_rows if _clean(r) and r.get("variant") != VARIANT]
    if isinstance(metric, str):
        wanted: set | None = {metric}
    else:
        wanted = None if metric is None else set(metric)
    groups: dict[tuple, list] = {}
    for r in rows:
        m = r.get("metric")
        if (wanted is None and m in _NOT_SCORES) or (wanted is not None and m not in wanted):
            continue
        key = ("" if _empty(r.get("transform")) else str(r["transform"]),
               "" if _empty(r.get("decomposer")) else str(r["decomposer"]), m)
        groups.setdefault(key, []).append(r)
    out = []
    for (transform, decomposer, m), grows in groups.items():
        comp_rows = [r for r in grows if not _empty(r.get("param")) and r.get("variant") != "original"]
        if any(not _is_number(r["param"]) for r in comp_rows):
            continue  # text parameters (the bands "0-4", "4-8") are no radii: no area under a curve of radius
        if wanted is None and not comp_rows:
            continue  # metric=None: only metrics that have component rows
        comp = component
        if comp is None and comp_rows:
            comp = str(comp_rows[0]["variant"])
        originals = [r for r in grows if r.get("variant") == "original" and _empty(r.get("param"))]
        if len(originals) > 1:
            raise ValueError(f"{len(originals)} 'original' rows for metric {m!r}"
                             + (f", transform {transform!r}" if transform else "") + "; pass one run's rows")
        low_rows = [r for r in comp_rows if r.get("variant") == comp]
        pairs = sorted((_num(r["param"]), _num(r["value"])) for r in low_rows)
        radii = [p for p, _ in pairs]
        if len(set(radii)) != len(radii):
            raise ValueError(f"two '{comp}' rows at the same parameter for metric {m!r}"
                             + (f", transform {transform!r}" if transform else "") + "; pass one run's rows")
        a_o = _num(originals[0]["value"]) if originals else None
        value = reliance_value(a_o, radii, [v for _, v in pairs]) if a_o is not None else float("nan")
        n_src = originals[0] if originals else (low_rows[0] if low_rows else grows[0])
        n = n_src.get("n")
        out.append({
            "value": value,
            "radii": radii,
            "low": [v for _, v in pairs],
            "original": a_o,
            "component": comp,
            "metric": m,
            "transform": transform,
            "decomposer": decomposer,
            "n": None if _empty(n) else int(float(n)),
        })
    return out


def score_rows(scores: Iterable[Mapping[str, Any]], *, probe: str) -> list[dict[str, Any]]:
    """Summary rows for scores from :func:`hfc_reliance`: ``variant`` = ``hfc-reliance``, ``param`` empty."""
    return [{"probe": probe, "transform": s["transform"], "decomposer": s["decomposer"], "variant": VARIANT,
             "param": None, "metric": s["metric"], "value": float(s["value"]), "n": s["n"]} for s in scores]


def describe_range(score: Mapping[str, Any], param_name: str = "r") -> str:
    """``r 4–16`` (``r 4`` for one radius, ``no r`` for none): the range a score was computed over."""
    radii = list(score.get("radii") or [])
    if not radii:
        return f"no {param_name}"
    fmt = lambda v: str(int(v)) if float(v).is_integer() else f"{v:g}"  # noqa: E731
    if len(radii) == 1:
        return f"{param_name} {fmt(radii[0])}"
    return f"{param_name} {fmt(radii[0])}–{fmt(radii[-1])}"


def format_score(score: Mapping[str, Any], param_name: str = "r") -> str:
    """``HFC-reliance (accuracy, r 4–16): 0.733``; the transform when there is one; why when undefined."""
    what = [str(score["metric"]), describe_range(score, param_name)]
    if score.get("transform"):
        what.append(f"transform {score['transform']}")
    v = float(score["value"])
    if v == v:
        text = f"{v:.3f}"
    elif score.get("original") is None:
        text = "undefined (no original row)"
    elif not score.get("radii"):
        text = f"undefined (no {score.get('component') or 'low-part'} rows)"
    else:
        text = f"undefined (original {score['metric']} is {score['original']:g})"
    return f"HFC-reliance ({', '.join(what)}): {text}"
