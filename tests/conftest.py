"""Shared pytest fixtures. Area-specific helpers live in their own modules under tests/."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
SHARED = REPO.parent / "shared"
sys.path.insert(0, str(TESTS))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory):
    """(path, contract) of a tiny ichrt-shaped ONNX model (see tests/tinymodel.py)."""
    from tinymodel import make_tiny_model

    path = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    contract = make_tiny_model(path)
    return path, contract


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The project's shared/ folder (real CT for evaluation, real training images)."""
    if not SHARED.is_dir():
        pytest.fail(f"shared/ folder not found beside the repository at {SHARED}")
    return SHARED
