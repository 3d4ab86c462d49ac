"""Tiny datasets written in the exact on-disk formats of the real ones, for any test to reuse.

Each `write_*` function creates the official layout under `root` and returns a `Fixture` with the
`data_root` to pass and what was written, so a test can compare the loader's output with it.

- CIFAR-10 / CIFAR-100: the "python version" pickles (dict with b"data" uint8 [N, 3072] and
  b"labels" / b"fine_labels"; batches.meta / meta). torchvision checks their MD5s even with
  download=False: call `bypass_cifar_md5(monkeypatch)` in the test, never in the product.
- CUB-200-2011: images.txt, image_class_labels.txt, train_test_split.txt (1-based ids), JPEGs.
- Stanford Cars: torchvision's layout, devkit .mat files as scipy writes MATLAB structs, JPEGs.

Images of CUB and Cars are flat colours (one per class, JPEG keeps them almost exactly), so a
test can check that every decoded image carries its label's colour.
"""

from __future__ import annotations

import pickle
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

CIFAR10_NAMES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip


@dataclass
class Fixture:
    """What a `write_*` function wrote. Images are uint8 NCHW for CIFAR; colours for JPEG sets."""

    data_root: Path  # pass this as data_root
    folder: Path  # the dataset's own folder inside data_root
    train_y: np.ndarray
    test_y: np.ndarray
    num_classes: int
    train_x: np.ndarray | None = None  # CIFAR only: the exact pixels
    test_x: np.ndarray | None = None
    train_colours: np.ndarray | None = None  # JPEG sets: the RGB colour of each image
    test_colours: np.ndarray | None = None
    files: list[Path] = field(default_factory=list)  # every data file written


def bypass_cifar_md5(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let torchvision accept fabricated CIFAR files (it checks the official MD5s)."""
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *args, **kwargs: True)


class _Py2Str(bytes):
    """A Python 2 `str`, as the official CIFAR pickles hold for keys and names: it loads as `str`
    with encoding="latin1" (torchvision) and as `bytes` with encoding="bytes" (the CIFAR page)."""


class _Py2Pickler(pickle._Pickler):  # the pure-Python pickler takes extra opcodes per type
    dispatch: ClassVar[dict] = dict(pickle._Pickler.dispatch)

    def _save_py2_str(self, obj: _Py2Str) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + bytes(obj))
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + bytes(obj))
        self.memoize(obj)

    dispatch[_Py2Str] = _save_py2_str


def _py2(value: object) -> object:
    """Byte strings (also inside lists and dicts) as Python 2 str, as in the official files."""
    if isinstance(value, bytes):
        return _Py2Str(value)
    if isinstance(value, list):
        return [_py2(v) for v in value]
    if isinstance(value, dict):
        return {_py2(k): _py2(v) for k, v in value.items()}
    return value


def _pickle(path: Path, obj: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        _Py2Pickler(f, protocol=2).dump(_py2(obj))
    return path


def _cifar_batch(rng: np.random.Generator, n: int, labels: np.ndarray, label_key: bytes) -> dict:
    data = rng.integers(0, 256, size=(n, 3 * 32 * 32), dtype=np.uint8)
    names = [f"fabricated_{i:05d}.png".encode() for i in range(n)]
    return {
        b"batch_label": b"fabricated",
        label_key: labels.tolist(),
        b"data": data,
        b"filenames": names,
    }


def write_cifar10(root: Path, *, per_batch: int = 10, test: int = 20, seed: int = 0) -> Fixture:
    """cifar-10-batches-py/ with data_batch_1..5 of `per_batch` images each and test_batch."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    xs, ys, files = [], [], []
    for i in range(1, 6):
        labels = (np.arange(per_batch) + i) % 10
        batch = _cifar_batch(rng, per_batch, labels, b"labels")
        files.append(_pickle(folder / f"data_batch_{i}", batch))
        xs.append(batch[b"data"])
        ys.append(labels)
    test_labels = np.arange(test) % 10
    test_batch = _cifar_batch(rng, test, test_labels, b"labels")
    files.append(_pickle(folder / "test_batch", test_batch))
    meta = {
        b"label_names": [n.encode() for n in CIFAR10_NAMES],
        b"num_cases_per_batch": per_batch,
        b"num_vis": 3072,
    }
    files.append(_pickle(folder / "batches.meta", meta))
    return Fixture(
        data_root=root,
        folder=folder,
        train_x=np.concatenate(xs).reshape(-1, 3, 32, 32),
        train_y=np.concatenate(ys),
        test_x=test_batch[b"data"].reshape(-1, 3, 32, 32),
        test_y=test_labels,
        num_classes=10,
        files=files,
    )


def write_cifar100(
    root: Path, *, train: int = 40, test: int = 10, classes: int = 4, seed: int = 0
) -> Fixture:
    """cifar-100-python/ with train, test and meta; labels cycle over the first `classes`."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    parts = {}
    files = []
    for name, n in (("train", train), ("test", test)):
        labels = np.arange(n) % classes
        batch = _cifar_batch(rng, n, labels, b"fine_labels")
        batch[b"coarse_labels"] = (labels // 5).tolist()
        files.append(_pickle(folder / name, batch))
        parts[name] = (batch[b"data"].reshape(-1, 3, 32, 32), labels)
    meta = {
        b"fine_label_names": [f"fine_{i}".encode() for i in range(100)],
        b"coarse_label_names": [f"coarse_{i}".encode() for i in range(20)],
    }
    files.append(_pickle(folder / "meta", meta))
    return Fixture(
        data_root=root,
        folder=folder,
        train_x=parts["train"][0],
        train_y=parts["train"][1],
        test_x=parts["test"][0],
        test_y=parts["test"][1],
        num_classes=100,
        files=files,
    )


def class_colour(label: int) -> tuple[int, int, int]:
    """A flat colour per class, far apart so JPEG noise cannot confuse them."""
    return (30 + 50 * (label % 5), 220 - 40 * (label % 6), 60 + 90 * (label % 3))


def _write_jpeg(
    path: Path, colour: tuple[int, int, int], size: tuple[int, int], grey: bool
) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, colour)
    if grey:
        image = image.convert("L")  # the real sets hold a few greyscale JPEGs
    image.save(path, format="JPEG", quality=95)


def _expected_colour(colour: tuple[int, int, int], grey: bool) -> tuple[int, int, int]:
    if not grey:
        return colour
    from PIL import Image

    value = Image.new("RGB", (1, 1), colour).convert("L").getpixel((0, 0))
    return (value, value, value)


def _image_plan(
    classes: int, train_per_class: int, test_per_class: int
) -> list[tuple[int, bool, tuple[int, int], bool]]:
    """(label, is_train, size, grey) per image; test images spread evenly among the training ones,
    as in the real files, and the first image is greyscale."""
    total = train_per_class + test_per_class
    plan = []
    for label in range(classes):
        for k in range(total):
            is_test = k * test_per_class // total != (k + 1) * test_per_class // total
            size = (24 + 8 * (k % 3), 20 + 6 * (label % 4))  # varied sizes, never square
            plan.append((label, not is_test, size, k == 0 and label == 0))
    return plan


def write_cub200(
    root: Path, *, classes: int = 3, train_per_class: int = 4, test_per_class: int = 2
) -> Fixture:
    """CUB_200_2011/ with the three text files (1-based ids) and images/<class>/<file>.jpg."""
    folder = root / "CUB_200_2011"
    folder.mkdir(parents=True, exist_ok=True)
    images, labels, split = [], [], []
    train_y, test_y, train_c, test_c, files = [], [], [], [], []
    for image_id, (label, is_train, size, grey) in enumerate(
        _image_plan(classes, train_per_class, test_per_class), 1
    ):
        rel = f"{label + 1:03d}.Bird_{label}/Bird_{label}_{image_id:04d}.jpg"
        _write_jpeg(folder / "images" / rel, class_colour(label), size, grey)
        files.append(folder / "images" / rel)
        images.append(f"{image_id} {rel}")
        labels.append(f"{image_id} {label + 1}")
        split.append(f"{image_id} {int(is_train)}")
        (train_y if is_train else test_y).append(label)
        (train_c if is_train else test_c).append(_expected_colour(class_colour(label), grey))
    for name, lines in (
        ("images.txt", images),
        ("image_class_labels.txt", labels),
        ("train_test_split.txt", split),
    ):
        (folder / name).write_text("\n".join(lines) + "\n")
        files.append(folder / name)
    classes_txt = [f"{k + 1} {k + 1:03d}.Bird_{k}" for k in range(classes)]
    (folder / "classes.txt").write_text("\n".join(classes_txt) + "\n")
    return Fixture(
        data_root=root,
        folder=folder,
        train_y=np.array(train_y),
        test_y=np.array(test_y),
        num_classes=classes,
        train_colours=np.array(train_c),
        test_colours=np.array(test_c),
        files=files,
    )


def _annotations(records: list[tuple[str, int]]) -> np.ndarray:
    """A 1×N MATLAB struct array with the fields of the Cars devkit annotations."""
    names = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")
    out = np.zeros((1, len(records)), dtype=[(n, "O") for n in names])
    for i, (fname, class_id) in enumerate(records):
        box = [np.array([[v]], dtype=np.uint16) for v in (1, 1, 10, 10)]
        out[0, i] = (*box, np.array([[class_id]], dtype=np.uint8), np.array([fname]))
    return out


def write_stanford_cars(
    root: Path, *, classes: int = 3, train_per_class: int = 4, test_per_class: int = 2
) -> Fixture:
    """stanford_cars/ in torchvision's layout: devkit .mat files, cars_train/, cars_test/."""
    import scipy.io

    folder = root / "stanford_cars"
    (folder / "devkit").mkdir(parents=True, exist_ok=True)
    records: dict[bool, list[tuple[str, int]]] = {True: [], False: []}
    colours: dict[bool, list[tuple[int, int, int]]] = {True: [], False: []}
    files = []
    for label, is_train, size, grey in _image_plan(classes, train_per_class, test_per_class):
        fname = f"{len(records[is_train]) + 1:05d}.jpg"
        path = folder / ("cars_train" if is_train else "cars_test") / fname
        _write_jpeg(path, class_colour(label), size, grey)
        files.append(path)
        records[is_train].append((fname, label + 1))
        colours[is_train].append(_expected_colour(class_colour(label), grey))
    mats = {
        folder / "devkit" / "cars_train_annos.mat": {"annotations": _annotations(records[True])},
        folder / "cars_test_annos_withlabels.mat": {"annotations": _annotations(records[False])},
        folder / "devkit" / "cars_meta.mat": {
            "class_names": np.array(
                [[f"Make{k} Model {k} 2012" for k in range(classes)]], dtype=object
            )
        },
    }
    for path, content in mats.items():
        scipy.io.savemat(path, content)
        files.append(path)
    return Fixture(
        data_root=root,
        folder=folder,
        train_y=np.array([c - 1 for _, c in records[True]]),
        test_y=np.array([c - 1 for _, c in records[False]]),
        num_classes=classes,
        train_colours=np.array(colours[True]),
        test_colours=np.array(colours[False]),
        files=files,
    )


def truncate(path: Path, keep: float = 0.5) -> Path:
    """Cut a file to `keep` of its length, as an interrupted copy leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


#: name → fabricator for every dataset that reads files; tests parametrise over it.
WRITERS = {
    "cifar10": write_cifar10,
    "cifar100": write_cifar100,
    "cub200": write_cub200,
    "stanford_cars": write_stanford_cars,
}
