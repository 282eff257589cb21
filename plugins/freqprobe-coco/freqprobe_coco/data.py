"""``coco:IMAGES_DIR:ANNOTATIONS.json``: a COCO detection set read through pycocotools' COCO API.

torch, numpy and pycocotools are imported where they are used: registering the data source loads none of them.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from freqprobe import Batch, DataSource, UserFacingError
from freqprobe.plugin import read_image

if TYPE_CHECKING:  # annotations only
    import numpy as np
    import torch


def load_coco(path: str | os.PathLike, *, lenient: bool = False):
    """A pycocotools ``COCO`` of an instances file, its loading chatter silenced; a bad file is one line.

    The file is checked first (:mod:`freqprobe_coco.annotations`): duplicate ids, orphans, unknown
    categories, bad boxes are refused, or with ``lenient`` dropped. The ``COCO`` object's ``dropped`` and
    ``filled`` attributes count per kind what was dropped and what was filled in (a missing area or iscrowd).
    """
    from pycocotools.coco import COCO

    from .annotations import check_dataset

    p = Path(path)
    if not p.is_file():
        raise UserFacingError(f"COCO annotations file not found: {p}")
    try:
        with open(p, "rb") as f:
            dataset = json.load(f)
    except (OSError, ValueError) as exc:
        raise UserFacingError(f"could not read COCO annotations {p}: {str(exc).splitlines()[0]}") from None
    if not isinstance(dataset, dict) or "images" not in dataset or "annotations" not in dataset:
        raise UserFacingError(f"{p} is not a COCO instances file (no 'images' and 'annotations' lists)")
    dataset.setdefault("categories", [])
    dataset, dropped, filled = check_dataset(dataset, p, lenient=lenient)
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    coco.dropped, coco.filled = dropped, filled
    return coco


class CocoDataSource(DataSource):
    """COCO detection data: coco:IMAGES_DIR:ANNOTATIONS.json (any image size, RGB; category ids as annotated)."""

    name = "coco"
    takes_argument = True
    argument_metavar = "IMAGES:ANN.json"
    task = "detection"
    fixed_num_classes = True
    default_batch_size = 8
    #: images decoded in parallel per batch (PIL releases the GIL while decoding)
    decode_threads = min(8, os.cpu_count() or 1)

    def __init__(self, argument: str | None = None, *, root=None, split: str = "test", lenient: bool = False,
                 **options: Any) -> None:
        super().__init__(argument, root=root, split=split)
        if not argument or ":" not in argument:
            raise UserFacingError(f"coco data needs an image folder and an annotations file: coco:IMAGES_DIR:ANNOTATIONS.json "
                                  f"(got coco:{argument or ''})")
        images, _, ann = argument.rpartition(":")
        if not images or not ann:
            raise UserFacingError(f"coco data needs both parts: coco:IMAGES_DIR:ANNOTATIONS.json (got coco:{argument})")
        self.images_dir, self.ann_file = Path(images), Path(ann)
        if not self.images_dir.is_dir():
            raise UserFacingError(f"COCO image folder not found: {self.images_dir}")
        self.lenient = bool(lenient)
        self.coco = load_coco(self.ann_file, lenient=self.lenient)
        #: the evaluated order: image ids ascending (``--limit N`` takes the first N)
        self.image_ids = sorted(int(i) for i in self.coco.imgs)
        if not self.image_ids:
            raise UserFacingError(f"{self.ann_file} lists no images")
        missing = [self.coco.imgs[i].get("file_name", "?") for i in self.image_ids
                   if not (self.images_dir / str(self.coco.imgs[i].get("file_name", ""))).is_file()]
        if missing:
            raise UserFacingError(f"{len(missing)} of the {len(self.image_ids)} images of {self.ann_file.name} are not in "
                                  f"{self.images_dir} (first: {missing[0]}); pass the folder that holds them")
        self.category_ids = sorted(int(c) for c in self.coco.cats)
        self.category_names = {int(c): str(v.get("name", c)) for c, v in self.coco.cats.items()}
        self.num_classes = len(self.category_ids)
        self.class_names = None  # detection labels are category ids, not positions: see category_names
        self._targets: dict[int, dict[str, torch.Tensor]] = {}

    def has_split(self, split: str) -> bool:
        return split == "test"

    def __len__(self) -> int:
        return len(self.image_ids)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "images_dir": str(self.images_dir.resolve()), "annotations": str(self.ann_file.resolve()),
                "categories": len(self.category_ids),
                "annotations_count": sum(len(self.coco.imgToAnns.get(i, ())) for i in self.image_ids),
                **({"lenient": True, "dropped": dict(self.coco.dropped)} if self.lenient else {}),
                **({"filled": dict(self.coco.filled)} if self.coco.filled else {})}

    def file_name(self, image_id: int) -> str:
        return str(self.coco.imgs[int(image_id)]["file_name"])

    def sample_name(self, index: int) -> str:
        """The file stem of the ``index``-th image (how exports name their files)."""
        return Path(self.file_name(self.image_ids[int(index)])).stem

    def path(self, image_id: int) -> Path:
        return self.images_dir / self.file_name(image_id)

    def read_image(self, image_id: int) -> torch.Tensor:
        """The image as a 3×H×W float tensor in [0, 1] (RGB, whatever the file's mode: 16-bit values v are v / 65535)."""
        return read_image(self.path(image_id))

    def target(self, image_id: int) -> dict[str, torch.Tensor]:
        """Ground truth of one image: ``boxes`` (x1, y1, x2, y2), ``labels`` (category ids), ``iscrowd``, ``image_id``."""
        got = self._targets.get(image_id)
        if got is None:
            import numpy as np
            import torch

            anns = self.coco.imgToAnns.get(image_id, [])
            xywh = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
            xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
            got = {
                "image_id": torch.tensor(image_id, dtype=torch.int64),
                "boxes": torch.from_numpy(xyxy.astype(np.float32)),
                "labels": torch.tensor([int(a["category_id"]) for a in anns], dtype=torch.int64),
                "iscrowd": torch.tensor([bool(a.get("iscrowd", 0)) for a in anns], dtype=torch.bool),
            }
            self._targets[image_id] = got
        return got

    def load(self, indices: np.ndarray) -> Batch:
        import numpy as np
        import torch

        ids = [self.image_ids[int(j)] for j in np.asarray(indices, dtype=np.int64)]
        if len(ids) > 1 and self.decode_threads > 1:
            with ThreadPoolExecutor(min(self.decode_threads, len(ids))) as pool:
                images = list(pool.map(self.read_image, ids))
        else:
            images = [self.read_image(i) for i in ids]
        return Batch(images, [self.target(i) for i in ids], torch.as_tensor(np.asarray(indices, dtype=np.int64)))

    def target_columns(self, targets: Any) -> dict[str, Any]:
        import numpy as np

        return {"image_id": np.array([int(t["image_id"]) for t in targets], dtype=np.int64)}

    def max_label(self) -> int | None:
        return None
