"""The worklist page: a small ASGI app over the results of ``ichrt score`` or ``ichrt serve``.

* :mod:`~ichrt.runtime.ui.sources` - where the pages read from: :class:`ResultsSource` (the
  output folder of ``ichrt score``) or :class:`ServeStateSource` (the SQLite state of
  ``ichrt serve``), both behind one small interface (:class:`Source`).  Lean (no web packages).
* :mod:`~ichrt.runtime.ui.render` - window presets, slice pictures with the heat map overlay,
  thumbnails: the runtime's own picture code.  Lean.
* :mod:`~ichrt.runtime.ui.app` - the Starlette app (server-rendered Jinja2 pages, server-sent
  events for live updates, token access) and :func:`~ichrt.runtime.ui.app.run_server`.  Its web
  packages (starlette, jinja2, uvicorn: the ``ui`` extra) are imported only when an app is built.
"""

from __future__ import annotations

from ichrt.runtime.extras import ExtraNotInstalled, needs_extra


class UIUnavailable(ExtraNotInstalled):
    """starlette / jinja2 / uvicorn are not installed (the ``ui`` extra)."""


def require_ui() -> None:
    """Raise :class:`UIUnavailable` naming the extra when the web packages are missing."""
    import importlib.util

    missing = []
    for name in ("starlette", "jinja2", "uvicorn"):
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(name)
    if missing:
        raise UIUnavailable(needs_extra("the worklist page", "ui",
                                        f"missing: {', '.join(missing)}"))
