"""The datasets' loaders: each gives one dataset's official train/test splits, decoded.

Every loader returns uint8 NCHW images and int64 labels (`RawDataset`) and never downloads: CIFAR
is read through torchvision from the official python version; CUB-200-2011 and Stanford Cars are
decoded and resized once to 256×256 (Sect. 4.2) and cached on disk by listing; digits and
synthetic need no files. `bnsweep.workers.data` registers each loader under its dataset's name.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from bnsweep.workers.errors import DataError, one_line
from bnsweep.workers.splits import SPLIT_SEED, stratified_split

if TYPE_CHECKING:
    from torchvision.datasets import CIFAR10

log = logging.getLogger(__name__)

#: Sect. 4.2: CUB-200 / Stanford Cars images are resized to 256×256, then cropped to 224×224.
RESIZE = 256
CROP = 224

#: scikit-learn's digits has no official test split; this fraction of it is held out as one.
DIGITS_TEST_FRACTION = 0.2

#: Bump when the decoded-image cache format or decoding changes, so old caches are rebuilt.
CACHE_VERSION = 1
CACHE_ENV = "BNSWEEP_CACHE_DIR"

#: Each dataset's expected layout, one line: its loader's errors name it, and the registry
#: (`bnsweep.workers.data.DatasetEntry.layout`) and docs/datasets.md show it.
LAYOUTS = {
    "cifar10": "<root>/cifar-10-batches-py/{data_batch_1..data_batch_5, test_batch, batches.meta} "
    "(the official python version)",
    "cifar100": "<root>/cifar-100-python/{train, test, meta} (the official python version)",
    "cub200": "<root>/CUB_200_2011/{images.txt, image_class_labels.txt, train_test_split.txt, "
    "images/<class>/<file>.jpg} (1-based ids; root may also be the CUB_200_2011 folder)",
    "stanford_cars": "<root>/stanford_cars/{devkit/cars_train_annos.mat, devkit/cars_meta.mat, "
    "cars_test_annos_withlabels.mat, cars_train/*.jpg, cars_test/*.jpg} (torchvision's "
    "StanfordCars layout; root may also be the stanford_cars folder)",
    "digits": "none: scikit-learn's bundled copy of the UCI 8×8 digits",
    "synthetic": "none: generated in memory (3×16×16, 10 classes, 500 train / 200 test)",
}


# -- what a loader returns ------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class RawDataset:
    """A dataset's official train/test splits, decoded: uint8 [N, C, H, W] and int64 [N]."""

    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    num_classes: int


# -- shared helpers for the loaders ---------------------------------------------------------
def _dataset_dir(
    name: str, data_root: str | Path | None, folder: str, marker: str | None = None
) -> Path:
    """The dataset's own folder: `data_root/folder`, or `data_root` itself if it is that folder.

    `marker` (a file the folder holds) lets a renamed folder be recognised too.
    """
    layout = LAYOUTS[name]
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
            f"{name}: {base} is missing {', '.join(missing)}; expected layout: {LAYOUTS[name]}"
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
def _load_cifar(
    name: str, data_root: str | Path | None, cls: type[CIFAR10], label_key: str
) -> RawDataset:
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


def _diagnose_cifar(base: Path, cls: type[CIFAR10], label_key: str) -> str | None:
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
            return f"{path}: unreadable ({one_line(err)})"
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
    path: Path, entry: object, cls: type[CIFAR10], label_key: str, *, is_meta: bool
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
        return f"{size} bytes, not a complete pickle ({one_line(err)})"
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
        return f"{path}: unreadable pickle ({one_line(err)})"


def load_cifar10(data_root: str | Path | None) -> RawDataset:
    from torchvision.datasets import CIFAR10

    return _load_cifar("cifar10", data_root, CIFAR10, "labels")


def load_cifar100(data_root: str | Path | None) -> RawDataset:
    from torchvision.datasets import CIFAR100

    return _load_cifar("cifar100", data_root, CIFAR100, "fine_labels")


# -- CUB-200-2011 ---------------------------------------------------------------------------
_CUB_FILES = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "images")


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
        raise DataError(f"{path}: unreadable ({one_line(err)})") from None
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
        raise DataError(f"{path}: unreadable .mat file ({one_line(err)})") from None
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
        with Image.open(path) as opened:
            # Sect. 4.2 resizes to a square, aspect ratio not kept; grey images become RGB.
            image = opened.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"{path}: unreadable image ({one_line(err)})") from None
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
        log.warning("ignoring unreadable cache %s (%s)", path, one_line(err))
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
            one_line(err),
            CACHE_ENV,
        )
        return
    stem = path.name.rsplit("-", 1)[0]
    for stale in path.parent.glob(f"{stem}-*.npz"):
        if stale != path:
            stale.unlink(missing_ok=True)


# -- digits and synthetic (no files needed) -------------------------------------------------
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
