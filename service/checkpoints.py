"""Where each cell's latest checkpoint and its epoch records live: `<storage>/<sweep>/cells/`.

A cell (spec_hash, seed) has one folder, whatever launch, retry or node trains it:

    <storage>/<sweep>/cells/<spec_hash>-seed<seed>/
        checkpoint-000040/trial.pt          the latest checkpoint only (older ones are deleted
        checkpoint-000040/bnsweep-cell.json   once a newer one is complete): which cell, which epoch
        records-000031-000040.json          the epochs and BN diagnostics a checkpoint adds

A trial that starts (the first time, a retry after a failure, a relaunch after a killed driver)
continues from the latest complete checkpoint of its cell, so Ray Tune never checkpoints and no
Tune experiment is ever restored: nothing of Tune's pickled state is read back. Checkpoints load
with `weights_only=True` (workers/checkpoint.py) and must name the cell they are opened for.

Checkpoint storage is not trusted: it is often writable by more people than the database. Each
records segment and each checkpoint's cell file carries an HMAC made with the cell's key, which
the store derives from a secret only it holds and the trial's row (`Store.cell_keys`), and the
cell file holds the SHA-256 of every file of its checkpoint. A segment that does not verify is
refused (one warning line naming it; its epochs are not used); a checkpoint whose cell file does
not verify is ignored (the cell trains from an earlier one, or from its start): a forged file,
one of another store, or one written before the trial was forgotten (`bnsweep db forget`).
A checkpoint that verifies but whose files changed, or that torch cannot read, fails its cell in
one line naming it and the remedy (`remedy`).

The records segments exist for one reason: a driver that dies may still hold epoch rows it had
not yet written to the store; a trial that resumes sends the segments again (the store upserts).
Each segment holds only the epochs since the previous checkpoint, so the bytes written grow
linearly with the epochs trained.

Paths are local (a shared filesystem on a cluster) or URIs that pyarrow reaches (s3://, gs://).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bnsweep.workers.checkpoint import CheckpointError

log = logging.getLogger(__name__)

Cell = tuple[str, int]  # (spec_hash, seed)
CELLS_FOLDER = "cells"
CELL_FILE = "bnsweep-cell.json"
CHECKPOINT_PREFIX = "checkpoint-"
RECORDS_PREFIX = "records-"


def _epoch_name(prefix: str, epoch: int) -> str:
    return f"{prefix}{epoch:06d}"


def _is_remote(root: str) -> bool:
    return "://" in root


def _inside(uri: str) -> str:
    """A URI's path inside its pyarrow filesystem: s3://bucket/a → bucket/a, file:///a → /a."""
    return uri.split("://", 1)[1]


@dataclass(frozen=True)
class CellRecords:
    """What a cell's folder holds of its training so far, oldest first."""

    epochs: list[dict[str, Any]]  # EpochMetrics as dicts
    diagnostics: list[dict[str, Any]]  # {"epoch": e, "layers": [...]}


@dataclass(frozen=True)
class CellStorage:
    """The `cells/` folder of one sweep on local or object storage."""

    root: str  # <storage>/<sweep>, an absolute path or a URI
    #: Each cell's signing key (`Store.cell_keys`); kept out of repr, compared by root only.
    keys: Mapping[Cell, bytes] = field(default_factory=dict, repr=False, compare=False)

    def remedy(self, cell: Cell) -> str:
        """What to do about a cell whose checkpoint cannot be used: start the cell over."""
        return (
            f"delete the cell folder {self.folder(cell)} or forget the cell "
            f"(`bnsweep db forget --where spec_hash={cell[0]} --where seed={cell[1]}`), "
            "then launch again: the cell trains from its start"
        )

    def _key(self, cell: Cell) -> bytes:
        try:
            return self.keys[cell]
        except KeyError:
            raise CheckpointError(f"no signing key for cell {cell[0]} seed {cell[1]}") from None

    # -- paths ----------------------------------------------------------------------------
    def folder(self, cell: Cell) -> str:
        return self._join(CELLS_FOLDER, f"{cell[0]}-seed{cell[1]}")

    def _join(self, *parts: str) -> str:
        if _is_remote(self.root):
            return "/".join([self.root.rstrip("/"), *parts])
        return str(Path(self.root, *parts))

    def _fs(self) -> tuple[Any, str]:
        """(pyarrow filesystem, path inside it) for a URI root."""
        import pyarrow.fs

        return pyarrow.fs.FileSystem.from_uri(self.root)

    # -- writing (on the trial's node) ----------------------------------------------------
    @contextmanager
    def new_checkpoint(self, cell: Cell, epoch: int) -> Iterator[Path]:
        """A local folder to save epoch `epoch`'s checkpoint into; on leaving the block it
        becomes the cell's latest checkpoint, and the older ones are deleted.

        On a local (or shared) filesystem the folder is already on the storage and is renamed
        into place, so each checkpoint is written once and a reader never sees half of one; on
        object storage it is uploaded, the cell file last, which is what marks it complete."""
        name = _epoch_name(CHECKPOINT_PREFIX, epoch)
        if _is_remote(self.root):
            with tempfile.TemporaryDirectory(prefix="bnsweep-ckpt-") as tmp:
                yield Path(tmp)
                self._upload(Path(tmp), f"{self.folder(cell)}/{name}")
        else:
            folder = Path(self.folder(cell))
            folder.mkdir(parents=True, exist_ok=True)
            partial = folder / f".partial-{name}-{uuid.uuid4().hex[:8]}"
            partial.mkdir()
            try:
                yield partial
                target = folder / name
                if target.exists():  # a retry that saved the same epoch again: same content
                    shutil.rmtree(target)
                partial.rename(target)
            finally:
                shutil.rmtree(partial, ignore_errors=True)
        self._delete_older(cell, epoch)

    def write_records(self, cell: Cell, first: int, last: int, records: CellRecords) -> None:
        """The epochs `first`..`last` and their diagnostics, one small JSON file."""
        name = f"{RECORDS_PREFIX}{first:06d}-{last:06d}.json"
        body = {"epochs": records.epochs, "diagnostics": records.diagnostics}
        text = json.dumps({**body, "mac": _mac(self._key(cell), name, body)})
        if _is_remote(self.root):
            fs, _ = self._fs()
            fs.create_dir(_inside(self.folder(cell)), recursive=True)
            with fs.open_output_stream(_inside(f"{self.folder(cell)}/{name}")) as f:
                f.write(text.encode())
            return
        folder = Path(self.folder(cell))
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{name}.{uuid.uuid4().hex[:8]}"
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(folder / name)

    # -- reading (on the trial's node, and in the driver) ---------------------------------
    def latest(self, cell: Cell) -> int | None:
        """The epoch of the cell's latest complete checkpoint, or None."""
        for epoch in sorted(self._checkpoint_epochs(cell), reverse=True):
            name = _epoch_name(CHECKPOINT_PREFIX, epoch)
            cell_file = self._read_text(f"{self.folder(cell)}/{name}/{CELL_FILE}")
            if cell_file is None:
                continue  # an upload cut short: its cell file is written last
            if _signed_files(cell_file, cell, epoch, self.keys.get(cell)) is not None:
                return epoch
            log.warning(
                "ignoring checkpoint %s/%s: its %s is not signed for this cell's trial by this "
                "store (written by hand, by another store, or before the trial was forgotten)",
                self.folder(cell),
                name,
                CELL_FILE,
            )
        return None

    @contextmanager
    def open_checkpoint(self, cell: Cell, epoch: int) -> Iterator[Path]:
        """A local folder holding that checkpoint (in place, or downloaded for the block)."""
        name = f"{self.folder(cell)}/{_epoch_name(CHECKPOINT_PREFIX, epoch)}"
        if not _is_remote(self.root):
            self._check_digests(Path(name), name, cell, epoch)
            yield Path(name)
            return
        with tempfile.TemporaryDirectory(prefix="bnsweep-ckpt-") as tmp:
            self._download(name, Path(tmp))
            self._check_digests(Path(tmp), name, cell, epoch)
            yield Path(tmp)

    def _check_digests(self, local: Path, shown: str, cell: Cell, epoch: int) -> None:
        """The checkpoint's files are those its signed cell file names, byte for byte."""
        try:
            text = (local / CELL_FILE).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            text = ""
        files = _signed_files(text, cell, epoch, self.keys.get(cell))
        changed = "its cell file" if files is None else None
        for file_name, digest in (files or {}).items():
            path = local / file_name
            if not path.is_file() or not _equal(_sha256(path), str(digest)):
                changed = file_name
                break
        if changed is not None:
            raise CheckpointError(
                f"checkpoint {shown} was changed after this cell's trial wrote it ({changed} "
                f"does not match what the trial signed); {self.remedy(cell)}"
            )

    def records(self, cell: Cell, up_to: int) -> CellRecords:
        """Every epoch (and its diagnostics) up to `up_to` that the cell's segments hold; a
        later segment wins for an epoch two of them cover (a retry with another cadence)."""
        epochs: dict[int, dict[str, Any]] = {}
        diagnostics: dict[int, dict[str, Any]] = {}
        for name in sorted(self._list(self.folder(cell))):
            if not (name.startswith(RECORDS_PREFIX) and name.endswith(".json")):
                continue
            path = f"{self.folder(cell)}/{name}"
            segment = _signed_segment(self._read_text(path), name, self.keys.get(cell))
            if segment is None:
                log.warning(
                    "refusing %s: not a records segment this cell's trial wrote (its signature "
                    "does not verify); its epochs are not used",
                    path,
                )
                continue
            for item in segment.get("epochs", ()):
                epochs[int(item["epoch"])] = item
            for item in segment.get("diagnostics", ()):
                diagnostics[int(item["epoch"])] = item
        return CellRecords(
            [epochs[e] for e in sorted(epochs) if e <= up_to],
            [diagnostics[e] for e in sorted(diagnostics) if e <= up_to],
        )

    # -- the filesystem ---------------------------------------------------------------------
    def _checkpoint_epochs(self, cell: Cell) -> list[int]:
        epochs = []
        for name in self._list(self.folder(cell)):
            if name.startswith(CHECKPOINT_PREFIX) and name[len(CHECKPOINT_PREFIX) :].isdigit():
                epochs.append(int(name[len(CHECKPOINT_PREFIX) :]))
        return epochs

    def _delete_older(self, cell: Cell, epoch: int) -> None:
        for older in self._checkpoint_epochs(cell):
            if older < epoch:
                path = f"{self.folder(cell)}/{_epoch_name(CHECKPOINT_PREFIX, older)}"
                if _is_remote(self.root):
                    fs, _ = self._fs()
                    fs.delete_dir(_inside(path))
                else:
                    shutil.rmtree(path, ignore_errors=True)

    def _list(self, folder: str) -> list[str]:
        if not _is_remote(self.root):
            path = Path(folder)
            return [p.name for p in path.iterdir()] if path.is_dir() else []
        import pyarrow.fs

        fs, _ = self._fs()
        selector = pyarrow.fs.FileSelector(_inside(folder), allow_not_found=True)
        return [info.base_name for info in fs.get_file_info(selector)]

    def _read_text(self, path: str) -> str | None:
        try:
            if not _is_remote(self.root):
                return Path(path).read_text(encoding="utf-8")
            fs, _ = self._fs()
            with fs.open_input_stream(_inside(path)) as f:
                return f.read().decode("utf-8")
        except (OSError, UnicodeDecodeError):
            return None

    def _upload(self, local: Path, target: str) -> None:
        fs, _ = self._fs()
        inside = _inside(target)
        fs.create_dir(inside, recursive=True)
        files = sorted(local.iterdir(), key=lambda p: p.name == CELL_FILE)  # cell file last
        for path in files:
            with fs.open_output_stream(f"{inside}/{path.name}") as out, open(path, "rb") as src:
                shutil.copyfileobj(src, out, length=16 << 20)

    def _download(self, source: str, local: Path) -> None:
        fs, _ = self._fs()
        for name in self._list(source):
            with (
                fs.open_input_stream(f"{_inside(source)}/{name}") as src,
                open(local / name, "wb") as out,
            ):
                shutil.copyfileobj(src, out, length=16 << 20)


def write_cell_file(folder: Path, cell: Cell, epoch: int, key: bytes) -> None:
    """Which cell and epoch a checkpoint folder holds, and the SHA-256 of each of its files,
    signed with the cell's key; readable without torch. Written last: it completes the folder."""
    files = {p.name: _sha256(p) for p in sorted(folder.iterdir()) if p.name != CELL_FILE}
    body = {"spec_hash": cell[0], "seed": cell[1], "epoch": epoch, "files": files}
    mac = _mac(key, _epoch_name(CHECKPOINT_PREFIX, epoch), body)
    (folder / CELL_FILE).write_text(json.dumps({**body, "mac": mac}), encoding="utf-8")


# -- signatures ------------------------------------------------------------------------------
def _mac(key: bytes, name: str, body: dict[str, Any]) -> str:
    """HMAC-SHA256 of a file's name and its content as canonical JSON (what json.loads of the
    written file gives back dumps to the same text: floats, NaN included, round-trip)."""
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hmac.new(key, f"{name}\n{text}".encode(), hashlib.sha256).hexdigest()


def _verified(text: str | None, name: str, key: bytes | None) -> dict[str, Any] | None:
    """The file's content without its mac, if the mac verifies with `key`; else None."""
    try:
        found = json.loads(text or "")
    except (ValueError, RecursionError):  # RecursionError: nested deeper than json can read
        return None
    if key is None or not isinstance(found, dict):
        return None
    mac = found.pop("mac", None)
    if not isinstance(mac, str) or not _equal(mac, _mac(key, name, found)):
        return None
    return found


def _equal(given: str, expected: str) -> bool:
    # As bytes: compare_digest refuses a str with non-ASCII characters, which a forger may write.
    return hmac.compare_digest(given.encode(), expected.encode())


def _signed_segment(text: str | None, name: str, key: bytes | None) -> dict[str, Any] | None:
    found = _verified(text, name, key)
    if found is None or set(found) != {"epochs", "diagnostics"}:
        return None
    return found


def _signed_files(text: str | None, cell: Cell, epoch: int, key: bytes | None) -> Any:
    """The {file: sha256} a checkpoint's cell file signs, if it verifies for this cell and
    epoch; else None."""
    found = _verified(text, _epoch_name(CHECKPOINT_PREFIX, epoch), key)
    if found is None:
        return None
    names = (found.get("spec_hash"), found.get("seed"), found.get("epoch"))
    if names != (cell[0], cell[1], epoch) or not isinstance(found.get("files"), dict):
        return None
    return found["files"]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(16 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
