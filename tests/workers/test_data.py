"""Datasets, fixed splits, the decoded-image cache and the device-resident loader."""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pytest
import torch

from bnsweep.workers import loaders
from bnsweep.workers.data import DATASETS, DataSplits, load_dataset, load_splits
from bnsweep.workers.device_loader import AUGMENTS, DeviceLoader
from bnsweep.workers.errors import DataError
from bnsweep.workers.input_stats import channel_stats
from bnsweep.workers.seeding import complex_seed
from bnsweep.workers.splits import stratified_split
from tests.workers import fixtures
from tests.workers.fixtures import WRITERS, bypass_cifar_md5, truncate

# Sect. 4.2: CIFAR flip only; CUB-200 / Stanford Cars 256 → random 224 crop + flip.
PAPER_AUGMENT = {
    "cifar10": ("flip", None),
    "cifar100": ("flip", None),
    "cub200": ("crop_flip", 224),
    "stanford_cars": ("crop_flip", 224),
    "digits": ("none", None),
    "synthetic": ("flip", None),
}


@pytest.fixture(autouse=True)
def _md5_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fabricated CIFAR files cannot match the official MD5s (`monkeypatch.undo()` restores it)."""
    bypass_cifar_md5(monkeypatch)


def materialise(name: str, root: Path) -> Path | None:
    """A data_root holding a fabricated copy of `name`, or None for datasets that need no files."""
    if not DATASETS[name].needs_root:
        return None
    return WRITERS[name](root).data_root


def assert_one_line(err: pytest.ExceptionInfo[DataError], *parts: str) -> None:
    message = str(err.value)
    assert "\n" not in message
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"


# -- registry -------------------------------------------------------------------------------
def test_registry_holds_the_paper_datasets_and_their_augmentation() -> None:
    assert set(DATASETS) == set(PAPER_AUGMENT)
    for name, entry in DATASETS.items():
        assert (entry.augment, entry.crop_size) == PAPER_AUGMENT[name]
        assert entry.augment in AUGMENTS and entry.layout
    assert set(WRITERS) == {n for n, e in DATASETS.items() if e.needs_root}


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_every_dataset_loads_and_batches(name: str, tmp_path: Path) -> None:
    splits = load_dataset(name, materialise(name, tmp_path), val_fraction=0.25)
    for split in ("train", "val", "test"):
        x, y = getattr(splits, f"{split}_x"), getattr(splits, f"{split}_y")
        assert x.dtype == torch.uint8 and x.ndim == 4 and y.dtype == torch.int64
        assert len(x) == len(y) > 0
        assert int(y.min()) >= 0 and int(y.max()) < splits.num_classes
    assert splits.augment == DATASETS[name].augment
    assert splits.in_channels == splits.train_x.shape[1]
    assert splits.image_size == (splits.crop_size or splits.train_x.shape[2])

    g = torch.Generator().manual_seed(1)
    for train, x, y in (
        (True, splits.train_x, splits.train_y),
        (False, splits.test_x, splits.test_y),
    ):
        loader = DeviceLoader(
            x, y, 4, "cpu", train=train, augment=splits.augment, crop_size=splits.crop_size,
            generator=g,
        )  # fmt: skip
        images, labels = next(iter(loader))
        size = splits.image_size
        assert images.shape == (len(labels), splits.in_channels, size, size)
        assert images.dtype == torch.float32 and images.min() >= 0.0 and images.max() <= 1.0


# -- the real loaders on their fabricated on-disk formats -----------------------------------
@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_loader_returns_the_exact_pixels_and_labels(name: str, tmp_path: Path) -> None:
    fx = WRITERS[name](tmp_path)
    raw = DATASETS[name].load(fx.data_root)
    assert raw.num_classes == fx.num_classes
    assert raw.train_x.shape[1:] == (3, 32, 32)
    np.testing.assert_array_equal(raw.train_x.numpy(), fx.train_x)
    np.testing.assert_array_equal(raw.train_y.numpy(), fx.train_y)
    np.testing.assert_array_equal(raw.test_x.numpy(), fx.test_x)
    np.testing.assert_array_equal(raw.test_y.numpy(), fx.test_y)
    # data_root may also name the dataset's own folder.
    np.testing.assert_array_equal(DATASETS[name].load(fx.folder).train_x.numpy(), fx.train_x)


@pytest.mark.parametrize("name", ["cub200", "stanford_cars"])
def test_image_set_loader_decodes_resizes_and_labels(name: str, tmp_path: Path) -> None:
    fx = WRITERS[name](tmp_path)
    raw = DATASETS[name].load(fx.data_root)
    assert raw.num_classes == fx.num_classes
    assert raw.train_x.shape == (len(fx.train_y), 3, 256, 256)
    assert raw.test_x.shape == (len(fx.test_y), 3, 256, 256)
    np.testing.assert_array_equal(raw.train_y.numpy(), fx.train_y)
    np.testing.assert_array_equal(raw.test_y.numpy(), fx.test_y)
    # Flat class colours survive JPEG and resizing: each image carries its own label's colour.
    for x, colours in ((raw.train_x, fx.train_colours), (raw.test_x, fx.test_colours)):
        mean = x.float().mean(dim=(2, 3)).numpy()
        assert np.abs(mean - colours).max() <= 3
    again = DATASETS[name].load(fx.folder)
    assert torch.equal(again.train_x, raw.train_x)


def test_stanford_cars_fixture_is_what_torchvision_reads(tmp_path: Path) -> None:
    from torchvision.datasets import StanfordCars

    fx = fixtures.write_stanford_cars(tmp_path)
    for split, labels in (("train", fx.train_y), ("test", fx.test_y)):
        ds = StanfordCars(str(fx.data_root), split=split, download=False)
        assert [ds[i][1] for i in range(len(ds))] == labels.tolist()
        assert len(ds.classes) == fx.num_classes


def test_cifar_files_failing_their_md5_are_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.undo()  # the product's check, as it runs on real data
    fx = fixtures.write_cifar10(tmp_path)
    with pytest.raises(DataError) as err:
        load_dataset("cifar10", fx.data_root)
    assert_one_line(err, "data_batch_1", "MD5 mismatch")


class _CreatesAFile:
    """Unpickling this runs `open(<path>, "w")`: what a crafted batch file can do."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.path), "w"))


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_a_cifar_file_failing_its_md5_is_never_unpickled(
    protocol: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pickle

    monkeypatch.undo()  # the product's check, as it runs on real data
    fx = fixtures.write_cifar10(tmp_path / "data")
    witness = tmp_path / "code-ran"
    (fx.folder / "data_batch_1").write_bytes(
        pickle.dumps(_CreatesAFile(witness), protocol=protocol)
    )
    with pytest.raises(DataError) as err:
        load_dataset("cifar10", fx.data_root)
    assert not witness.exists()
    assert_one_line(err, "data_batch_1", "MD5 mismatch", "not loaded", "would import", "open")


def test_a_cifar_file_failing_its_md5_is_described_without_loading_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.undo()
    fx = fixtures.write_cifar10(tmp_path)
    (fx.folder / "data_batch_1").write_bytes(b"")
    with pytest.raises(DataError) as err:
        load_dataset("cifar10", fx.data_root)
    assert_one_line(err, "data_batch_1", "MD5 mismatch", "0 bytes", "not a complete pickle")
    (fx.folder / "data_batch_1").unlink()
    (fx.folder / "data_batch_1").mkdir()
    with pytest.raises(DataError) as err:
        load_dataset("cifar10", fx.data_root)
    assert_one_line(err, "data_batch_1", "is a folder")


# -- fixed splits ---------------------------------------------------------------------------
def test_validation_split_is_sklearns_stratified_split_with_complex_seed_0() -> None:
    from sklearn.model_selection import train_test_split

    raw = DATASETS["synthetic"].load(None)
    splits = load_dataset("synthetic", val_fraction=0.1)
    y = raw.train_y.numpy()
    kept, val = train_test_split(
        np.arange(len(y)), test_size=0.1, stratify=y, random_state=complex_seed(0)
    )
    assert complex_seed(0) == 4186399962
    assert torch.equal(splits.val_x, raw.train_x[np.sort(val)])
    assert torch.equal(splits.train_x, raw.train_x[np.sort(kept)])
    assert torch.equal(splits.test_x, raw.test_x)
    # Stratified: 50 training images per class, 10 % of each class held out.
    assert torch.bincount(splits.val_y).tolist() == [5] * 10


def test_validation_split_is_the_same_for_every_seed_and_run() -> None:
    specs = [
        types.SimpleNamespace(dataset="digits", data_root=None, val_fraction=0.1, seed=s)
        for s in (1, 2, 15)
    ]
    first, *others = (load_splits(s) for s in specs)
    for other in others:
        for split in ("train", "val", "test"):
            assert torch.equal(getattr(first, f"{split}_x"), getattr(other, f"{split}_x"))
            assert torch.equal(getattr(first, f"{split}_y"), getattr(other, f"{split}_y"))


def test_load_splits_takes_a_trial_spec() -> None:
    pytest.importorskip("bnsweep.workers.models")
    pytest.importorskip("bnsweep.workers.norm")
    from bnsweep.workers.spec import TrialSpec

    a = load_splits(TrialSpec(dataset="synthetic", seed=1))
    b = load_splits(TrialSpec(dataset="synthetic", seed=9, val_fraction=0.1))
    assert torch.equal(a.val_x, b.val_x) and torch.equal(a.train_y, b.train_y)


def test_digits_is_the_real_dataset_with_a_fixed_test_split() -> None:
    from sklearn.datasets import load_digits

    splits = load_dataset("digits", val_fraction=0.1)
    sizes = [len(splits.train_y), len(splits.val_y), len(splits.test_y)]
    assert sum(sizes) == 1797 and sizes[2] == 360  # ceil(0.2 · 1797)
    assert splits.num_classes == 10 and splits.train_x.shape[1:] == (1, 8, 8)
    assert int(splits.train_x.max()) == 255 and int(splits.train_x.min()) == 0
    real = load_digits()
    _, test = stratified_split(real.target, 0.2)
    expected = np.rint(real.images[test] * 255 / 16).astype(np.uint8)[:, None]
    np.testing.assert_array_equal(splits.test_x.numpy(), expected)
    # Pinned: the rule must not drift between library versions or machines.
    assert test[:8].tolist() == [2, 4, 5, 13, 19, 23, 24, 26] and int(test.sum()) == 330184
    assert torch.bincount(splits.test_y).tolist() == [36, 36, 35, 37, 36, 37, 36, 36, 35, 36]


def test_synthetic_is_deterministic_and_learnable() -> None:
    a, b = DATASETS["synthetic"].load(None), DATASETS["synthetic"].load(None)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_x, b.test_x)
    # A nearest-class-mean classifier already separates the classes: a network can learn them.
    x = a.train_x.float().flatten(1)
    means = torch.stack([x[a.train_y == k].mean(0) for k in range(a.num_classes)])
    predicted = torch.cdist(a.test_x.float().flatten(1), means).argmin(1)
    assert (predicted == a.test_y).float().mean() > 0.9


# -- the decoded-image cache ----------------------------------------------------------------
def test_image_cache_is_written_once_reused_and_rebuilt_when_the_listing_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fx = fixtures.write_cub200(tmp_path)
    first = DATASETS["cub200"].load(fx.data_root)
    caches = list((fx.folder / ".bnsweep-cache").glob("cub200-256-*.npz"))
    assert len(caches) == 1
    assert not list(caches[0].parent.glob("*.tmp"))

    def no_decoding(path: Path, size: int) -> np.ndarray:
        raise AssertionError(f"decoded {path} although the cache is valid")

    with monkeypatch.context() as patched:
        patched.setattr(loaders, "_decode", no_decoding)
        again = DATASETS["cub200"].load(fx.data_root)
    assert torch.equal(again.train_x, first.train_x) and torch.equal(again.test_x, first.test_x)

    fx = fixtures.write_cub200(tmp_path, train_per_class=5)  # one more image per class
    grown = DATASETS["cub200"].load(fx.data_root)
    assert len(grown.train_y) == len(first.train_y) + 3
    rebuilt = list((fx.folder / ".bnsweep-cache").glob("cub200-256-*.npz"))
    assert len(rebuilt) == 1 and rebuilt != caches  # the stale cache is gone

    rebuilt[0].write_bytes(b"not a zip file")  # a damaged cache is rebuilt, not fatal
    assert torch.equal(DATASETS["cub200"].load(fx.data_root).train_x, grown.train_x)


def test_image_cache_location_can_be_moved_off_a_read_only_data_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fx = fixtures.write_stanford_cars(tmp_path / "data")
    monkeypatch.setenv(loaders.CACHE_ENV, str(tmp_path / "cache"))
    DATASETS["stanford_cars"].load(fx.data_root)
    assert len(list((tmp_path / "cache").glob("stanford_cars-256-*.npz"))) == 1
    assert not (fx.folder / ".bnsweep-cache").exists()


# -- bad input: one line, naming the file or the expected layout -----------------------------
@pytest.mark.parametrize("name", sorted(WRITERS))
def test_missing_or_misplaced_data_names_the_expected_layout(name: str, tmp_path: Path) -> None:
    layout = DATASETS[name].layout
    with pytest.raises(DataError) as err:
        load_dataset(name, None)
    assert_one_line(err, name, "data_root is not set", layout)
    with pytest.raises(DataError) as err:
        load_dataset(name, tmp_path / "nowhere")
    assert_one_line(err, "does not exist", layout)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as err:
        load_dataset(name, tmp_path / "empty")
    assert_one_line(err, "not in the expected layout", layout)

    fx = WRITERS[name](tmp_path / "partial")
    victim = next(f for f in fx.files if f.suffix != ".jpg")
    victim.unlink()
    with pytest.raises(DataError) as err:
        load_dataset(name, fx.data_root)
    assert_one_line(err, f"missing {victim.relative_to(fx.folder)}", layout)


def corrupt_cifar10_batch(root: Path) -> tuple[Path, str]:
    fx = fixtures.write_cifar10(root)
    return truncate(fx.folder / "data_batch_3"), "unreadable pickle"


def misshape_cifar100_train(root: Path) -> tuple[Path, str]:
    fx = fixtures.write_cifar100(root)
    path = fx.folder / "train"
    fixtures._pickle(path, {b"data": np.zeros((40, 100), np.uint8), b"fine_labels": [0] * 40})
    return path, "wrong shape"


def truncate_a_jpeg(writer: str) -> object:
    def corrupt(root: Path) -> tuple[Path, str]:
        fx = WRITERS[writer](root)
        return truncate(next(f for f in fx.files if f.suffix == ".jpg"), 0.3), "unreadable image"

    return corrupt


def truncate_cars_annotations(root: Path) -> tuple[Path, str]:
    fx = fixtures.write_stanford_cars(root)
    return truncate(fx.folder / "devkit" / "cars_train_annos.mat"), "unreadable .mat file"


def garble_cub_labels(root: Path) -> tuple[Path, str]:
    fx = fixtures.write_cub200(root)
    path = fx.folder / "image_class_labels.txt"
    path.write_text(path.read_text().replace("\n", "\nnot-an-id here\n", 1))
    return path, ":2: expected '<unique id> <value>'"


CORRUPTIONS = {
    "cifar10-truncated-batch": ("cifar10", corrupt_cifar10_batch),
    "cifar100-wrong-shape": ("cifar100", misshape_cifar100_train),
    "cub200-truncated-jpeg": ("cub200", truncate_a_jpeg("cub200")),
    "cub200-garbled-labels": ("cub200", garble_cub_labels),
    "cars-truncated-jpeg": ("stanford_cars", truncate_a_jpeg("stanford_cars")),
    "cars-truncated-mat": ("stanford_cars", truncate_cars_annotations),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_corrupt_files_are_named(case: str, tmp_path: Path) -> None:
    name, corrupt = CORRUPTIONS[case]
    path, what = corrupt(tmp_path)
    with pytest.raises(DataError) as err:
        load_dataset(name, tmp_path)
    assert_one_line(err, str(path), what)


def test_too_small_for_a_stratified_split(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        stratified_split(np.array([0, 0, 0, 1, 2, 2]), 0.5)
    assert_one_line(err, "too small for a stratified split", "class(es) 1")
    with pytest.raises(DataError) as err:
        load_dataset("digits", val_fraction=0.001)  # 2 validation images for 10 classes
    assert_one_line(err, "digits training split", "too small for a stratified split", "10 classes")
    fx = fixtures.write_cub200(tmp_path, train_per_class=1, test_per_class=1)
    with pytest.raises(DataError) as err:
        load_dataset("cub200", fx.data_root)
    assert_one_line(err, "cub200 training split", "fewer than 2 examples")


def test_unknown_dataset_lists_the_registered_ones() -> None:
    with pytest.raises(DataError) as err:
        load_dataset("imagenet")
    assert_one_line(err, "'imagenet'", ", ".join(sorted(DATASETS)))


# -- the device-resident loader -------------------------------------------------------------
def identity_images(n: int, side: int) -> torch.Tensor:
    """Channel 0 holds each pixel's position, channel 1 the image's index: any crop or flip
    of any image can be traced back to its source."""
    assert side * side <= 256 and n <= 256
    x = torch.empty(n, 3, side, side, dtype=torch.uint8)
    x[:, 0] = torch.arange(side * side, dtype=torch.uint8).view(side, side)
    x[:, 1] = torch.arange(n, dtype=torch.uint8).view(n, 1, 1)
    x[:, 2] = 255 - x[:, 1]
    return x


def trace(x: torch.Tensor, out: torch.Tensor) -> tuple[int, int, int, bool]:
    """(source image, crop top, crop left, flipped) of one output image, read from its pixels."""
    side = x.shape[-1]
    pixels = (out * 255).round().to(torch.int64)
    k = int(pixels[1, 0, 0])
    flipped = bool(pixels[0, 0, 0] > pixels[0, 0, 1])
    corner = int(pixels[0, 0, -1] if flipped else pixels[0, 0, 0])
    return k, corner // side, corner % side, flipped


@pytest.mark.parametrize(("augment", "crop"), [("flip", None), ("crop_flip", 5), ("none", None)])
def test_training_batches_are_true_crops_and_flips_of_a_permutation(
    augment: str, crop: int | None
) -> None:
    x = identity_images(20, 8)
    y = torch.arange(20) % 3
    g = torch.Generator().manual_seed(3)
    loader = DeviceLoader(x, y, 6, "cpu", train=True, augment=augment, crop_size=crop, generator=g)
    seen_flips, seen_offsets = set(), set()
    for _ in range(3):
        sources = []
        for images, labels in loader:
            for out, label in zip(images, labels, strict=True):
                k, top, left, flipped = trace(x, out)
                size = crop or 8
                reference = x[k, :, top : top + size, left : left + size]
                if flipped:
                    reference = reference.flip(-1)
                assert torch.equal((out * 255).round().to(torch.uint8), reference)
                assert int(label) == k % 3
                sources.append(k)
                seen_flips.add(flipped)
                seen_offsets.add((top, left))
        assert sorted(sources) == list(range(20))  # each image once per epoch (20 % 6 = 2 kept)
    assert seen_flips == ({False} if augment == "none" else {False, True})
    assert len(seen_offsets) > (5 if augment == "crop_flip" else 0)
    assert len(seen_offsets) == 1 or augment == "crop_flip"


def test_evaluation_keeps_order_centre_crops_and_leaves_the_generator_alone() -> None:
    # By hand: a 4×4 image holding 0..15, centre 2×2 crop → rows 1-2, columns 1-2.
    x = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4).repeat(3, 1, 1, 1)
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    loader = DeviceLoader(
        x, torch.arange(3), 2, "cpu", train=False, augment="crop_flip", crop_size=2, generator=g
    )
    batches = list(loader)
    assert [len(labels) for _, labels in batches] == [2, 1]  # evaluation keeps a batch of one
    assert torch.equal(torch.cat([labels for _, labels in batches]), torch.arange(3))
    expected = torch.tensor([[5, 6], [9, 10]], dtype=torch.float32) / 255
    for images, _ in batches:
        assert torch.equal(images[:, 0], expected.expand(len(images), 2, 2))
    assert torch.equal(g.get_state(), state)

    # 256 → 224 takes rows and columns 16..239, as torchvision's CenterCrop does.
    big = torch.randint(0, 256, (2, 3, 256, 256), dtype=torch.uint8)
    loader = DeviceLoader(big, torch.zeros(2, dtype=torch.int64), 2, "cpu", train=False,
                          augment="crop_flip", crop_size=224, generator=None)  # fmt: skip
    images, _ = next(iter(loader))
    assert torch.equal(images, big[:, :, 16:240, 16:240].float() / 255)


def epoch(loader: DeviceLoader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(images.clone(), labels.clone()) for images, labels in loader]


def same_epochs(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b, strict=True)
    )


def test_order_follows_the_generator_and_its_saved_state_restores_the_next_epoch() -> None:
    x, y = identity_images(30, 8), torch.arange(30)

    def loader(seed: int | None = None, state: torch.Tensor | None = None) -> DeviceLoader:
        g = torch.Generator()
        if state is not None:
            g.set_state(state)
        else:
            g.manual_seed(seed)
        return DeviceLoader(
            x, y, 8, "cpu", train=True, augment="crop_flip", crop_size=6, generator=g
        )

    a, b, other = loader(7), loader(7), loader(8)
    first = epoch(a)
    assert same_epochs(first, epoch(b))
    assert not same_epochs(first, epoch(other))
    saved = a.generator.get_state()  # what a checkpoint after epoch 1 holds
    second = epoch(a)
    assert not same_epochs(first, second)
    assert same_epochs(second, epoch(loader(state=saved)))


@pytest.mark.parametrize(
    ("n", "batch", "train_sizes", "eval_sizes"),
    [(9, 4, [4, 4], [4, 4, 1]), (10, 4, [4, 4, 2], [4, 4, 2]), (3, 1, [1, 1, 1], [1, 1, 1])],
)
def test_a_last_training_batch_of_one_is_dropped(
    n: int, batch: int, train_sizes: list[int], eval_sizes: list[int]
) -> None:
    x, y = identity_images(n, 4), torch.arange(n)
    g = torch.Generator().manual_seed(0)
    for train, sizes in ((True, train_sizes), (False, eval_sizes)):
        loader = DeviceLoader(x, y, batch, "cpu", train=train, augment="flip", generator=g)
        assert [len(labels) for _, labels in loader] == sizes
        assert len(loader) == len(sizes)


def test_images_are_scaled_to_unit_range_in_the_requested_dtype() -> None:
    x = torch.tensor([0, 255, 128], dtype=torch.uint8).view(3, 1, 1, 1)
    loader = DeviceLoader(x, torch.arange(3), 3, "cpu", train=False, augment="none",
                          generator=None, dtype=torch.bfloat16)  # fmt: skip
    images, _ = next(iter(loader))
    assert images.dtype == torch.bfloat16
    assert images.flatten().tolist() == [0.0, 1.0, pytest.approx(128 / 255, abs=4e-3)]


def test_loader_rejects_what_it_cannot_do() -> None:
    x, y = identity_images(4, 8), torch.arange(4)
    with pytest.raises(DataError, match="does not fit"):
        DeviceLoader(x, y, 2, "cpu", train=False, augment="crop_flip", crop_size=9, generator=None)
    with pytest.raises(ValueError, match="generator"):
        DeviceLoader(x, y, 2, "cpu", train=True, augment="flip", crop_size=None, generator=None)
    with pytest.raises(ValueError, match="augment"):
        DeviceLoader(x, y, 2, "cpu", train=False, augment="rotate", crop_size=None, generator=None)
    with pytest.raises(ValueError, match="uint8"):
        DeviceLoader(x.float(), y, 2, "cpu", train=False, augment="none", generator=None)


def test_splits_check_their_own_shapes() -> None:
    x, y = torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.zeros(4, dtype=torch.int64)
    with pytest.raises(ValueError, match="val_x"):
        DataSplits(x, y, x[:, :1], y, x, y, num_classes=2, augment="flip", crop_size=None)
    with pytest.raises(ValueError, match="crop_size"):
        DataSplits(x, y, x, y, x, y, num_classes=2, augment="crop_flip", crop_size=None)


def test_channel_stats_are_the_training_split_mean_and_std_in_unit_range() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (10, 3, 5, 5), dtype=torch.uint8, generator=g)
    mean, std = channel_stats(x, chunk=3)  # chunks of 3, 3, 3, 1 images
    as_float = x.double() / 255
    torch.testing.assert_close(mean, as_float.mean(dim=(0, 2, 3)).float())
    torch.testing.assert_close(std, as_float.std(dim=(0, 2, 3), unbiased=False).float())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_loader_matches_the_cpu_and_never_syncs_the_host() -> None:
    x, y = identity_images(50, 8), torch.arange(50)
    batches = {}
    for device in ("cpu", "cuda"):
        g = torch.Generator().manual_seed(5)
        loader = DeviceLoader(
            x, y, 16, device, train=True, augment="crop_flip", crop_size=6, generator=g
        )
        torch.cuda.synchronize()
        if device == "cuda":
            torch.cuda.set_sync_debug_mode("error")  # any host sync in the loop raises
        try:
            batches[device] = list(loader)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    cpu = batches["cpu"]
    gpu = [(images.cpu(), labels.cpu()) for images, labels in batches["cuda"]]
    assert same_epochs(cpu, gpu)
