"""Folders a command writes whole: built in a temporary sibling and swapped in only when complete, replacing an
existing folder only when it holds nothing but what this tool wrote there.

Every command that is handed a folder to write (``export --out``, ``results SWEEP DIR``, a model's ``final/``)
goes through :func:`building`. The folder it makes carries a marker file (:data:`MARKER`) listing every file
written into it; a later command replaces the folder only when the marker is there and no file beyond its
list has appeared (an expert's notes, a user's own file). Otherwise it refuses before any work, naming the
foreign files. A failure while building (an exception, Ctrl-C, a failed verification) removes the
temporary folder and leaves the existing one as it was.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Iterator

from improve_lib.core.errors import StudyInputError

#: The marker a folder written whole by this tool carries: which files it wrote, and as what.
MARKER = ".improve-study-folder.json"
WRITTEN_BY = "improve-study"


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() or p.is_symlink())


def mark(folder: str | Path, what: str) -> Path:
    """Write ``folder``'s marker, listing every file in it now as written by this tool as ``what``."""
    folder = Path(folder)
    files = [f for f in _files(folder) if f != MARKER]
    path = folder / MARKER
    path.write_text(json.dumps({"written_by": WRITTEN_BY, "what": what, "files": files}, indent=1) + "\n")
    return path


def foreign(folder: str | Path) -> list[str]:
    """The files in ``folder`` this tool did not write there: none for a missing or empty folder; every file
    when it carries no readable marker; else those beyond its marker's list."""
    folder = Path(folder)
    if not folder.exists():
        return []
    if not folder.is_dir():
        return [folder.name]
    present = _files(folder)
    try:
        marker = json.loads((folder / MARKER).read_text())
        ours = set(marker["files"]) if marker.get("written_by") == WRITTEN_BY else set()
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        ours = set()
    return [f for f in present if f != MARKER and f not in ours]


def check_replaceable(folder: str | Path, what: str) -> None:
    """Raise, naming them, when ``folder`` holds files this tool did not write (so replacing it would delete
    them). A missing or empty folder, or one this tool wrote whole, passes."""
    folder = Path(folder)
    found = foreign(folder)
    if found:
        shown = ", ".join(found[:8]) + (f" and {len(found) - 8} more" if len(found) > 8 else "")
        raise StudyInputError(f"{folder} holds {len(found)} file(s) that this tool did not write there ({shown}): "
                              f"{what} replaces only folders it wrote whole; move them out or choose another folder")


@contextlib.contextmanager
def building(folder: str | Path, what: str) -> Iterator[Path]:
    """Yield a new temporary sibling of ``folder`` to fill. When the block ends without an exception the
    sibling gets its marker and replaces ``folder``; on any exception (Ctrl-C included) it is removed and
    ``folder`` is left as it was. Raises before yielding when ``folder`` holds files this tool did not write."""
    folder = Path(folder)
    check_replaceable(folder, what)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)  # a sibling of this process's own name: left by nobody else
    tmp.mkdir()
    try:
        yield tmp
        mark(tmp, what)
        check_replaceable(folder, what)  # again: something may have appeared while this was built
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
            os.replace(folder, old)
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
