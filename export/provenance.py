"""Where a model came from: library versions and the source revision, for the contract."""

from __future__ import annotations

import subprocess
from importlib import metadata
from pathlib import Path

#: Distributions whose versions are recorded in every exported model.
TRACKED = ("ichrt", "torch", "torchvision", "onnx", "onnxruntime", "numpy")


def versions() -> dict[str, str]:
    """Installed versions of :data:`TRACKED` (those that are installed)."""
    out = {}
    for name in TRACKED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def git_revision() -> str | None:
    """The commit hash of the ichrt source tree (with ``-dirty`` when it has changes), or None
    when it is not a git checkout or git is missing."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, capture_output=True, text=True, timeout=10,
                               check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}-dirty" if dirty else head
