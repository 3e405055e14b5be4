"""File names from hostile UIDs stay inside the output folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ichrt.runtime.paths import inside, safe_name

HOSTILE = [
    "../../etc/passwd",
    "..",
    ".",
    "",
    "/abs/path",
    "C:\\Windows\\system32",
    "a\x00b",
    "1.2.840\n\r\t.5",
    "x" * 5000,
    "...hidden",
    "con",
    "ünïcødé/名前",
]


@pytest.mark.parametrize("uid", HOSTILE)
def test_safe_name_has_no_separators_or_parent_refs(uid: str, tmp_path: Path) -> None:
    name = safe_name(uid)
    assert name and len(name) <= 64
    assert "/" not in name and "\\" not in name and "\x00" not in name
    assert ".." not in name and not name.startswith(".")
    assert all(c.isascii() and (c.isalnum() or c in "._-") for c in name)
    target = inside(tmp_path, name + ".png")
    assert target.parent == tmp_path.resolve()


def test_safe_name_is_stable_keeps_readable_uid_and_separates_lookalikes() -> None:
    assert safe_name("1.2.840.113619.2") == safe_name("1.2.840.113619.2")
    assert safe_name("1.2.840.113619.2").startswith("1.2.840.113619.2-")
    assert safe_name("a/b") != safe_name("a_b") != safe_name("a b")
    assert safe_name("x" * 5000) != safe_name("x" * 4999)
    assert len(safe_name("y" * 300, max_len=20)) == 20


@given(st.text(max_size=300))
def test_safe_name_property(text: str) -> None:
    name = safe_name(text)
    assert 0 < len(name) <= 64 and ".." not in name and "/" not in name


def test_inside_refuses_escapes(tmp_path: Path) -> None:
    assert inside(tmp_path, "a", "b.csv") == tmp_path.resolve() / "a" / "b.csv"
    for bad in (("..", "x"), ("/etc/passwd",), ("a", "..", "..", "y")):
        with pytest.raises(ValueError, match="outside the output folder"):
            inside(tmp_path, *bad)


def test_safe_name_rejects_tiny_limits() -> None:
    with pytest.raises(ValueError):
        safe_name("x", max_len=5)
