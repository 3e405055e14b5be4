"""Optional dependencies (install extras): one error type and one way of naming what to install.

Every feature that needs an extra imports it lazily and, when it is missing, raises an
:class:`ExtraNotInstalled` (or a subclass with the feature's own name) whose message comes from
:func:`needs_extra`, so that every such message reads the same and names the command to run.
"""

from __future__ import annotations


class ExtraNotInstalled(ImportError):
    """An optional dependency (an install extra of ichrt) is not installed."""


def install_hint(extra: str) -> str:
    """The command that installs ``extra``: ``pip install "ichrt[extra]"``."""
    return f'pip install "ichrt[{extra}]"'


def needs_extra(what: str, extra: str, detail: str = "") -> str:
    """``<what> needs the '<extra>' extra: pip install "ichrt[<extra>]"`` (+ `` (detail)``)."""
    message = f"{what} needs the '{extra}' extra: {install_hint(extra)}"
    return f"{message} ({detail})" if detail else message
