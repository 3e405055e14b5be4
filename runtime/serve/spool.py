"""Durable, hash-named files: an acknowledged instance is never lost.

Layout under the spool folder::

    tmp/                      files being written (removed at start-up: never acknowledged)
    studies/<study key>/<instance key>.dcm      received instances
    results/<study key>/<result uid key>.dcm    SR and SC objects made by the service
    state.sqlite                                the state (see :mod:`.state`)

Keys are SHA-256 hex digests of the UIDs (the untrusted UIDs never become paths).  A file is
written to ``tmp/`` under a unique name, flushed and fsync'd, renamed into place, and the folder
fsync'd: after a crash either the whole file is there under its final name or it is not there.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

from ichrt.runtime.outputs import fsync_dir

#: Hex digits of the SHA-256 kept in folder and file names.
KEY_LEN = 24


def uid_key(*uids: str) -> str:
    """A file-system-safe key of one or more UIDs (SHA-256, hex, :data:`KEY_LEN` digits)."""
    text = "\\".join(uids)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:KEY_LEN]


class Spool:
    """The spool folder: where instances and results live on disk."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.tmp = self.root / "tmp"
        self.studies = self.root / "studies"
        self.results = self.root / "results"
        for folder in (self.root, self.tmp, self.studies, self.results):
            folder.mkdir(parents=True, exist_ok=True)
        fsync_dir(self.root)

    def instance_path(self, study_uid: str, series_uid: str, sop_uid: str) -> Path:
        return self.studies / uid_key(study_uid) / f"{uid_key(study_uid, series_uid, sop_uid)}.dcm"

    def result_path(self, study_uid: str, sop_uid: str) -> Path:
        return self.results / uid_key(study_uid) / f"{uid_key(sop_uid)}.dcm"

    def temporary(self) -> Path:
        return self.tmp / f"{uuid.uuid4().hex}.part"

    def clear_tmp(self) -> int:
        """Remove leftovers of writes that a crash interrupted (never acknowledged)."""
        n = 0
        for path in self.tmp.glob("*.part"):
            path.unlink(missing_ok=True)
            n += 1
        return n

    def instance_files(self) -> Iterator[Path]:
        yield from self.studies.glob("*/*.dcm")


def write_synced(tmp: Path, chunks: Iterable[bytes]) -> int:
    """Write ``chunks`` to ``tmp`` and fsync it; returns the bytes written."""
    size = 0
    with open(tmp, "wb") as fh:
        for chunk in chunks:
            fh.write(chunk)
            size += len(chunk)
        fh.flush()
        os.fsync(fh.fileno())
    return size


def write_durably(path: Path, chunks: Iterable[bytes], tmp: Path) -> int:
    """Write ``chunks`` to ``tmp``, fsync, rename to ``path``, fsync the folder; bytes written."""
    try:
        size = write_synced(tmp, chunks)
        move_durably(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return size


def move_durably(tmp: Path, path: Path) -> None:
    """Rename an already fsync'd ``tmp`` into ``path`` and fsync the folder."""
    folder = path.parent
    if not folder.is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        fsync_dir(folder.parent)
    os.replace(tmp, path)
    fsync_dir(folder)
