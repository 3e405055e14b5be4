"""Safe file names from untrusted strings, and writes confined to the user's output folder.

UIDs, accession numbers and ids come from DICOM files and are untrusted: a hostile or broken file
can carry ``../../etc/passwd``, path separators, control characters or kilobytes of text.  Every
file name the runtime builds from such a string goes through :func:`safe_name`, and every path it
writes goes through :func:`inside`, so nothing is ever written outside ``--out``.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

#: Characters kept as they are; everything else becomes ``_``.
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
#: Length of the stable hash suffix (hex digits of SHA-256 of the untrusted text).
_HASH_LEN = 10


def safe_name(untrusted: str, max_len: int = 64) -> str:
    """A file-name stem derived from ``untrusted`` that is safe on every file system.

    Only ``[A-Za-z0-9._-]`` survive, leading dots are removed (no ``..``, no hidden files), the
    readable part is cut so that the whole name stays within ``max_len`` characters, and a hash of
    the original text is appended so that two inputs that sanitize alike never share a name.
    """
    if max_len < _HASH_LEN + 2:
        raise ValueError(f"max_len must be at least {_HASH_LEN + 2}, got {max_len}")
    digest = hashlib.sha256(untrusted.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_LEN]
    readable = _UNSAFE.sub("_", untrusted).replace("..", "_").lstrip("._-")
    readable = readable[: max_len - _HASH_LEN - 1].rstrip("._-")
    return f"{readable}-{digest}" if readable else digest


def inside(out_dir: str | Path, *parts: str) -> Path:
    """``out_dir / parts...``, refusing any result that would leave ``out_dir``.

    Raises:
        ValueError: when a part is absolute or climbs out of ``out_dir`` (a bug or an attack).
    """
    root = Path(out_dir).resolve()
    target = root.joinpath(*parts).resolve()
    if target != root and root not in target.parents:
        raise ValueError(f"refusing to write outside the output folder {root}: {target}")
    return target
