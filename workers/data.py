"""Datasets, their fixed splits, and a data path that lives on the training device.

- `DATASETS`: registry name → `DatasetEntry` (loader, augmentation, layout). Every loader returns
  the dataset's official train/test splits as uint8 NCHW tensors; `load_dataset` then carves the
  validation split out of the training split (Sect. 4.1: "we randomly sampled 10% of the
  training examples class-wise for validation"), identically for every run and every seed.
- `DeviceLoader`: the uint8 images sit on the device as one tensor; each epoch draws its order,
  flips and crop offsets from a seeded CPU generator (so the order is the same on every device and
  a checkpointed generator state restores it) and augments on the device by indexing.
- `channel_stats`: training-split mean/std for the `offline` input normalisation (Sect. 3.4).

Augmentation follows Sect. 4.2: CIFAR horizontal flip only; CUB-200 / Stanford Cars resized to
256×256, random 224×224 crop and flip for training, centre crop for evaluation.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import pickle
import tempfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from workers.errors import DataError, SpecError
from workers.seeding import complex_seed

if TYPE_CHECKING:
    from workers.spec import TrialSpec

log = logging.getLogger(__name__)

AUGMENTS = ("flip", "crop_flip", "none")

#: Sect. 4.2: CUB-200 / Stanford Cars images are resized to 256×256, then cropped to 224×224.
RESIZE = 256
CROP = 224

#: Every fixed split (validation, and digits' test split) is drawn with the complex seed of 0.
SPLIT_SEED = complex_seed(0)

#: scikit-learn's digits has no official test split; this fraction of it is held out as one.
DIGITS_TEST_FRACTION = 0.2

#: Bump when the decoded-image cache format or decoding changes, so old caches are rebuilt.
CACHE_VERSION = 1
CACHE_ENV = "BNSWEEP_CACHE_DIR"


# -- what a loader returns, and what load_dataset returns ---------------------------------------
@dataclass(frozen=True, eq=False)
class RawDataset:
    """A dataset's official train/test splits, decoded: uint8 [N, C, H, W] and int64 [N]."""

    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    num_classes: int


@dataclass(frozen=True, eq=False)
class DataSplits:
    """Train/val/test as uint8 NCHW image tensors and int64 labels, on the CPU."""

    train_x: Tensor
    train_y: Tensor
    val_x: Tensor
    val_y: Tensor
    test_x: Tensor
    test_y: Tensor
    num_classes: int
    augment: str  # "flip" | "crop_flip" | "none"
    crop_size: int | None  # crop_flip only

    def __post_init__(self) -> None:
        shape = self.train_x.shape[1:]
        for split in ("train", "val", "test"):
            x, y = getattr(self, f"{split}_x"), getattr(self, f"{split}_y")
            if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1:] != shape:
                raise ValueError(
                    f"{split}_x: expected uint8 [N, {', '.join(map(str, shape))}], "
                    f"got {x.dtype} {tuple(x.shape)}"
                )
            if y.dtype != torch.int64 or y.shape != (len(x),):
                raise ValueError(
                    f"{split}_y: expected int64 [{len(x)}], got {y.dtype} {tuple(y.shape)}"
                )
        if self.augment not in AUGMENTS:
            raise ValueError(
                f"augment: unknown value {self.augment!r}; allowed: {', '.join(AUGMENTS)}"
            )
        if (self.augment == "crop_flip") != (self.crop_size is not None):
            raise ValueError("crop_size: set for augment 'crop_flip' and only for it")

    @property
    def in_channels(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def image_size(self) -> int:
        """The side of the images the model sees: the crop for crop_flip, else the stored size."""
        return self.crop_size if self.crop_size is not None else int(self.train_x.shape[2])

    def __repr__(self) -> str:
        return (
            f"DataSplits(train={len(self.train_y)}, val={len(self.val_y)}, "
            f"test={len(self.test_y)}, "
            f"shape={tuple(self.train_x.shape[1:])}, num_classes={self.num_classes}, "
            f"augment={self.augment!r}, crop_size={self.crop_size})"
        )


# -- the registry ---------------------------------------------------------------------------
Loader = Callable[[str | Path | None], RawDataset]


@dataclass(frozen=True)
class DatasetEntry:
    """How to load one dataset and how the paper augments it."""

    name: str
    load: Loader
    augment: str
    layout: str  # one line, for error messages and docs/datasets.md
    crop_size: int | None = None
    needs_root: bool = True


DATASETS: dict[str, DatasetEntry] = {}


def register(
    name: str, *, augment: str, layout: str, crop_size: int | None = None, needs_root: bool = True
) -> Callable[[Loader], Loader]:
    def add(load: Loader) -> Loader:
        DATASETS[name] = DatasetEntry(name, load, augment, layout, crop_size, needs_root)
        return load

    return add


# -- splits ---------------------------------------------------------------------------------
def stratified_split(
    labels: Tensor | np.ndarray, fraction: float, *, what: str = "dataset"
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (kept, held-out), class-stratified, `fraction` held out; both sorted.

    Identical to `sklearn.model_selection.train_test_split(np.arange(n), test_size=fraction,
    stratify=labels, random_state=complex_seed(0))` with each part sorted, so every run and every
    seed gets the same split and each part keeps the source order.
    """
    from sklearn.model_selection import train_test_split

    if not 0.0 < fraction < 1.0:
        raise SpecError(f"val_fraction: must be in (0, 1), got {fraction!r}")
    y = np.asarray(labels, dtype=np.int64)
    n = len(y)
    classes, counts = np.unique(y, return_counts=True)
    lonely = classes[counts < 2]
    if len(lonely):
        shown = ", ".join(str(c) for c in lonely[:5]) + (", ..." if len(lonely) > 5 else "")
        raise DataError(
            f"{what}: too small for a stratified split: class(es) {shown} have fewer than 2 "
            f"examples"
        )
    held_out = math.ceil(fraction * n)  # scikit-learn's rounding for a float test_size
    if min(held_out, n - held_out) < len(classes):
        raise DataError(
            f"{what}: too small for a stratified split: {fraction:g} of {n} examples gives "
            f"{held_out} held out and {n - held_out} kept, but each part needs at least one of "
            f"each of the {len(classes)} classes"
        )
    try:
        kept, out = train_test_split(
            np.arange(n), test_size=fraction, stratify=y, random_state=SPLIT_SEED
        )
    except ValueError as err:
        raise DataError(f"{what}: cannot split class-stratified: {_one_line(err)}") from None
    return np.sort(kept), np.sort(out)


def load_dataset(
    name: str, data_root: str | Path | None = None, val_fraction: float = 0.1
) -> DataSplits:
    """The dataset's train/val/test splits; the validation split is drawn by `stratified_split`."""
    entry = DATASETS.get(name)
    if entry is None:
        raise DataError(f"dataset: unknown value {name!r}; allowed: {', '.join(sorted(DATASETS))}")
    raw = entry.load(data_root)
    kept, val = (
        torch.from_numpy(i)
        for i in stratified_split(raw.train_y, val_fraction, what=f"{name} training split")
    )
    splits = DataSplits(
        train_x=raw.train_x[kept],
        train_y=raw.train_y[kept],
        val_x=raw.train_x[val],
        val_y=raw.train_y[val],
        test_x=raw.test_x,
        test_y=raw.test_y,
        num_classes=raw.num_classes,
        augment=entry.augment,
        crop_size=entry.crop_size,
    )
    log.info("%s: %r", name, splits)
    return splits


def load_splits(spec: TrialSpec) -> DataSplits:
    """The splits for a trial: only `dataset`, `data_root` and `val_fraction` matter."""
    return load_dataset(spec.dataset, spec.data_root, spec.val_fraction)


# -- shared helpers for the loaders ---------------------------------------------------------
def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _dataset_dir(
    name: str, data_root: str | Path | None, folder: str, marker: str | None = None
) -> Path:
    """The dataset's own folder: `data_root/folder`, or `data_root` itself if it is that folder.

    `marker` (a file the folder holds) lets a renamed folder be recognised too.
    """
    layout = DATASETS[name].layout
    if data_root is None:
        raise DataError(f"{name}: data_root is not set; expected layout: {layout}")
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise DataError(
            f"{name}: data_root {root} does not exist or is not a folder; expected layout: {layout}"
        )
    if (root / folder).is_dir():
        return root / folder
    if root.name == folder or (marker is not None and (root / marker).exists()):
        return root
    raise DataError(
        f"{name}: {root} is not in the expected layout (no {folder}/ in it); "
        f"expected layout: {layout}"
    )


def _require(name: str, base: Path, entries: Sequence[str]) -> None:
    missing = [e for e in entries if not (base / e).exists()]
    if missing:
        raise DataError(
            f"{name}: {base} is missing {', '.join(missing)}; "
            f"expected layout: {DATASETS[name].layout}"
        )


def _raw(
    train_x: np.ndarray,
    train_y: Sequence[int] | np.ndarray,
    test_x: np.ndarray,
    test_y: Sequence[int] | np.ndarray,
    num_classes: int,
) -> RawDataset:
    return RawDataset(
        torch.from_numpy(np.ascontiguousarray(train_x)),
        torch.as_tensor(np.asarray(train_y), dtype=torch.int64),
        torch.from_numpy(np.ascontiguousarray(test_x)),
        torch.as_tensor(np.asarray(test_y), dtype=torch.int64),
        num_classes,
    )


def _check_labels(what: str, labels: np.ndarray, num_classes: int) -> None:
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(
            f"{what}: labels must be class indices in [0, {num_classes}), found "
            f"{int(labels.min())}..{int(labels.max())}"
        )


# -- CIFAR-10 / CIFAR-100 (torchvision, never downloading) ----------------------------------
def _load_cifar(name: str, data_root: str | Path | None, cls: type, label_key: str) -> RawDataset:
    base = _dataset_dir(name, data_root, cls.base_folder)
    files = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    _require(name, base, files)
    try:
        # torchvision verifies every file's MD5 even with download=False.
        train = cls(str(base.parent), train=True, download=False)
        test = cls(str(base.parent), train=False, download=False)
        data = [(np.asarray(s.data), np.asarray(s.targets, dtype=np.int64)) for s in (train, test)]
        if any(len(x) != len(y) for x, y in data):
            raise ValueError("image and label counts differ")
    # torchvision surfaces a bad file as whatever unpickling or reshaping raised; we re-read the
    # files one by one to name the culprit, and re-raise if none is found.
    except Exception as err:
        problem = _diagnose_cifar(base, cls, label_key)
        if problem is None:
            raise
        raise DataError(f"{name}: {problem}") from err
    (train_x, train_y), (test_x, test_y) = data
    num_classes = len(train.classes)
    _check_labels(f"{name} ({base})", np.concatenate([train_y, test_y]), num_classes)
    # torchvision keeps CIFAR as NHWC for PIL; the models take NCHW.
    return _raw(
        train_x.transpose(0, 3, 1, 2), train_y, test_x.transpose(0, 3, 1, 2), test_y, num_classes
    )


def _diagnose_cifar(base: Path, cls: type, label_key: str) -> str | None:
    """The first CIFAR file that is not a file, unreadable, fails its MD5 or is mis-shaped.

    A file that fails its MD5 is never unpickled: unpickling runs whatever code the file names
    (DESIGN house rule 11). What we say about it comes from its size and a scan of its opcodes
    (`pickletools` parses a pickle without executing it).
    """
    from torchvision.datasets import cifar as tv_cifar

    meta = (cls.meta["filename"], cls.meta["md5"])
    for filename, md5 in [*cls.train_list, *cls.test_list, meta]:
        path = base / filename
        if path.is_dir():
            return f"{path}: is a folder, expected the CIFAR batch file"
        try:
            verified = tv_cifar.check_integrity(str(path), md5)
        except OSError as err:
            return f"{path}: unreadable ({_one_line(err)})"
        if not verified:
            return (
                f"{path}: MD5 mismatch (corrupt, or not the official file; not loaded: "
                f"{_pickle_summary(path)})"
            )
        # Verified: the official file (or a test's fixture, with the check bypassed).
        entry = _unpickle(path)
        if isinstance(entry, str):
            return entry
        problem = _cifar_entry_problem(path, entry, cls, label_key, is_meta=filename == meta[0])
        if problem:
            return problem
    return None


def _cifar_entry_problem(
    path: Path, entry: object, cls: type, label_key: str, *, is_meta: bool
) -> str | None:
    if is_meta:
        if not isinstance(entry, dict) or cls.meta["key"] not in entry:
            return f"{path}: expected a dict with {cls.meta['key']!r}"
        return None
    data = entry.get("data") if isinstance(entry, dict) else None
    labels = entry.get(label_key) if isinstance(entry, dict) else None
    if (
        not isinstance(data, np.ndarray)
        or data.dtype != np.uint8
        or data.ndim != 2
        or data.shape[1] != 3 * 32 * 32
    ):
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        return f"{path}: wrong shape: expected key 'data' with uint8 [N, 3072], got {got}"
    if labels is None or len(labels) != len(data):
        return f"{path}: wrong shape: expected {len(data)} labels under {label_key!r}"
    return None


#: What the official CIFAR pickles import while loading; any other name is code to run.
_CIFAR_PICKLE_GLOBALS = frozenset(
    {"numpy.core.multiarray._reconstruct", "numpy.ndarray", "numpy.dtype"}
)


def _pickle_summary(path: Path) -> str:
    """Size and shape of a pickle from its opcodes alone: never executed, never imported."""
    import pickletools

    size = path.stat().st_size
    names: list[str] = []
    strings: list[str] = []
    try:
        with path.open("rb") as f:
            for opcode, arg, _ in pickletools.genops(f):
                if opcode.name in ("GLOBAL", "INST"):
                    names.append(str(arg).replace(" ", "."))
                elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                    names.append(".".join(strings[-2:]))
                elif isinstance(arg, str):
                    strings.append(arg)
    except Exception as err:  # any malformed opcode stream: say so and stop reading
        return f"{size} bytes, not a complete pickle ({_one_line(err)})"
    foreign = sorted(set(names) - _CIFAR_PICKLE_GLOBALS)
    if foreign:
        return f"{size} bytes, a pickle that would import {', '.join(foreign)}"
    return f"{size} bytes"


def _unpickle(path: Path) -> object:
    """The unpickled object, or a one-line message if the file cannot be read."""
    try:
        with path.open("rb") as f:
            return pickle.load(f, encoding="latin1")
    # A damaged pickle can raise nearly any exception type; each one means "unreadable".
    except Exception as err:
        return f"{path}: unreadable pickle ({_one_line(err)})"


@register(
    "cifar10",
    augment="flip",
    layout="<root>/cifar-10-batches-py/{data_batch_1..data_batch_5, test_batch, batches.meta} "
    "(the official python version)",
)
def load_cifar10(data_root: str | Path | None) -> RawDataset:
    from torchvision.datasets import CIFAR10

    return _load_cifar("cifar10", data_root, CIFAR10, "labels")


@register(
    "cifar100",
    augment="flip",
    layout="<root>/cifar-100-python/{train, test, meta} (the official python version)",
)
def load_cifar100(data_root: str | Path | None) -> RawDataset:
    from torchvision.datasets import CIFAR100

    return _load_cifar("cifar100", data_root, CIFAR100, "fine_labels")


# -- CUB-200-2011 ---------------------------------------------------------------------------
_CUB_FILES = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "images")


@register(
    "cub200",
    augment="crop_flip",
    crop_size=CROP,
    layout="<root>/CUB_200_2011/{images.txt, image_class_labels.txt, train_test_split.txt, "
    "images/<class>/<file>.jpg} (1-based ids; root may also be the CUB_200_2011 folder)",
)
def load_cub200(data_root: str | Path | None) -> RawDataset:
    base = _dataset_dir("cub200", data_root, "CUB_200_2011", marker="images.txt")
    _require("cub200", base, _CUB_FILES)
    paths = _read_id_table(base / "images.txt")
    tables = {
        f: _read_id_table(base / f) for f in ("image_class_labels.txt", "train_test_split.txt")
    }
    for filename, table in tables.items():
        if table.keys() != paths.keys():
            extra = sorted(table.keys() ^ paths.keys())[:3]
            raise DataError(f"{base / filename}: image ids differ from images.txt (e.g. {extra})")
    ids = sorted(paths)
    labels = np.array(
        [
            _int_field(base / "image_class_labels.txt", tables["image_class_labels.txt"][i])
            for i in ids
        ]
    )
    is_train = np.array(
        [_int_field(base / "train_test_split.txt", tables["train_test_split.txt"][i]) for i in ids]
    )
    if len(ids) == 0:
        raise DataError(f"{base / 'images.txt'}: lists no images")
    if labels.min() < 1:
        raise DataError(
            f"{base / 'image_class_labels.txt'}: class ids are 1-based, found {labels.min()}"
        )
    if not np.isin(is_train, (0, 1)).all():
        raise DataError(f"{base / 'train_test_split.txt'}: is_training_image must be 0 or 1")
    files = [base / "images" / paths[i] for i in ids]
    return _image_set("cub200", base, files, labels - 1, is_train == 1, int(labels.max()))


def _read_id_table(path: Path) -> dict[int, str]:
    """`<id> <value>` lines, as CUB-200-2011's text files are written."""
    table: dict[int, str] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: unreadable ({_one_line(err)})") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or not parts[0].isdigit() or int(parts[0]) in table:
            raise DataError(
                f"{path}:{number}: expected '<unique id> <value>', got {line.strip()!r}"
            )
        table[int(parts[0])] = parts[1].strip()
    return table


def _int_field(path: Path, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise DataError(f"{path}: expected an integer, got {value!r}") from None


# -- Stanford Cars (torchvision's layout) ---------------------------------------------------
_CARS_FILES = (
    "devkit/cars_train_annos.mat",
    "devkit/cars_meta.mat",
    "cars_test_annos_withlabels.mat",
    "cars_train",
    "cars_test",
)


@register(
    "stanford_cars",
    augment="crop_flip",
    crop_size=CROP,
    layout="<root>/stanford_cars/{devkit/cars_train_annos.mat, devkit/cars_meta.mat, "
    "cars_test_annos_withlabels.mat, cars_train/*.jpg, cars_test/*.jpg} (torchvision's "
    "StanfordCars layout; root may also be the stanford_cars folder)",
)
def load_stanford_cars(data_root: str | Path | None) -> RawDataset:
    # Read the devkit with scipy as torchvision's StanfordCars does (same files, same fields,
    # class ids 1-based), but keep the file names so that a bad file can be named.
    base = _dataset_dir("stanford_cars", data_root, "stanford_cars", marker="devkit")
    _require("stanford_cars", base, _CARS_FILES)
    meta_path = base / "devkit" / "cars_meta.mat"
    names = _mat_field(meta_path, "class_names", None)
    num_classes = len(np.atleast_1d(names))
    parts = [
        _cars_annotations(base / mat, base / folder)
        for mat, folder in (
            ("devkit/cars_train_annos.mat", "cars_train"),
            ("cars_test_annos_withlabels.mat", "cars_test"),
        )
    ]
    files = parts[0][0] + parts[1][0]
    labels = np.concatenate([parts[0][1], parts[1][1]])
    is_train = np.arange(len(files)) < len(parts[0][0])
    if labels.min(initial=1) < 1 or labels.max(initial=1) > num_classes:
        raise DataError(
            f"{base}: class ids must be in 1..{num_classes} (the classes in {meta_path})"
        )
    return _image_set("stanford_cars", base, files, labels - 1, is_train, num_classes)


def _cars_annotations(mat: Path, images: Path) -> tuple[list[Path], np.ndarray]:
    fnames = _mat_field(mat, "annotations", "fname")
    classes = _mat_field(mat, "annotations", "class")
    try:
        labels = np.array([int(c) for c in classes], dtype=np.int64)
    except (TypeError, ValueError):
        raise DataError(f"{mat}: annotations.class must hold integer class ids") from None
    return [images / str(f) for f in fnames], labels


def _mat_field(path: Path, variable: str, field: str | None) -> np.ndarray:
    import scipy.io

    try:
        mat = scipy.io.loadmat(str(path), squeeze_me=True)
    # scipy raises OSError, ValueError, IndexError, ... on a damaged file: all mean "unreadable".
    except Exception as err:
        raise DataError(f"{path}: unreadable .mat file ({_one_line(err)})") from None
    value = mat.get(variable)
    if value is None or (
        field is not None and (value.dtype.names is None or field not in value.dtype.names)
    ):
        wanted = variable if field is None else f"{variable}.{field}"
        raise DataError(f"{path}: has no {wanted!r}")
    return np.atleast_1d(value if field is None else value[field])


# -- decoded, resized image sets with an on-disk cache --------------------------------------
def _image_set(
    name: str,
    base: Path,
    files: list[Path],
    labels: np.ndarray,
    is_train: np.ndarray,
    num_classes: int,
) -> RawDataset:
    """Decode and resize every image once to uint8 [N, 3, 256, 256], cached on disk by listing."""
    _check_labels(f"{name} ({base})", labels, num_classes)
    key = _listing_key(base, files, labels, is_train)
    cache_dir = Path(os.environ.get(CACHE_ENV) or base / ".bnsweep-cache")
    cache = cache_dir / f"{name}-{RESIZE}-{key}.npz"
    x = _read_cache(cache, labels, is_train)
    if x is None:
        log.info(
            "%s: decoding %d images to %d×%d (once; cached at %s)",
            name,
            len(files),
            RESIZE,
            RESIZE,
            cache,
        )
        x = _decode_all(files, RESIZE)
        _write_cache(cache, x, labels, is_train)
    train, test = np.flatnonzero(is_train), np.flatnonzero(~is_train)
    return _raw(x[train], labels[train], x[test], labels[test], num_classes)


def _listing_key(base: Path, files: list[Path], labels: np.ndarray, is_train: np.ndarray) -> str:
    """A hash of what the cache holds: every file's name and size, its label and its split."""
    digest = hashlib.sha256(f"v{CACHE_VERSION} {RESIZE} {len(files)}\n".encode())
    for path, label, train in zip(files, labels, is_train, strict=True):
        try:
            size = path.stat().st_size
        except OSError:
            raise DataError(f"{path}: listed but missing") from None
        digest.update(f"{path.relative_to(base)}\t{size}\t{label}\t{int(train)}\n".encode())
    return digest.hexdigest()[:16]


def _decode(path: Path, size: int) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as image:
            # Sect. 4.2 resizes to a square, aspect ratio not kept; grey images become RGB.
            image = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"{path}: unreadable image ({_one_line(err)})") from None
    return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)


def _decode_all(files: list[Path], size: int) -> np.ndarray:
    out = np.empty((len(files), 3, size, size), dtype=np.uint8)
    # Pillow releases the GIL while decoding and resizing, so threads use every core.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for i, image in enumerate(pool.map(_decode, files, [size] * len(files))):
            out[i] = image
    return out


def _read_cache(path: Path, labels: np.ndarray, is_train: np.ndarray) -> np.ndarray | None:
    if not path.exists():
        return None
    try:
        with np.load(path) as cached:
            x, y, train = cached["x"], cached["y"], cached["is_train"]
    # The cache is ours and rebuildable: any damage means "decode again", never a failure.
    except Exception as err:
        log.warning("ignoring unreadable cache %s (%s)", path, _one_line(err))
        return None
    if x.shape != (len(labels), 3, RESIZE, RESIZE) or not (
        np.array_equal(y, labels) and np.array_equal(train, is_train)
    ):
        log.warning("ignoring cache %s: it does not match the listing", path)
        return None
    log.info("loaded decoded images from %s", path)
    return x


def _write_cache(path: Path, x: np.ndarray, labels: np.ndarray, is_train: np.ndarray) -> None:
    """Write atomically (temp file + rename), so a concurrent reader never sees half a cache."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, x=x, y=labels, is_train=is_train)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as err:
        # A read-only data root still trains; it just decodes again next time.
        log.warning(
            "could not write cache %s (%s); set %s to cache elsewhere",
            path,
            _one_line(err),
            CACHE_ENV,
        )
        return
    stem = path.name.rsplit("-", 1)[0]
    for stale in path.parent.glob(f"{stem}-*.npz"):
        if stale != path:
            stale.unlink(missing_ok=True)


# -- digits and synthetic (no files needed) -------------------------------------------------
@register(
    "digits",
    augment="none",  # flipping a digit changes its meaning
    needs_root=False,
    layout="none: scikit-learn's bundled copy of the UCI 8×8 digits",
)
def load_digits(data_root: str | Path | None = None) -> RawDataset:
    """scikit-learn's real 8×8 digits (1797 images, 10 classes), 1 channel, 0..16 → 0..255.

    The fixed test split is `stratified_split(labels, 0.2)`: class-stratified 20 %, drawn with
    complex_seed(0), the same on every machine.
    """
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    x = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    y = digits.target.astype(np.int64)
    train, test = stratified_split(y, DIGITS_TEST_FRACTION, what="digits")
    return _raw(x[train], y[train], x[test], y[test], 10)


SYNTHETIC_SHAPE = (3, 16, 16)
SYNTHETIC_CLASSES = 10
SYNTHETIC_TRAIN_PER_CLASS = 50
SYNTHETIC_TEST_PER_CLASS = 20


@register(
    "synthetic",
    augment="flip",
    needs_root=False,
    layout="none: generated in memory (3×16×16, 10 classes, 500 train / 200 test)",
)
def load_synthetic(data_root: str | Path | None = None) -> RawDataset:
    """Class templates plus noise: small, deterministic, learnable in a few epochs.

    Each class template is a blocky random pattern made left-right symmetric, so the flip
    augmentation keeps the class, as it does for natural images.
    """
    g = torch.Generator().manual_seed(SPLIT_SEED)
    c, h, w = SYNTHETIC_SHAPE
    coarse = torch.randn(SYNTHETIC_CLASSES, c, h // 4, w // 4, generator=g)
    templates = coarse.repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)
    templates = (templates + templates.flip(-1)) / 2
    templates = templates / templates.std(dim=(1, 2, 3), keepdim=True)

    def draw(per_class: int) -> tuple[np.ndarray, np.ndarray]:
        y = torch.arange(per_class * SYNTHETIC_CLASSES) % SYNTHETIC_CLASSES
        images = 0.5 + 0.2 * templates[y] + 0.15 * torch.randn(len(y), c, h, w, generator=g)
        return (images.clamp(0, 1) * 255).round().to(torch.uint8).numpy(), y.numpy()

    train_x, train_y = draw(SYNTHETIC_TRAIN_PER_CLASS)
    test_x, test_y = draw(SYNTHETIC_TEST_PER_CLASS)
    return _raw(train_x, train_y, test_x, test_y, SYNTHETIC_CLASSES)


# -- the device-resident loader -------------------------------------------------------------
class DeviceLoader:
    """Batches of (images as `dtype` in [0, 1], int64 labels) from uint8 data on `device`.

    Training: each `iter()` draws, from the CPU `generator`, the epoch's permutation, then (flip)
    one flip decision per position, then (crop_flip) crop tops and lefts; these go to the device
    once, and cropping and flipping are one gather there. The draws happen when `iter()` is
    called, so the generator state saved after an epoch restores the next epoch's order exactly.
    A final batch of one example is dropped (BN cannot normalise one example); any other
    remainder is kept. Evaluation: source order, no flip, centre crop for crop_flip, and the
    generator is never touched. Nothing in the loop reads from the device (no host sync).
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        batch_size: int,
        device: torch.device | str,
        *,
        train: bool,
        augment: str,
        crop_size: int | None = None,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if x.dtype != torch.uint8 or x.ndim != 4:
            raise ValueError(f"x: expected uint8 [N, C, H, W], got {x.dtype} {tuple(x.shape)}")
        if y.shape != (len(x),):
            raise ValueError(f"y: expected [{len(x)}] labels, got {tuple(y.shape)}")
        if batch_size < 1:
            raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
        if augment not in AUGMENTS:
            raise ValueError(f"augment: unknown value {augment!r}; allowed: {', '.join(AUGMENTS)}")
        height, width = int(x.shape[2]), int(x.shape[3])
        if augment == "crop_flip" and (
            crop_size is None or not 0 < crop_size <= min(height, width)
        ):
            raise DataError(f"crop_size: {crop_size} does not fit images of {height}×{width}")
        if train and generator is None:
            raise ValueError("generator: a training loader needs a seeded CPU torch.Generator")
        if generator is not None and generator.device.type != "cpu":
            raise ValueError(
                "generator: must be a CPU generator, so the order is the same on every device"
            )

        self.device = torch.device(device)
        self.x = x.to(self.device)  # moved once; batches are gathered on the device
        self.y = y.to(self.device, torch.int64)
        self.batch_size = batch_size
        self.train = train
        self.augment = augment
        self.crop_size = crop_size if augment == "crop_flip" else None
        self.generator = generator
        self.dtype = dtype
        self._size = (self.crop_size or height, self.crop_size or width)
        self._channels = torch.arange(x.shape[1], device=self.device).view(1, -1, 1, 1)
        self._rows = torch.arange(self._size[0], device=self.device)
        self._cols = torch.arange(self._size[1], device=self.device)

    def __len__(self) -> int:
        full, rest = divmod(len(self.x), self.batch_size)
        return full + (rest > (1 if self.train else 0))

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return self._train_batches(self._draw_epoch()) if self.train else self._eval_batches()

    def _draw_epoch(self) -> dict[str, Tensor]:
        n, g = len(self.x), self.generator
        plan = {"order": torch.randperm(n, generator=g)}
        if self.augment in ("flip", "crop_flip"):
            plan["flip"] = torch.rand(n, generator=g) < 0.5
        if self.augment == "crop_flip":
            plan["top"] = torch.randint(0, self.x.shape[2] - self._size[0] + 1, (n,), generator=g)
            plan["left"] = torch.randint(0, self.x.shape[3] - self._size[1] + 1, (n,), generator=g)
        return {k: _to_device(v, self.device) for k, v in plan.items()}

    def _train_batches(self, plan: dict[str, Tensor]) -> Iterator[tuple[Tensor, Tensor]]:
        augment = {"none": self._plain, "flip": self._flip, "crop_flip": self._crop_flip}
        batch = augment[self.augment]
        n = len(self.x)
        for start in range(0, n, self.batch_size):
            span = slice(start, min(start + self.batch_size, n))
            if span.stop - span.start == 1 < self.batch_size:
                return  # a last, partial batch of one example: BN cannot normalise it
            index = plan["order"][span]
            yield self._to_float(batch(index, plan, span)), self.y[index]

    def _plain(self, index: Tensor, plan: dict[str, Tensor], span: slice) -> Tensor:
        return self.x.index_select(0, index)

    def _flip(self, index: Tensor, plan: dict[str, Tensor], span: slice) -> Tensor:
        images = self.x.index_select(0, index)
        return torch.where(plan["flip"][span].view(-1, 1, 1, 1), images.flip(3), images)

    def _crop_flip(self, index: Tensor, plan: dict[str, Tensor], span: slice) -> Tensor:
        """One gather: out[b, c, i, j] = x[index[b], c, top[b] + i, cols[b, j]], where a flipped
        image reads its crop's columns right to left. Only the crop is ever copied."""
        rows = plan["top"][span, None] + self._rows
        cols = plan["left"][span, None] + self._cols
        cols = torch.where(plan["flip"][span, None], cols.flip(1), cols)
        return self.x[
            index.view(-1, 1, 1, 1), self._channels, rows[:, None, :, None], cols[:, None, None, :]
        ]

    def _eval_batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        top = left = 0
        if self.crop_size is not None:
            # Same rounding as torchvision's CenterCrop.
            top = round((self.x.shape[2] - self._size[0]) / 2.0)
            left = round((self.x.shape[3] - self._size[1]) / 2.0)
        for start in range(0, len(self.x), self.batch_size):
            images = self.x[
                start : start + self.batch_size,
                :,
                top : top + self._size[0],
                left : left + self._size[1],
            ]
            yield self._to_float(images), self.y[start : start + self.batch_size]

    def _to_float(self, images: Tensor) -> Tensor:
        return images.to(self.dtype).div_(255)


def _to_device(t: Tensor, device: torch.device) -> Tensor:
    if device.type == "cuda":
        # Pinned memory lets the once-per-epoch copy run without blocking the host.
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


# -- offline input normalisation statistics -------------------------------------------------
def channel_stats(x: Tensor, chunk: int = 1024) -> tuple[Tensor, Tensor]:
    """Per-channel mean and std (population, ddof = 0) of uint8 images, in [0, 1] units.

    For the `offline` input normalisation (Sect. 3.4). Pass the training split only
    (`DataSplits.train_x`): validation and test images must not leak into the statistics.
    Sums run in float64 over chunks of `chunk` images, so memory stays small and the result
    does not depend on the chunking beyond float64 rounding.
    """
    if x.dtype != torch.uint8 or x.ndim != 4 or len(x) == 0:
        raise DataError(
            f"channel_stats: expected non-empty uint8 [N, C, H, W], got {x.dtype} {tuple(x.shape)}"
        )
    total = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    squares = torch.zeros_like(total)
    for start in range(0, len(x), chunk):
        part = x[start : start + chunk].to(torch.float64)
        total += part.sum(dim=(0, 2, 3))
        squares += part.square().sum(dim=(0, 2, 3))
    count = x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0).sqrt()
    return (mean / 255).float(), (std / 255).float()
