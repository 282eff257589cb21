"""Built-in data sources: the embedded ``synth10``, torchvision sets, ``imagefolder:PATH`` and ``npz:PATH``."""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UserFacingError
from ..hookspecs import hookimpl
from ..interfaces import Batch, DataSource

if TYPE_CHECKING:  # annotations only: numpy and torch are imported where they are used
    import numpy as np
    import torch

log = logging.getLogger("freqprobe.datasets")


def default_data_root() -> Path:
    """Where torchvision data sets are cached: ``$FREQPROBE_DATA_ROOT`` or ``~/.cache/freqprobe/datasets``."""
    env = os.environ.get("FREQPROBE_DATA_ROOT")
    return Path(env) if env else Path.home() / ".cache" / "freqprobe" / "datasets"


class ArrayDataSource(DataSource):
    """Base for sources held as arrays: uint8 N×H×W×C / N×H×W (0..255) or float in [0,1], plus int labels."""

    in_memory = True

    x: np.ndarray
    y: np.ndarray

    def _set_arrays(self, x: Any, y: Any, what: str) -> None:
        import numpy as np

        x = np.asarray(x)
        y = np.asarray(y).reshape(-1)
        if x.ndim == 3:
            x = x[..., None]
        if x.ndim != 4:
            raise UserFacingError(f"{what}: images must be N×H×W×C or N×H×W, got shape {x.shape}")
        if len(x) != len(y):
            raise UserFacingError(f"{what}: {len(x)} images but {len(y)} labels")
        if len(x) == 0:
            raise UserFacingError(f"{what}: holds no images")
        if x.dtype != np.uint8:
            if not np.issubdtype(x.dtype, np.floating):
                raise UserFacingError(f"{what}: images must be uint8 (0..255) or float in [0,1], got {x.dtype}")
            finite = np.isfinite(x)
            if not finite.all():
                bad = ~finite
                n_bad, per_image = int(bad.sum()), bad.reshape(len(x), -1).any(1)
                first = int(np.argmax(per_image))
                kinds = "/".join(k for k, f in (("NaN", np.isnan), ("inf", np.isinf)) if f(x[bad]).any())
                raise UserFacingError(
                    f"{what}: {n_bad} non-finite pixel value(s) ({kinds}) in {int(per_image.sum())} of {len(x)} images, "
                    f"first in image {first}; fix or drop those images"
                )
            lo, hi = float(x.min()), float(x.max())
            if lo < 0 or hi > 1:
                raise UserFacingError(f"{what}: float images must lie in [0,1], found [{lo:.3g}, {hi:.3g}]; divide by 255 or store uint8")
        if not np.issubdtype(y.dtype, np.integer):
            if np.issubdtype(y.dtype, np.floating) and not np.isfinite(y).all():
                bad = ~np.isfinite(y)
                raise UserFacingError(f"{what}: {int(bad.sum())} non-finite label(s) (NaN/inf), first at sample {int(np.argmax(bad))}; "
                                      "labels must be integer class indices")
            if np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0):
                y = y.astype(np.int64)
            else:
                raise UserFacingError(f"{what}: labels must be integers, got {y.dtype}")
        if y.min() < 0:
            raise UserFacingError(f"{what}: labels must be non-negative class indices")
        self.x, self.y = x, y.astype(np.int64)

    #: labels are positions in a fixed label space of its own (CIFAR-10's 0–9...), not a model's class indices
    labels_by_position: bool = False

    def __len__(self) -> int:
        return len(self.x)

    def max_label(self) -> int:
        """The largest label (what a model's output count must exceed)."""
        return int(self.y.max())

    @property
    def image_shape(self) -> tuple[int, int, int]:
        n, h, w, c = self.x.shape
        return (c, h, w)

    def _to_tensor(self, xb: np.ndarray) -> torch.Tensor:
        import numpy as np
        import torch

        t = torch.from_numpy(np.ascontiguousarray(xb)).permute(0, 3, 1, 2)
        if xb.dtype == np.uint8:
            return t.to(torch.float32).div_(255.0).contiguous()
        return t.to(torch.float32).contiguous()

    def load(self, indices: np.ndarray) -> Batch:
        import numpy as np
        import torch

        idx = np.asarray(indices, dtype=np.int64)
        if len(idx) and idx[-1] - idx[0] == len(idx) - 1 and np.all(np.diff(idx) == 1):
            xb = self.x[idx[0] : idx[-1] + 1]  # a contiguous run: a slice, no gather
        else:
            xb = self.x[idx]
        return Batch(self._to_tensor(xb), torch.from_numpy(self.y[idx]), torch.from_numpy(idx))


class Synth10DataSource(ArrayDataSource):
    """Embedded default: procedurally generated 3×32×32, 10 classes, each with a low- and a faint high-frequency cue."""

    name = "synth10"
    labels_by_position = True

    def __init__(self, argument=None, *, root=None, split="test", seed: int = 0, **options):
        super().__init__(argument, root=root, split=split)
        from .. import synth

        if split not in ("train", "test"):
            raise UserFacingError(f"synth10 has splits train and test, not {split!r}")
        x, y = synth.make_synth10(split, seed=seed)
        self._set_arrays(x, y, "synth10")
        self.num_classes = 10
        self.class_names = list(synth.CLASS_NAMES)
        self.default_fit_epochs = synth.DEFAULT_EPOCHS
        self.default_fit_lr = synth.DEFAULT_LR
        self.seed = seed

    def has_split(self, split):
        return split in ("train", "test")

    def describe(self):
        return {**super().describe(), "seed": self.seed, "generator": "freqprobe.synth.make_synth10"}


class _TorchvisionArraySource(ArrayDataSource):
    tv_class: str = ""
    fixed = 10
    labels_by_position = True

    def __init__(self, argument=None, *, root=None, split="test", **options):
        super().__init__(argument, root=root, split=split)
        import numpy as np
        import torch
        import torchvision

        root = Path(root) if root else default_data_root()
        cls = getattr(torchvision.datasets, self.tv_class)
        train = split == "train"
        try:
            ds = cls(str(root), train=train, download=False)
        except (RuntimeError, OSError):
            try:
                ds = cls(str(root), train=train, download=True)
            except Exception as exc:
                raise UserFacingError(
                    f"{self.name} is not available offline under {root} and could not be downloaded "
                    f"({type(exc).__name__}); pass --data-root DIR holding a torchvision copy of it"
                ) from None
        x = ds.data.numpy() if isinstance(ds.data, torch.Tensor) else ds.data
        y = ds.targets.numpy() if isinstance(ds.targets, torch.Tensor) else np.asarray(ds.targets)
        self._set_arrays(x, y, self.name)
        self.class_names = list(getattr(ds, "classes", []) or []) or None
        self.num_classes = self.fixed
        self.root_used = str(root)

    def has_split(self, split):
        return split in ("train", "test")

    def describe(self):
        return {**super().describe(), "root": self.root_used}


class CIFAR10DataSource(_TorchvisionArraySource):
    """CIFAR-10 through torchvision (cached under --data-root)."""

    name, tv_class, fixed = "cifar10", "CIFAR10", 10


class CIFAR100DataSource(_TorchvisionArraySource):
    """CIFAR-100 through torchvision (cached under --data-root)."""

    name, tv_class, fixed = "cifar100", "CIFAR100", 100


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST's format, gzipped or not) as a numpy array."""
    import gzip

    import numpy as np

    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise UserFacingError(f"could not read {path}: {exc}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 8:
        raise UserFacingError(f"{path} is not an IDX file of unsigned bytes (MNIST's format)")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).copy()
    if data.size != int(np.prod(dims)):
        raise UserFacingError(f"{path}: {data.size} bytes of data for a {'x'.join(map(str, dims))} array (truncated?)")
    return data.reshape(dims)


class _IdxSource(_TorchvisionArraySource):
    """MNIST-format data: the raw IDX files (``t10k-images-idx3-ubyte.gz`` ...) directly in --data-root, else torchvision's copy."""

    def _idx_files(self, root: Path, split: str) -> tuple[Path, Path] | None:
        prefix = "t10k" if split == "test" else "train"
        for suffix in (".gz", ""):
            x, y = root / f"{prefix}-images-idx3-ubyte{suffix}", root / f"{prefix}-labels-idx1-ubyte{suffix}"
            if x.is_file() and y.is_file():
                return x, y
        return None

    def __init__(self, argument=None, *, root=None, split="test", **options):
        base = Path(root) if root else default_data_root()
        files = self._idx_files(base, split)
        self._raw_root = base if (files or self._idx_files(base, "train" if split == "test" else "test")) else None
        if self._raw_root is None:
            super().__init__(argument, root=root, split=split, **options)
            return
        DataSource.__init__(self, argument, root=base, split=split)
        if files is None:
            other = "test (t10k-*)" if split == "train" else "train (train-*)"
            raise UserFacingError(f"{self.name} in {base} has only the {other} IDX files, no {split} split"
                                  + ("; use --split test (or a tool that holds out part of the test split)" if split == "train" else ""))
        else:
            import numpy as np

            x, y = read_idx(files[0]), read_idx(files[1]).astype(np.int64)
            if len(x) != len(y):
                raise UserFacingError(f"{files[0]} holds {len(x)} images but {files[1]} {len(y)} labels")
            self._set_arrays(x, y, self.name)
        self.class_names = None
        self.num_classes = self.fixed
        self.root_used = str(base)

    def has_split(self, split):
        if self._raw_root is not None:
            return self._idx_files(self._raw_root, split) is not None
        return super().has_split(split)


class MNISTDataSource(_IdxSource):
    """MNIST through torchvision (cached under --data-root), or its IDX files directly in --data-root; 1×28×28."""

    name, tv_class, fixed = "mnist", "MNIST", 10


class FashionMNISTDataSource(_IdxSource):
    """Fashion-MNIST through torchvision (cached under --data-root), or its IDX files directly in --data-root; 1×28×28."""

    name, tv_class, fixed = "fashion-mnist", "FashionMNIST", 10


class NpzDataSource(ArrayDataSource):
    """``npz:PATH`` with ``x`` (uint8 N×H×W×C / N×H×W, or float in [0,1]) and ``y`` (int labels)."""

    name = "npz"
    takes_argument = True

    def __init__(self, argument=None, *, root=None, split="test", **options):
        super().__init__(argument, root=root, split=split)
        if not argument:
            raise UserFacingError("npz data needs a path: npz:PATH/TO/FILE.npz")
        if split != "test":
            raise UserFacingError(f"npz:{argument} has no {split} split (an .npz file is one test set); use --split test")
        p = Path(argument)
        if not p.is_file():
            raise UserFacingError(f"npz file not found: {p}")
        import zipfile

        import numpy as np

        if not zipfile.is_zipfile(p):
            raise UserFacingError(f"{p} is not an .npz file (not a zip archive of arrays); save one with numpy.savez(path, x=..., y=...)")
        try:
            with np.load(p, allow_pickle=False) as d:
                keys = list(d.keys())
                if "x" not in keys or "y" not in keys:
                    raise UserFacingError(f"{p} must hold arrays 'x' and 'y'; it has: {', '.join(keys) or '(none)'}")
                x, y = d["x"], d["y"]
                names = [str(s) for s in d["class_names"]] if "class_names" in keys else None
                layout = str(d["layout"]) if "layout" in keys else None
        except UserFacingError:
            raise
        except Exception as exc:
            raise UserFacingError(f"could not read {p}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} (corrupt or not an .npz?)") from None
        x = _channels_last(x, layout, p)
        self._set_arrays(x, y, str(p))
        if names and self.max_label() >= len(names):
            raise UserFacingError(
                f"{p}: labels go up to {self.max_label()} but class_names has only {len(names)} entries; "
                "store one name per class index (or no class_names)"
            )
        self.class_names = names
        self.num_classes = len(names) if names else int(self.y.max()) + 1
        self.fixed_num_classes = bool(names)

    def describe(self):
        return {**super().describe(), "path": str(Path(self.argument).resolve())}


def _channels_last(x: np.ndarray, layout: str | None, p: Path) -> np.ndarray:
    """``x`` as N×H×W×C: an array stored N×C×H×W (``layout`` "NCHW", as ``freqprobe decompose`` writes,
    or unmistakably channels-first: 1 or 3 channels first and a last axis that is no channel count) is transposed."""
    if layout is not None and layout not in ("NCHW", "NHWC"):
        raise UserFacingError(f"{p}: unknown layout {layout!r}; use NCHW or NHWC")
    if x.ndim == 4 and (layout == "NCHW" or (layout is None and x.shape[1] in (1, 3) and x.shape[3] not in (1, 3, 4))):
        return x.transpose(0, 2, 3, 1)
    return x


_WNID = re.compile(r"^n\d{8}$")

#: the largest sample value of Pillow's integer modes that are read as 16-bit: a value v is v / 65535
SIXTEEN_BIT_MAX = 65535


def decode_image(im: Any, where: Any) -> Any:
    """A PIL image as what the image transforms take, with the right [0, 1] values whatever its mode.

    8-bit modes become RGB, as torchvision's loader makes them (``L``/``1``/``LA`` grey in all three
    channels, ``P`` its palette's colours, ``CMYK`` PIL's conversion; alpha dropped). Deeper modes
    become one channel of mode ``F`` holding the values in [0, 1]: a 16-bit (``I;16``, ``I;16B``...)
    or ``I`` sample v reads as v / 65535 (a 16-bit image saved as 257·u gives exactly u / 255, its
    8-bit version), an ``F`` sample as it is. An ``I`` image with values outside 0..65535 or an ``F``
    image outside [0, 1] is refused in one line (``where`` names the file): no scale can be guessed.
    """
    import numpy as np
    from PIL import Image

    mode = im.mode
    if mode == "I" or mode.startswith("I;16"):
        a = np.asarray(im)
        if a.size and (int(a.min()) < 0 or int(a.max()) > SIXTEEN_BIT_MAX):
            raise UserFacingError(f"could not read image {where}: an integer image ({mode}) with values in [{int(a.min())}, {int(a.max())}]; "
                                  f"freqprobe reads integer images as 16-bit (0..{SIXTEEN_BIT_MAX}): convert it to 8 or 16 bits")
        return Image.fromarray(a.astype(np.float32) / np.float32(SIXTEEN_BIT_MAX))
    if mode == "F":
        a = np.asarray(im, dtype=np.float32)
        if a.size and not (np.isfinite(a).all() and float(a.min()) >= 0 and float(a.max()) <= 1):
            finite = a[np.isfinite(a)]
            span = f"[{float(finite.min()):.4g}, {float(finite.max()):.4g}]" if finite.size else "no finite value"
            raise UserFacingError(f"could not read image {where}: a floating-point image (F) with values {span}"
                                  f"{'' if np.isfinite(a).all() else ' and NaN/inf'}; float images must hold values in [0, 1]")
        return im
    if mode == "PA" or (mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")  # the palette's colours (PIL warns when P with transparency goes to RGB directly)
    return im.convert("RGB")


def load_image(path: str) -> Any:
    """The image file ``path`` decoded by :func:`decode_image` (the loader of ``imagefolder:``)."""
    from PIL import Image

    with open(path, "rb") as f:
        im = Image.open(f)
        return decode_image(im, path)


def image_tensor(pic: Any) -> torch.Tensor:
    """A decoded image (RGB, or one channel of mode ``F`` in [0, 1]) as a float32 3×H×W tensor in [0, 1]."""
    import numpy as np
    import torch
    from torchvision.transforms import functional as TF

    if pic.mode != "F":
        return TF.to_tensor(pic)  # uint8 / 255, as before
    t = torch.from_numpy(np.array(pic, dtype=np.float32)).clamp_(0, 1)  # the clamp: a resize's rounding at the ends
    return t.unsqueeze(0).expand(3, -1, -1).contiguous()


def read_image(path: Any) -> torch.Tensor:
    """The image file ``path`` as a float32 3×H×W tensor in [0, 1], whatever its mode (:func:`decode_image`: 16-bit
    values v read as v / 65535); a file that cannot be read is one :class:`UserFacingError` line naming it."""
    from ..errors import UserFacingError as _UFE

    try:
        return image_tensor(load_image(str(path)))
    except _UFE:
        raise
    except Exception as exc:  # PIL: truncated, corrupt, not an image
        why = (str(exc).strip().splitlines() or [type(exc).__name__])[0].replace(str(path), "").strip(" '")
        raise _UFE(f"could not read image {path}: {why or type(exc).__name__}; remove or replace it") from None


def imagenet_classes() -> tuple[list[str], list[str]] | None:
    """ImageNet-1k's WordNet ids in index order and short class names (from timm's offline tables), or None."""
    try:
        from timm.data import ImageNetInfo

        info = ImageNetInfo("imagenet-1k")
        wnids = list(info.label_names())
        names = [str(d).split(",")[0].strip() for d in info.label_descriptions()]
    except Exception:  # pragma: no cover - timm is a dependency; its tables are in the wheel
        return None
    return (wnids, names) if len(wnids) == 1000 else None


def read_class_map(class_map: Any, folders: list[str]) -> tuple[dict[str, int], list[str] | None, str]:
    """``{folder: index}`` for every class folder, the class names by index (or None), and how it was made.

    ``class_map``: a dict, ``"imagenet"`` (WordNet-id folders -> ImageNet-1k indices), a ``.json``
    file holding ``{folder: index}``, or a text file with one folder name per line (line i = index i;
    the first word of a line counts, so ``n01440764 tench`` works).
    """
    if isinstance(class_map, str) and class_map.strip().lower() in ("imagenet", "imagenet-1k") and not Path(class_map).exists():
        got = imagenet_classes()
        if got is None:  # pragma: no cover
            raise UserFacingError("--class-map imagenet needs timm's ImageNet tables, which could not be read")
        wnids, names = got
        index = {w: i for i, w in enumerate(wnids)}
        bad = [f for f in folders if f not in index]
        if bad:
            raise UserFacingError(
                f"--class-map imagenet: {len(bad)} class folder(s) are not ImageNet-1k WordNet ids "
                f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}); name them like n01440764 or pass --class-map FILE.json"
            )
        return {f: index[f] for f in folders}, names, "imagenet-1k (WordNet ids)"
    if isinstance(class_map, Mapping):
        mapping, names, how = dict(class_map), None, "given mapping"
    else:
        path = Path(class_map)
        if not path.is_file():
            raise UserFacingError(f"--class-map file not found: {path} (a JSON {{folder: index}} or a text file of folder names)")
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise UserFacingError(f"could not read --class-map {path}: {exc}") from None
        how = f"class map {path.resolve()}"
        if path.suffix.lower() == ".json":
            try:
                mapping = json.loads(text)
            except json.JSONDecodeError as exc:
                raise UserFacingError(f"--class-map {path} is not valid JSON: {exc}") from None
            if not isinstance(mapping, dict):
                raise UserFacingError(f"--class-map {path} must hold a JSON object {{\"folder\": index, ...}}, got {type(mapping).__name__}")
            names = None
        else:
            lines = [ln.split()[0] if ln.split() else "" for ln in text.splitlines()]
            while lines and not lines[-1]:
                lines.pop()
            mapping, names = {}, lines
            for i, name in enumerate(lines):
                if name:
                    mapping.setdefault(name, i)
    for k, v in mapping.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise UserFacingError(f"--class-map: the index of {k!r} must be a non-negative whole number, got {v!r}")
    missing = [f for f in folders if f not in mapping]
    if missing:
        raise UserFacingError(
            f"--class-map gives no index for {len(missing)} class folder(s): {', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}; "
            "add them to the map"
        )
    mapping = {f: int(mapping[f]) for f in folders}
    if names is None:
        top = max(mapping.values())
        by_index = {v: k for k, v in mapping.items()}
        names = [by_index.get(i, str(i)) for i in range(top + 1)]
    return mapping, names, how


class ImageFolderDataSource(DataSource):
    """``imagefolder:PATH``: one sub-folder per class (torchvision ImageFolder); ``PATH/train`` + ``PATH/val|test`` give splits.

    Class folders get the indices of their sorted names, unless ``--class-map`` says otherwise;
    folders named by ImageNet WordNet ids (``n01440764``...) get ImageNet-1k's indices when the
    model outputs 1000 classes (:meth:`use_model_classes`).
    """

    name = "imagefolder"
    takes_argument = True

    def __init__(self, argument=None, *, root=None, split="test", image_size: int | None = None, class_map: Any = None, **options):
        super().__init__(argument, root=root, split=split)
        import numpy as np
        import torchvision
        from torchvision import transforms as T

        if not argument:
            raise UserFacingError("imagefolder data needs a path: imagefolder:PATH")
        base = Path(argument)
        if not base.is_dir():
            raise UserFacingError(f"image folder not found: {base}")
        if split == "train" and not (base / "train").is_dir():
            raise UserFacingError(f"imagefolder:{base} has no train split (no {base / 'train'} folder); use --split test")
        path = base
        if (base / "train").is_dir():
            evald = next((base / s for s in ("test", "val") if (base / s).is_dir()), None)
            path = base / "train" if split == "train" else (evald or base)
        tf = [image_tensor]
        if image_size:
            tf = [T.Resize(image_size), T.CenterCrop(image_size), image_tensor]
        try:
            self.ds = torchvision.datasets.ImageFolder(str(path), transform=T.Compose(tf), loader=load_image)
        except (FileNotFoundError, RuntimeError) as exc:
            raise UserFacingError(f"{path}: {str(exc).splitlines()[0]}") from None
        self.path, self.image_size = path, image_size
        self._base = base
        self.folders = list(self.ds.classes)
        self._folder_targets = np.asarray(self.ds.targets, dtype=np.int64)
        self._set_mapping({f: i for i, f in enumerate(self.folders)}, list(self.folders), "sorted folder names")
        self.labels_by_position = True
        self.explicit_map = class_map is not None
        if class_map is not None:
            mapping, names, how = read_class_map(class_map, self.folders)
            self._set_mapping(mapping, names, how)
            self.labels_by_position = False
            # a text file or "imagenet" spells out the whole label space; a JSON/dict map only the folders' indices
            self.fixed_num_classes = not (isinstance(class_map, Mapping) or str(class_map).lower().endswith(".json"))

    def _set_mapping(self, mapping: dict[str, int], names: list[str] | None, how: str) -> None:
        import numpy as np

        self.class_to_idx = dict(mapping)
        lut = np.asarray([mapping[f] for f in self.folders], dtype=np.int64)
        self.targets = lut[self._folder_targets] if len(self._folder_targets) else self._folder_targets
        self.class_names = names
        self.num_classes = len(names) if names else (max(mapping.values()) + 1 if mapping else 0)
        self.label_map = how

    def use_model_classes(self, k: int) -> None:
        """Told the model's class count: WordNet-id folders map to ImageNet-1k indices for a 1000-class model."""
        if self.explicit_map or k != 1000 or not self.folders or not all(_WNID.match(f) for f in self.folders):
            return
        got = imagenet_classes()
        if got is None:  # pragma: no cover
            return
        wnids, names = got
        index = {w: i for i, w in enumerate(wnids)}
        if not all(f in index for f in self.folders):
            return
        self._set_mapping({f: index[f] for f in self.folders}, names, "imagenet-1k (WordNet ids)")
        self.labels_by_position = False
        log.info("imagefolder: %d WordNet-id class folders mapped to ImageNet-1k indices", len(self.folders))

    def max_label(self) -> int | None:
        return int(self.targets.max()) if len(self.targets) else None

    def has_split(self, split):
        return split == "test" or (split == "train" and (self._base / "train").is_dir())

    def __len__(self):
        return len(self.ds)

    def describe(self):
        return {**super().describe(), "path": str(self.path.resolve()), "image_size": self.image_size,
                "label_map": self.label_map, "class_to_idx": dict(self.class_to_idx)}

    def _read(self, j: int):
        path = self.ds.samples[j][0]
        try:
            img, _ = self.ds[j]
        except UserFacingError:
            raise
        except Exception as exc:  # PIL: truncated, corrupt or not an image at all
            why = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            why = why.replace(f"'{path}'", "").replace(str(path), "").strip() or type(exc).__name__
            raise UserFacingError(f"could not read image {path}: {why}; remove or replace it") from None
        return img

    def load(self, indices: np.ndarray) -> Batch:
        import numpy as np
        import torch

        idx = np.asarray(indices, dtype=np.int64)
        items = [self._read(int(j)) for j in idx]
        shapes = {tuple(t.shape) for t in items}
        if len(shapes) > 1:
            raise UserFacingError(
                f"images in {self.path} have different sizes ({', '.join(map(str, sorted(shapes)[:3]))}...); pass --image-size N to resize them"
            )
        x = torch.stack(items)
        y = torch.from_numpy(self.targets[idx])
        return Batch(x, y, torch.from_numpy(idx))


@hookimpl
def register_datasets():
    return [
        Synth10DataSource,
        CIFAR10DataSource,
        CIFAR100DataSource,
        MNISTDataSource,
        FashionMNISTDataSource,
        NpzDataSource,
        ImageFolderDataSource,
    ]
