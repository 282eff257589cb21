"""Built-in data sources: the embedded ``synth10``, torchvision sets, ``imagefolder:PATH`` and ``npz:PATH``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UserFacingError
from ..hookspecs import hookimpl
from ..interfaces import Batch, DataSource


def default_data_root() -> Path:
    """Where torchvision data sets are cached: ``$FREQPROBE_DATA_ROOT`` or ``~/.cache/freqprobe/datasets``."""
    env = os.environ.get("FREQPROBE_DATA_ROOT")
    return Path(env) if env else Path.home() / ".cache" / "freqprobe" / "datasets"


class ArrayDataSource(DataSource):
    """Base for sources held as arrays: uint8 N×H×W×C / N×H×W (0..255) or float in [0,1], plus int labels."""

    x: np.ndarray
    y: np.ndarray

    def _set_arrays(self, x: Any, y: Any, what: str) -> None:
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
            lo, hi = float(x.min()), float(x.max())
            if lo < 0 or hi > 1:
                raise UserFacingError(f"{what}: float images must lie in [0,1], found [{lo:.3g}, {hi:.3g}]; divide by 255 or store uint8")
        if not np.issubdtype(y.dtype, np.integer):
            if np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0):
                y = y.astype(np.int64)
            else:
                raise UserFacingError(f"{what}: labels must be integers, got {y.dtype}")
        if y.min() < 0:
            raise UserFacingError(f"{what}: labels must be non-negative class indices")
        self.x, self.y = x, y.astype(np.int64)

    def __len__(self) -> int:
        return len(self.x)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        n, h, w, c = self.x.shape
        return (c, h, w)

    def _to_tensor(self, xb: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(xb)).permute(0, 3, 1, 2)
        if xb.dtype == np.uint8:
            return t.to(torch.float32).div_(255.0).contiguous()
        return t.to(torch.float32).contiguous()

    def load(self, indices: np.ndarray) -> Batch:
        idx = np.asarray(indices, dtype=np.int64)
        if len(idx) and idx[-1] - idx[0] == len(idx) - 1 and np.all(np.diff(idx) == 1):
            xb = self.x[idx[0] : idx[-1] + 1]  # a contiguous run: a slice, no gather
        else:
            xb = self.x[idx]
        return Batch(self._to_tensor(xb), torch.from_numpy(self.y[idx]), torch.from_numpy(idx))


class Synth10DataSource(ArrayDataSource):
    """Embedded default: procedurally generated 3×32×32, 10 classes, each with a low- and a faint high-frequency cue."""

    name = "synth10"

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

    def __init__(self, argument=None, *, root=None, split="test", **options):
        super().__init__(argument, root=root, split=split)
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


class MNISTDataSource(_TorchvisionArraySource):
    """MNIST through torchvision (cached under --data-root); 1×28×28."""

    name, tv_class, fixed = "mnist", "MNIST", 10


class FashionMNISTDataSource(_TorchvisionArraySource):
    """Fashion-MNIST through torchvision (cached under --data-root); 1×28×28."""

    name, tv_class, fixed = "fashion-mnist", "FashionMNIST", 10


class NpzDataSource(ArrayDataSource):
    """``npz:PATH`` with ``x`` (uint8 N×H×W×C / N×H×W, or float in [0,1]) and ``y`` (int labels)."""

    name = "npz"
    takes_argument = True

    def __init__(self, argument=None, *, root=None, split="test", **options):
        super().__init__(argument, root=root, split=split)
        if not argument:
            raise UserFacingError("npz data needs a path: npz:PATH/TO/FILE.npz")
        p = Path(argument)
        if not p.is_file():
            raise UserFacingError(f"npz file not found: {p}")
        try:
            with np.load(p, allow_pickle=False) as d:
                keys = list(d.keys())
                if "x" not in keys or "y" not in keys:
                    raise UserFacingError(f"{p} must hold arrays 'x' and 'y'; it has: {', '.join(keys) or '(none)'}")
                x, y = d["x"], d["y"]
                names = [str(s) for s in d["class_names"]] if "class_names" in keys else None
        except UserFacingError:
            raise
        except Exception as exc:
            raise UserFacingError(f"could not read {p}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} (corrupt or not an .npz?)") from None
        self._set_arrays(x, y, str(p))
        self.class_names = names
        self.num_classes = len(names) if names else int(self.y.max()) + 1
        self.fixed_num_classes = bool(names)

    def describe(self):
        return {**super().describe(), "path": str(Path(self.argument).resolve())}


class ImageFolderDataSource(DataSource):
    """``imagefolder:PATH``: one sub-folder per class (torchvision ImageFolder); ``PATH/train`` + ``PATH/val|test`` give splits."""

    name = "imagefolder"
    takes_argument = True

    def __init__(self, argument=None, *, root=None, split="test", image_size: int | None = None, **options):
        super().__init__(argument, root=root, split=split)
        import torchvision
        from torchvision import transforms as T

        if not argument:
            raise UserFacingError("imagefolder data needs a path: imagefolder:PATH")
        base = Path(argument)
        if not base.is_dir():
            raise UserFacingError(f"image folder not found: {base}")
        path = base
        if (base / "train").is_dir():
            evald = next((base / s for s in ("test", "val") if (base / s).is_dir()), None)
            path = base / "train" if split == "train" else (evald or base)
        tf = [T.ToTensor()]
        if image_size:
            tf = [T.Resize(image_size), T.CenterCrop(image_size), T.ToTensor()]
        try:
            self.ds = torchvision.datasets.ImageFolder(str(path), transform=T.Compose(tf))
        except (FileNotFoundError, RuntimeError) as exc:
            raise UserFacingError(f"{path}: {str(exc).splitlines()[0]}") from None
        self.path, self.image_size = path, image_size
        self.class_names = list(self.ds.classes)
        self.num_classes = len(self.class_names)
        self._base = base

    def has_split(self, split):
        return split == "test" or (split == "train" and (self._base / "train").is_dir())

    def __len__(self):
        return len(self.ds)

    def describe(self):
        return {**super().describe(), "path": str(self.path.resolve()), "image_size": self.image_size}

    def load(self, indices: np.ndarray) -> Batch:
        idx = np.asarray(indices, dtype=np.int64)
        items = [self.ds[int(j)] for j in idx]
        shapes = {tuple(t.shape) for t, _ in items}
        if len(shapes) > 1:
            raise UserFacingError(
                f"images in {self.path} have different sizes ({', '.join(map(str, sorted(shapes)[:3]))}...); pass --image-size N to resize them"
            )
        x = torch.stack([t for t, _ in items])
        y = torch.tensor([lab for _, lab in items], dtype=torch.int64)
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
