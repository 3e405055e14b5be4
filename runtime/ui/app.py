"""The worklist page as a Starlette app: server-rendered Jinja2 pages, live by server-sent events.

Routes (relative to where the app is mounted; no UID, path or patient data in any URL: studies
are named by an opaque key, slices by their index):

\b
  /                          the worklist (flagged first by p(any), then arrival order)
  /rows                      the worklist's live part (fetched when the source changes)
  /events                    server-sent events: ``change`` with the data version
  /study/{key}               the study view (slices, window presets, overlay, probability strip)
  /study/{key}/slice/{i}.png the slice picture (``w``: brain|subdural|bone, ``o``: 1 = overlay)
  /study/{key}/thumb.png     the key slice with the finding overlaid
  /status                    model and contract, counts, last errors, disk space

Access: with a token configured every request needs it, as ``Authorization: Bearer T``,
``X-Ichrt-Token: T``, the ``ichrt_token`` cookie, or ``?token=T`` once (answered with the cookie
and a redirect to the same page without the token).  Nothing is logged per request.

starlette, jinja2 and uvicorn (the ``ui`` extra) are imported inside :func:`create_app` and
:func:`run_server` only.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from ichrt.runtime.ui import require_ui
from ichrt.runtime.ui.render import DEFAULT_PRESET, PRESETS, THUMB_SIZE, VIEW_SIZE, placeholder, png
from ichrt.runtime.ui.sources import ANY, Snapshot, Source, StudyRow

TOKEN_COOKIE = "ichrt_token"
TOKEN_HEADER = "x-ichrt-token"
#: Seconds between two looks at the source for changes (server-sent events).
POLL_S = 1.0
#: Seconds between two keep-alive comments on an idle event stream.
KEEPALIVE_S = 15.0
TEMPLATES = Path(__file__).with_name("templates")
#: Short names of the subtypes in the worklist's header.
ABBREVIATIONS = {"epidural": "EDH", "intraparenchymal": "IPH", "intraventricular": "IVH",
                 "subarachnoid": "SAH", "subdural": "SDH"}


def is_loopback(host: str) -> bool:
    """True for an address only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def make_token() -> str:
    return secrets.token_urlsafe(24)


class _PictureCache:
    """A small LRU of PNG bytes keyed by (data version, what)."""

    def __init__(self, size: int = 1024) -> None:
        self._items: OrderedDict[tuple, bytes] = OrderedDict()
        self._lock = threading.Lock()
        self.size = size

    def get(self, key: tuple, make: Callable[[], bytes]) -> bytes:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        data = make()
        with self._lock:
            self._items[key] = data
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return data


def short_version(version: str) -> str:
    """The data version as sent to browsers (a hash: stat numbers say nothing to them)."""
    return hashlib.sha256(version.encode()).hexdigest()[:12]


class Pages:
    """Renders the pages from a :class:`Source` (used by the app and by the benchmark)."""

    def __init__(self, source: Source, show_patient_id: bool = False) -> None:
        import jinja2

        self.source = source
        self.show_patient_id = show_patient_id
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(TEMPLATES)),
            autoescape=True, trim_blocks=True, lstrip_blocks=True)
        self.env.filters.update(prob=_prob, pct=_pct, when=_when, seconds=_seconds,
                                size=_size, abbrev=lambda label: ABBREVIATIONS.get(
                                    label, label[:3].upper()))

    def _common(self, snap: Snapshot, base: str) -> dict[str, Any]:
        model = snap.model or {}
        return {"snap": snap, "base": base, "version": short_version(snap.version),
                "model_name": model.get("name") or "unknown model",
                "model_sha": str(model.get("sha256") or ""),
                "show_patient_id": self.show_patient_id, "subtypes": snap.subtypes}

    def worklist(self, base: str = "") -> str:
        snap = self.source.snapshot()
        return self.env.get_template("worklist.html").render(**self._common(snap, base))

    def rows(self, base: str = "") -> str:
        snap = self.source.snapshot()
        return self.env.get_template("rows.html").render(**self._common(snap, base))

    def study(self, study: StudyRow, base: str = "") -> str:
        snap = self.source.snapshot()
        slices = self.source.slices(study)
        start = 0
        for i, item in enumerate(slices):
            if item.sop_uid == study.key_sop_uid:
                start = i
        return self.env.get_template("study.html").render(
            **self._common(snap, base), study=study, slices=slices, start=start,
            presets=PRESETS, default_preset=DEFAULT_PRESET, has_probs=any(
                s.p_any is not None for s in slices))

    def status(self, base: str = "", contract: dict[str, Any] | None = None) -> str:
        snap = self.source.snapshot()
        return self.env.get_template("status.html").render(
            **self._common(snap, base), contract=contract or {}, disks=self.source.disks())


def create_app(source: Source, token: str | None = None, show_patient_id: bool = False,
               poll_s: float = POLL_S, contract: Callable[[], dict[str, Any]] | None = None
               ) -> Any:
    """The ASGI app of the worklist page over ``source``.

    Args:
        token: required on every request when given (see the module's docstring).
        show_patient_id: show PatientID where the source has it (never the patient's name).
        poll_s: how often the event stream looks at the source for changes.
        contract: returns the model's contract for the status page (called once, lazily).
    """
    require_ui()
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.middleware import Middleware
    from starlette.middleware.gzip import GZipMiddleware
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, Response, StreamingResponse
    from starlette.routing import Route

    pages = Pages(source, show_patient_id)
    pictures = _PictureCache()
    contract_cache: dict[str, Any] = {}

    def base_of(request: Request) -> str:
        return request.scope.get("root_path", "").rstrip("/")

    def html(text: str, status: int = 200) -> Response:
        return HTMLResponse(text, status, headers=_NO_STORE)

    def find(request: Request) -> StudyRow | None:
        return source.snapshot().study(request.path_params["key"])

    def not_found() -> Response:
        return html("<!doctype html><title>not found</title><p>No such study in the current "
                    "results (it may have been replaced by a newer run).", 404)

    async def worklist(request: Request) -> Response:
        return html(await run_in_threadpool(pages.worklist, base_of(request)))

    async def rows(request: Request) -> Response:
        return html(await run_in_threadpool(pages.rows, base_of(request)))

    async def study(request: Request) -> Response:
        row = await run_in_threadpool(find, request)
        if row is None:
            return not_found()
        return html(await run_in_threadpool(pages.study, row, base_of(request)))

    async def status(request: Request) -> Response:
        if "contract" not in contract_cache:
            try:
                contract_cache["contract"] = await run_in_threadpool(contract) if contract else {}
            except Exception:  # noqa: BLE001 - the status page shows without the contract
                contract_cache["contract"] = {}
        return html(await run_in_threadpool(pages.status, base_of(request),
                                            contract_cache["contract"]))

    def _slice_png(row: StudyRow, index: int, preset: str, overlay: bool) -> bytes | None:
        slices = source.slices(row)
        if not 0 <= index < len(slices):
            return None
        item = slices[index]
        heat = source.heat_map(item) if overlay else None
        try:
            hu = source.read_hu(item)
        except Exception:  # noqa: BLE001 - unreadable or refused file: no path in any message
            return placeholder(VIEW_SIZE // 4)
        return png(hu, preset, heat, VIEW_SIZE)

    async def slice_png(request: Request) -> Response:
        row = await run_in_threadpool(find, request)
        index = _int_param(request.path_params["index"])
        preset = request.query_params.get("w", DEFAULT_PRESET)
        overlay = request.query_params.get("o") == "1"
        if row is None or index is None or preset not in PRESETS:
            return Response(status_code=404)
        version = source.snapshot().version
        data = await run_in_threadpool(pictures.get, (version, row.key, index, preset, overlay),
                                       lambda: _slice_png(row, index, preset, overlay))
        if data is None:
            return Response(status_code=404)
        return Response(data, media_type="image/png", headers=_PRIVATE_CACHE)

    def _thumb(row: StudyRow) -> bytes:
        slices = source.slices(row)
        item = next((s for s in slices if s.sop_uid == row.key_sop_uid), None)
        if item is None:
            return placeholder(THUMB_SIZE)
        try:
            hu = source.read_hu(item)
        except Exception:  # noqa: BLE001 - unreadable or refused file
            return placeholder(THUMB_SIZE)
        return png(hu, DEFAULT_PRESET, source.heat_map(item), THUMB_SIZE)

    async def thumb(request: Request) -> Response:
        row = await run_in_threadpool(find, request)
        if row is None:
            return Response(status_code=404)
        version = source.snapshot().version
        data = await run_in_threadpool(pictures.get, (version, row.key, "thumb"),
                                       lambda: _thumb(row))
        return Response(data, media_type="image/png", headers=_PRIVATE_CACHE)

    async def events(request: Request) -> Response:
        async def stream():
            last, idle = None, 0.0
            yield "retry: 2000\n\n"
            while True:
                version = short_version(await run_in_threadpool(source.version))
                if version != last:
                    last, idle = version, 0.0
                    yield f"event: change\ndata: {version}\n\n"
                elif idle >= KEEPALIVE_S:
                    idle = 0.0
                    yield ": keep-alive\n\n"
                await asyncio.sleep(poll_s)
                idle += poll_s

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={**_NO_STORE, "X-Accel-Buffering": "no"})

    routes = [
        Route("/", worklist),
        Route("/rows", rows),
        Route("/events", events),
        Route("/status", status),
        Route("/study/{key:str}", study),
        Route("/study/{key:str}/slice/{index:str}.png", slice_png),
        Route("/study/{key:str}/thumb.png", thumb),
    ]
    middleware = [Middleware(GZipMiddleware, minimum_size=1024)]
    if token:
        middleware.insert(0, Middleware(TokenGate, token=token))
    return Starlette(routes=routes, middleware=middleware)


_NO_STORE = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer",
             "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
             "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                                        "style-src 'self' 'unsafe-inline'; "
                                        "script-src 'self' 'unsafe-inline'"}
_PRIVATE_CACHE = {"Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff"}


def _int_param(text: str) -> int | None:
    return int(text) if text.isdigit() and len(text) < 7 else None


class TokenGate:
    """ASGI middleware: refuse requests without the token (header, cookie, or ``?token=``)."""

    def __init__(self, app: Any, token: str) -> None:
        self.app = app
        self.token = token.encode()

    def _ok(self, value: str | None) -> bool:
        return value is not None and secrets.compare_digest(value.encode(), self.token)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from starlette.requests import Request
        from starlette.responses import PlainTextResponse, RedirectResponse

        request = Request(scope)
        auth = request.headers.get("authorization", "")
        bearer = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        if (self._ok(bearer) or self._ok(request.headers.get(TOKEN_HEADER))
                or self._ok(request.cookies.get(TOKEN_COOKIE))):
            await self.app(scope, receive, send)
            return
        given = request.query_params.get("token")
        if self._ok(given):
            rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
            target = (scope.get("root_path", "") + scope["path"]) or "/"
            response = RedirectResponse(target + (f"?{urlencode(rest)}" if rest else ""), 303)
            response.set_cookie(TOKEN_COOKIE, given, httponly=True, samesite="strict",
                                path=scope.get("root_path", "") or "/")
            await response(scope, receive, send)
            return
        response = PlainTextResponse("401: this page needs its access token "
                                     "(open the address printed by 'ichrt ui' once)", 401,
                                     headers={"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)


def run_server(app: Any, host: str = "127.0.0.1", port: int = 8765) -> None:
    """Serve ``app`` with uvicorn until interrupted (no access log: URLs never reach logs)."""
    require_ui()
    import uvicorn

    uvicorn.run(app, host=host, port=port, access_log=False, log_level="warning",
                timeout_graceful_shutdown=2, server_header=False)


def make_server(app: Any, host: str = "127.0.0.1", port: int = 0) -> Any:
    """A ``uvicorn.Server`` for ``app`` (run it in a thread: ``server.run()``;
    stop it with ``server.should_exit = True``)."""
    require_ui()
    import uvicorn

    config = uvicorn.Config(app, host=host, port=port, access_log=False, log_level="warning",
                            timeout_graceful_shutdown=1, server_header=False, lifespan="off")
    return uvicorn.Server(config)


class BackgroundServer:
    """The app served by uvicorn in a daemon thread (for ``ichrt serve`` and the tests)."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0) -> None:
        self.server = make_server(app, host, port)
        self.thread = threading.Thread(target=self.server.run, name="ichrt-ui", daemon=True)

    def start(self, timeout: float = 20.0) -> BackgroundServer:
        """Start serving; returns once the socket listens (RuntimeError if it cannot)."""
        import time

        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the worklist page could not start (port in use?)")
            time.sleep(0.02)
        return self

    @property
    def port(self) -> int:
        """The port actually listened on (``port = 0`` picks a free one)."""
        return self.server.servers[0].sockets[0].getsockname()[1]

    def stop(self, timeout: float = 5.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)


def serve_pages(service: Any, host: str = "127.0.0.1", port: int = 0,
                token: str | None = None) -> BackgroundServer:
    """Serve the worklist page of a started ``ichrt serve`` :class:`~ichrt.runtime.serve.
    service.Service` (``--http-port``): its SQLite state, read-only, in a thread of its own.

    Raises ValueError for an address other than loopback without a token, and
    :class:`~ichrt.runtime.ui.UIUnavailable` without the ``ui`` extra.
    """
    from ichrt.runtime.ui.sources import ServeStateSource, contract_summary

    if not is_loopback(host) and not token:
        raise ValueError(f"the worklist page on {host} (not loopback) needs a token")
    require_ui()
    model = service.scorer.model
    info = {"name": model.contract.name, "sha256": model.sha256, "arch": model.contract.arch,
            "providers": list(getattr(model, "providers", []) or [])}
    source = ServeStateSource(service.config.db_path, spool=service.config.spool, model=info,
                              health=getattr(service, "health", None))
    app = create_app(source, token=token, contract=lambda: contract_summary(model.contract))
    return BackgroundServer(app, host, port).start()


# ----------------------------------------------------------------------------- formatting


def _prob(p: float | None) -> str:
    return "-" if p is None else f"{p:.3f}"


def _pct(p: float | None) -> str:
    """A probability as a CSS number in [0, 1] with two digits (for ``--p``)."""
    return "0" if p is None else f"{min(max(p, 0.0), 1.0):.2f}"


def _when(text: str) -> str:
    return text.replace("T", " ")[:16] if text else "-"


def _seconds(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min"


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


__all__ = ["ANY", "BackgroundServer", "Pages", "TokenGate", "create_app", "is_loopback",
           "make_server", "make_token", "run_server", "serve_pages"]
