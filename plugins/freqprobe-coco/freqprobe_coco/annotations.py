"""What ``coco:`` checks in an instances file when it loads it, before anything is evaluated or exported.

An entry that would make an AP (or an export) wrong is refused in one line naming the file and the first
offenders of each kind with their counts; with ``lenient`` it is dropped and counted instead (the counts
go into the manifest's data section). The kinds, in the order they are checked:

- image entries without an integer ``id``; image ids given twice (``duplicate``: pycocotools would keep the
  last entry of an id and attach every annotation of the id to it);
- category entries without an integer ``id``; category ids given twice;
- annotations that are not objects with an integer ``id``, integer ``image_id`` and ``category_id``, a
  ``bbox`` of four numbers, an ``area`` that is a number and an ``iscrowd`` of 0 or 1; annotation ids
  given twice;
- annotations of an image id the file does not list (orphans), of a category id it does not list;
- boxes with a NaN or infinite number, a negative width or height, or negative coordinates; a NaN,
  infinite or negative ``area``.

A message counts the offending entries of a kind (for duplicates: the ids, each named with how often it
occurs). Lenient: an entry given twice with identical contents is kept once; entries that share an id but
differ are all dropped (which one is meant cannot be known), an image's annotations with it. The manifest's
``dropped`` counts entries dropped per kind (:data:`KINDS`' keys). A missing ``area`` is the box's area and a
missing ``iscrowd`` is 0 (COCO's evaluation reads both); those are counted too (``filled``).
"""

from __future__ import annotations

import json
import math
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

from freqprobe import UserFacingError

#: each kind of problem: the manifest's key -> the message's words
KINDS = {
    "malformed_images": "image entries without an integer id",
    "duplicate_image_entries": "duplicate image ids",
    "malformed_categories": "category entries without an integer id",
    "duplicate_category_entries": "duplicate category ids",
    "malformed_annotations": "malformed annotations",
    "duplicate_annotation_entries": "duplicate annotation ids",
    "orphan_annotations": "annotations of image ids not in the file",
    "unknown_category_annotations": "annotations of category ids not in the file",
    "bad_boxes": "non-finite or negative boxes or areas",
    "annotations_of_dropped_entries": "annotations of dropped duplicate images or categories",
}
#: how many offenders of each kind a message names
SHOWN = 3


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


class _Findings:
    """The offenders of each kind (what a message names) and, lenient, the entries dropped per kind."""

    def __init__(self) -> None:
        self.offenders: dict[str, list[str]] = {k: [] for k in KINDS}
        self.dropped: Counter = Counter()

    def add(self, kind: str, what: Any, dropped: int = 1) -> None:
        self.offenders[kind].append(str(what))
        self.dropped[kind] += dropped

    def message(self, path: Path) -> str | None:
        parts = []
        for kind, found in self.offenders.items():
            if found:
                counts = Counter(found)  # a duplicate id is named once, with how often it occurs
                shown = ", ".join(f"{w} ×{n}" if n > 1 else w for w, n in list(counts.items())[:SHOWN])
                more = ", ..." if len(counts) > SHOWN else ""
                parts.append(f"{len(counts)} {KINDS[kind]} (first: {shown}{more})")
        return f"{path}: " + "; ".join(parts) if parts else None


def _unique(entries: list, key: str, kind: str, found: _Findings, lenient: bool) -> tuple[list, set]:
    """``entries`` with one per id (identical repeats collapse, conflicting ones all go), and the ids dropped."""
    by_id: dict[Any, list] = {}
    for e in entries:
        by_id.setdefault(e[key], []).append(e)
    kept, gone = [], set()
    for i, group in by_id.items():
        if len(group) == 1:
            kept.append(group[0])
            continue
        for _ in group:
            found.offenders[kind].append(str(i))
        same = all(g == group[0] for g in group[1:])
        found.dropped[kind] += len(group) - 1 if same else len(group)
        if same:
            kept.append(group[0])
        else:
            gone.add(i)
    return (kept, gone) if lenient else (entries, set())


def _shape_problem(a: Any) -> str | None:
    """What makes ``a`` no COCO annotation (None when its fields have the right types)."""
    if not isinstance(a, dict):
        return f"a {type(a).__name__}, not an object"
    missing = [k for k in ("id", "image_id", "category_id") if not _is_int(a.get(k))]
    if missing:
        return f"no integer {' / '.join(missing)}"
    box = a.get("bbox")
    if not isinstance(box, (list, tuple)) or len(box) != 4 or not all(_is_number(v) for v in box):
        return "bbox is not 4 numbers"
    if "area" in a and not _is_number(a["area"]):
        return "area is not a number"
    return None if a.get("iscrowd", 0) in (0, 1) else "iscrowd is not 0 or 1"  # True/False equal 1/0


def _box_ok(a: dict) -> bool:
    x, y, w, h = (float(v) for v in a["bbox"])
    if not all(math.isfinite(v) for v in (x, y, w, h)) or min(x, y, w, h) < 0:
        return False
    return "area" not in a or (math.isfinite(float(a["area"])) and float(a["area"]) >= 0)


def _name(a: Any, position: int) -> str:
    return f"id {a['id']}" if isinstance(a, dict) and _is_int(a.get("id")) else f"#{position}"


def check_dataset(dataset: dict, path: Path, *, lenient: bool = False) -> tuple[dict, dict[str, int], dict[str, int]]:
    """``dataset`` (a parsed instances file) checked as the module docstring says: the dataset to use, what was
    dropped per kind (lenient) and what was filled in; a one-line :class:`UserFacingError` when something is wrong
    and not lenient."""
    for key in ("images", "annotations", "categories"):
        if not isinstance(dataset.get(key, []), list):
            raise UserFacingError(f"{path}: '{key}' must be a list (a COCO instances file)")
    found = _Findings()
    images = _with_ids(dataset["images"], "malformed_images", found)
    cats = _with_ids(dataset.get("categories", []), "malformed_categories", found)
    listed = ({e["id"] for e in images}, {c["id"] for c in cats})
    images, gone_images = _unique(images, "id", "duplicate_image_entries", found, lenient)
    cats, gone_cats = _unique(cats, "id", "duplicate_category_entries", found, lenient)
    anns = _check_annotations(dataset["annotations"], listed, gone_images | {("category", c) for c in gone_cats}, found,
                              lenient)
    message = found.message(path)
    if message and not lenient:
        raise UserFacingError(f"{message}; fix the file, or drop them with --coco-lenient (lenient=True from Python; "
                              "counted in the manifest)")
    filled = _fill_defaults(anns)
    dropped = {k: n for k, n in found.dropped.items() if n}
    if dropped:
        what = ", ".join(f"{n} {KINDS[k].split(' (')[0]}" for k, n in dropped.items())
        warnings.warn(f"{path}: dropped {what} (lenient; counted in the manifest)", stacklevel=3)
    out = {**dataset, "images": images, "categories": cats, "annotations": anns}
    return out, dropped, filled


def _with_ids(entries: list, kind: str, found: _Findings) -> list:
    """The entries that are objects with an integer ``id``; the others are offenders of ``kind``."""
    out = []
    for k, e in enumerate(entries):
        if isinstance(e, dict) and _is_int(e.get("id")):
            out.append(e)
        else:
            found.add(kind, f"#{k}")
    return out


def _check_annotations(raw: list, listed: tuple[set, set], gone: set, found: _Findings, lenient: bool) -> list:
    """The annotations to keep (lenient) after the checks on their own fields and on the ids they refer to.

    ``listed``: the image and category ids the file lists; ``gone``: the image ids (and ``("category", id)``)
    dropped as conflicting duplicates, whose annotations go with them."""
    shaped = []
    for k, a in enumerate(raw):
        problem = _shape_problem(a)
        if problem is None:
            shaped.append(a)
        else:
            found.add("malformed_annotations", f"{_name(a, k)}: {problem}")
    shaped, gone_anns = _unique(shaped, "id", "duplicate_annotation_entries", found, lenient)
    image_ids, cat_ids = listed
    kept = []
    for a in shaped:
        if a["id"] in gone_anns:
            continue
        if a["image_id"] not in image_ids:
            found.add("orphan_annotations", f"id {a['id']} (image {a['image_id']})")
        elif a["category_id"] not in cat_ids:
            found.add("unknown_category_annotations", f"id {a['id']} (category {a['category_id']})")
        elif not _box_ok(a):
            found.add("bad_boxes", f"id {a['id']} {json.dumps(a['bbox'])}")
        elif a["image_id"] in gone or ("category", a["category_id"]) in gone:
            found.add("annotations_of_dropped_entries", f"id {a['id']}")
        else:
            kept.append(a)
    return kept


def _fill_defaults(anns: list) -> dict[str, int]:
    """COCO's evaluation reads every annotation's ``area`` and ``iscrowd``: a missing one gets the box's area / 0."""
    filled: Counter = Counter()
    for k, a in enumerate(anns):
        if "area" not in a or "iscrowd" not in a:
            a = anns[k] = dict(a)
            if "area" not in a:
                a["area"] = float(a["bbox"][2]) * float(a["bbox"][3])
                filled["area_from_box"] += 1
            if "iscrowd" not in a:
                a["iscrowd"] = 0
                filled["iscrowd_set_to_0"] += 1
    return dict(filled)
