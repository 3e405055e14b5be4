"""Result folders that appear completely or not at all, written by one run at a time.

A run's files are written into a staging folder beside ``--out`` (same file system) and swapped
into place with one ``rename``: a reader sees the previous complete results or the new complete
results, never a mix, and a run that fails or is killed leaves the previous results untouched
(its staging folder is removed, or removed by the next run).  Files of earlier runs that the new
run does not write (stale heat maps) disappear with the old folder.

* :class:`OutputLock` - ``flock`` on ``<parent>/.<name>.ichrt-lock``: a second run into the same
  folder fails fast (:class:`OutputBusy`) or waits.  Re-entrant within a process.
* :func:`check_output_folder` - refuses a ``--out`` that is not a folder, holds a symbolic link,
  or holds files ichrt did not write (the swap would discard them): :class:`OutputRefused`.
* :func:`publish` - stage, write, swap (``renameat2(RENAME_EXCHANGE)`` on Linux; elsewhere two
  renames), remove the old folder.  Write errors become :class:`OutputWriteError`.
* :func:`internal_paths` - what an input walk must skip (the folder, its lock, leftovers).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import secrets
import shutil
import stat
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, Self, TypeVar

#: Written last into every result folder: what wrote it and which entries belong to the run.
RUN_FILE = "run.json"
_LOCK_SUFFIX = ".ichrt-lock"
_STAGING_TAG = ".ichrt-new-"
_OLD_TAG = ".ichrt-old-"
T = TypeVar("T")


class OutputError(Exception):
    """The output folder cannot take this run's results (the message says why and what to do)."""


class OutputRefused(OutputError):
    """``--out`` itself is unusable: not a folder, a planted symbolic link, foreign files."""


class OutputBusy(OutputError):
    """Another run holds the output folder's lock."""


class OutputWriteError(OutputError):
    """Writing or publishing the results failed (full disk, read-only folder, ...)."""


# ----------------------------------------------------------------------------- names


def resolve_out(out: str | os.PathLike) -> Path:
    """``out`` as an absolute path with symbolic links of its parents resolved (not the last)."""
    path = Path(os.path.abspath(out))
    return Path(os.path.realpath(path.parent)) / path.name


def final_path(out: str | os.PathLike) -> Path:
    """Where results go: :func:`resolve_out`, or the target when ``out`` is a symbolic link."""
    path = resolve_out(out)
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def lock_path(out: Path) -> Path:
    return out.parent / f".{out.name}{_LOCK_SUFFIX}"


def internal_paths(out: str | os.PathLike) -> list[Path]:
    """The output folder, its lock file and leftovers of killed runs: never inputs."""
    out = final_path(out)
    found = [out, lock_path(out)]
    if out.parent.is_dir():
        found += [p for p in out.parent.glob(f".{_glob_escape(out.name)}.ichrt-*")]
    return found


def _glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def _leftovers(out: Path) -> list[Path]:
    prefixes = (f".{out.name}{_STAGING_TAG}", f".{out.name}{_OLD_TAG}")
    if not out.parent.is_dir():
        return []
    return [p for p in out.parent.iterdir() if p.name.startswith(prefixes)]


# ----------------------------------------------------------------------------- lock


class OutputLock:
    """An exclusive lock on an output folder (a lock file beside it, removed on release).

    Args:
        out: the output folder (need not exist; its parent is created).
        wait: block until the other run ends instead of raising :class:`OutputBusy`.
    """

    _held: ClassVar[dict[str, int]] = {}
    _guard: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, out: str | os.PathLike, wait: bool = False) -> None:
        self.out = final_path(out)
        self.path = lock_path(self.out)
        self.wait = wait
        self._fd: int | None = None

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        key = str(self.path)
        with self._guard:
            if key in self._held:  # this process already holds it (the CLI, then write_result)
                self._held[key] += 1
                return
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputWriteError(f"cannot create {self.out.parent}: {_why(exc)}") from None
        self._fd = self._lock_file()
        with self._guard:
            self._held[key] = 1

    def _lock_file(self) -> int:
        """Open and lock the lock file; retry when the previous holder removed it meanwhile."""
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
            except OSError as exc:
                raise OutputWriteError(f"cannot lock the output folder {self.out} "
                                       f"({self.path}): {_why(exc)}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if self.wait else fcntl.LOCK_NB))
            except BlockingIOError:
                holder = _read_pid(fd)
                os.close(fd)
                raise OutputBusy(
                    f"the output folder {self.out} is being written by another ichrt run"
                    f"{f' (pid {holder})' if holder else ''}; run again when it ends, "
                    "or pass --wait to wait for it") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path, follow_symlinks=False).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                return fd
            os.close(fd)

    def release(self) -> None:
        key = str(self.path)
        with self._guard:
            count = self._held.get(key, 0)
            if count > 1:
                self._held[key] = count - 1
                return
            self._held.pop(key, None)
        if self._fd is not None:
            try:
                os.unlink(self.path)  # while still locked: a waiter then re-checks the inode
            except OSError:
                pass
            os.close(self._fd)
            self._fd = None


def _read_pid(fd: int) -> str:
    try:
        return os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return ""


# ----------------------------------------------------------------------------- checks


def check_output_folder(out: str | os.PathLike, owned: Iterable[str] = ()) -> Path:
    """The resolved ``out`` if a run may replace it; raise :class:`OutputRefused` otherwise.

    ``out`` may be missing, empty, or hold only entries a run writes: ``owned`` names, plus the
    entries that its ``run.json`` lists.  Symbolic links are refused wherever they sit at the top
    (a planted ``worklist.csv -> /etc/...``), and so is anything else: replacing the folder would
    throw it away.
    """
    path = final_path(out)
    if path == path.parent:
        raise OutputRefused(f"--out {out}: cannot use the root folder for results")
    if not path.exists():
        return path
    if not path.is_dir():
        raise OutputRefused(f"--out {out}: exists and is not a folder")
    known = set(owned) | {RUN_FILE} | _listed_entries(path)
    foreign = []
    for entry in sorted(path.iterdir()):
        if entry.is_symlink():
            raise OutputRefused(
                f"--out {out}: {entry.name} is a symbolic link (to {os.readlink(entry)}); "
                "ichrt writes only its own files there: remove the link")
        if entry.name not in known:
            foreign.append(entry.name)
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise OutputRefused(
            f"--out {out}: holds files ichrt did not write ({shown}); each run replaces the "
            "whole folder, so give an empty or new folder")
    return path


def _listed_entries(folder: Path) -> set[str]:
    """Top-level entries a previous run's run.json says it wrote."""
    try:
        listed = json.loads((folder / RUN_FILE).read_text(encoding="utf-8")).get("entries", [])
    except (OSError, ValueError, AttributeError):
        return set()
    return {name for name in listed if isinstance(name, str) and "/" not in name}


# ----------------------------------------------------------------------------- publish


def publish(
    out: str | os.PathLike,
    write: Callable[[Path, Path], T],
    owned: Iterable[str] = (),
    run_info: Callable[[T], dict[str, Any]] | None = None,
) -> T:
    """Write a run's results into a staging folder and swap it into place as ``out``.

    Args:
        write: ``write(staging, final)`` writes every file into ``staging``; ``final`` is where
            they will be once published (for paths reported inside the files).
        owned: top-level names runs write (see :func:`check_output_folder`).
        run_info: builds ``run.json`` from ``write``'s result (``entries`` is added).

    Raises:
        OutputRefused: ``out`` holds what a run must not replace.
        OutputWriteError: a write or the swap failed; the previous results are untouched.
    """
    owned = tuple(owned)
    final = check_output_folder(out, owned)
    for leftover in _leftovers(final):  # of killed runs; our lock keeps live ones away
        _remove(leftover)
    with _staging(final) as staging:
        try:
            value = write(staging, final)
            entries = sorted({*(p.name for p in staging.iterdir()), RUN_FILE})
            info = {**(run_info(value) if run_info else {}), "entries": entries}
            _write_synced(staging / RUN_FILE, json.dumps(info, indent=2) + "\n")
            fsync_dir(staging)
        except OSError as exc:
            raise OutputWriteError(
                f"cannot write the results for {final}: {_why(exc)}; "
                "the previous results (if any) are untouched") from None
        check_output_folder(final, owned)  # again, just before replacing it
        _swap_in(staging, final)
    return value


@contextmanager
def _staging(final: Path) -> Iterator[Path]:
    """A fresh folder beside ``final``, removed on the way out unless it was swapped in."""
    name = f".{final.name}{_STAGING_TAG}{os.getpid()}-{secrets.token_hex(4)}"
    staging = final.parent / name
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(staging, 0o777)
        if final.is_dir():
            os.chmod(staging, stat.S_IMODE(final.stat().st_mode))
    except OSError as exc:
        raise OutputWriteError(f"cannot create a folder beside {final} for the results: "
                               f"{_why(exc)}; the previous results (if any) are untouched") from None
    try:
        yield staging
    finally:
        if staging.exists():
            _remove(staging)


def _swap_in(staging: Path, final: Path) -> None:
    """Put ``staging`` in place of ``final`` atomically; the old content is removed after."""
    try:
        if not final.exists():
            os.rename(staging, final)
        elif _exchange(staging, final):
            _remove(staging)  # now holds the previous results
        else:
            old = final.parent / f".{final.name}{_OLD_TAG}{os.getpid()}-{secrets.token_hex(4)}"
            os.rename(final, old)
            os.rename(staging, final)
            _remove(old)
        fsync_dir(final.parent)
    except OSError as exc:
        raise OutputWriteError(f"cannot move the new results into {final}: {_why(exc)}; "
                               "the previous results (if any) are untouched") from None


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2``); False where that is not available."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    rc = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def fsync_files(folder: Path, names: Iterable[str]) -> None:
    """Flush the named files of ``folder`` to disk (before the swap makes them visible)."""
    for name in names:
        fd = os.open(folder / name, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new entry in ``folder`` durable (no-op where unsupported)."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    """Remove a file or folder tree (symbolic links are removed, never followed)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except OSError:
            pass


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc) if not exc.filename else f"{exc.filename}: {exc.strerror or exc}"
