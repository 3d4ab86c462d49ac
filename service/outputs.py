"""The one check of every folder bnsweep writes into, before anything is written.

Two kinds of output folder:

- files written into it (`tables --out`, `plots --out`, `train --checkpoint-dir`, a sweep's
  `storage:`): bnsweep writes its own named files there and removes nothing, so any folder
  will do, existing or not, as long as it can be written.
- a folder replaced whole (`report --out`, `launch --report`): the report is written beside it
  and renamed into place, and the earlier folder is then removed. So the folder must be new,
  empty, or a report bnsweep wrote (it holds `REPORT_MARKER`). Anything else is refused in one
  line and left untouched: a file, a symbolic link (a delete never follows one), another
  folder, the current, home or root folder or one above them, a folder holding the store.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from bnsweep.workers.errors import RuntimeFailure, SpecError

#: The file every report holds, saying that bnsweep wrote the folder and may replace it.
REPORT_MARKER = ".bnsweep-report"
#: What the marker says; `version` is the report's layout, raised when it changes. Any version
#: is replaced: a report written by an older or newer bnsweep is still bnsweep's own.
REPORT_FORMAT = "bnsweep report"
REPORT_VERSION = 1

_REPLACEABLE = "a report replaces its folder whole: give a new or empty folder, or an old report"


def report_marker_text() -> str:
    """The body of `REPORT_MARKER` in a report being written."""
    return json.dumps({"format": REPORT_FORMAT, "version": REPORT_VERSION}) + "\n"


def is_report(folder: Path) -> bool:
    """`folder` (not a link) holds a marker that bnsweep wrote (not a link either)."""
    marker = folder / REPORT_MARKER
    if folder.is_symlink() or marker.is_symlink() or not marker.is_file():
        return False
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return (
        isinstance(data, dict)
        and data.get("format") == REPORT_FORMAT
        and isinstance(data.get("version"), int)
    )


def check_writable_folder(
    option: str,
    folder: str | Path,
    *,
    create: bool = True,
    replaced: bool = False,
    store_url: str | None = None,
) -> Path:
    """`folder` as a folder this command may write (created if need be; with `create=False`
    only checked to be creatable, so that a refused command leaves nothing behind); else one
    line naming the option, the folder and why.

    With `replaced=True` the folder is to be replaced whole (see the module's note): nothing is
    created, and the returned path is absolute with its parents' links resolved but not its own
    name, the path every later step must use. `store_url` names the results store a replaced
    folder must not hold.
    """
    if not str(folder).strip():
        raise SpecError(f"{option}: empty, expected a folder")
    path = Path(folder).expanduser()
    if path.exists() and not path.is_dir():
        raise SpecError(f"{option} {path}: is a file, expected a folder")
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise SpecError(f"{option} {path}: a part of this path is a file ({existing})")
    # Before the permission check: a folder no report may replace is refused whoever runs it.
    target = _check_replaceable(option, path, store_url) if replaced else path
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RuntimeFailure(f"{option} {path}: permission denied ({existing} is not writable)")
    if replaced:
        return target
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise RuntimeFailure(
                f"{option} {path}: cannot create it ({err.strerror or err})"
            ) from None
    return path


def _check_replaceable(option: str, path: Path, store_url: str | None) -> Path:
    # abspath folds `..` by the text, so `a/b/..` names `a` here as in every step after.
    absolute = Path(os.path.abspath(path))
    if absolute.is_symlink():
        raise SpecError(
            f"{option} {path}: is a symbolic link, which a report never replaces; "
            "give the folder itself or a new one"
        )
    target = absolute.parent.resolve() / absolute.name if absolute.name else absolute
    protected = _protected(target)
    if protected is not None:
        raise SpecError(f"{option} {path}: is {protected}; {_REPLACEABLE}")
    store = _store_file(store_url)
    if store is not None and (store == target or target in store.parents):
        raise SpecError(f"{option} {path}: holds the results store {store}; {_REPLACEABLE}")
    if target.is_dir() and not is_report(target) and any(target.iterdir()):
        raise SpecError(
            f"{option} {path}: is a folder bnsweep did not write as a report (it has files and "
            f"no {REPORT_MARKER}); {_REPLACEABLE}"
        )
    return target


def replaceable_kind(folder: Path) -> str | None:
    """What a report may replace `folder` as, `report` or `empty`, else None: the check of
    `check_writable_folder(replaced=True)` again, on the folder once it is moved aside."""
    if folder.is_symlink() or not folder.is_dir():
        return None
    if is_report(folder):
        return "report"
    return None if any(folder.iterdir()) else "empty"


def _protected(target: Path) -> str | None:
    """What `target` is when it is a folder no report may replace: the root, home or current
    folder, or one above the home or current folder."""
    try:
        cwd: Path | None = Path.cwd().resolve()
    except OSError:  # the current folder was removed: nothing to protect by that name
        cwd = None
    try:
        home: Path | None = Path.home().resolve()
    except RuntimeError:  # no HOME and no password entry: nothing to protect by that name
        home = None
    if target == Path(target.anchor):
        return "the root folder"
    if target == home:
        return "the home folder"
    if target == cwd:
        return "the current folder"
    if cwd is not None and target in cwd.parents:
        return "a folder above the current one"
    if home is not None and target in home.parents:
        return "a folder above the home folder"
    return None


def _store_file(url: str | None) -> Path | None:
    """The SQLite file behind `url` (or BNSWEEP_DB, or the default), resolved; None for
    PostgreSQL, memory, or a URL the store itself will refuse."""
    from bnsweep.store.errors import StoreError, parse_url, resolve_url

    try:
        parsed = parse_url(resolve_url(url))
    except StoreError:
        return None
    database = parsed.database
    if not parsed.drivername.startswith("sqlite") or not database or database == ":memory:":
        return None
    if database.startswith("file:"):  # a SQLite URI: its path, without the query
        database = database[len("file:") :].split("?", 1)[0]
    return Path(database).expanduser().resolve()
