"""The service: spool, state, intake (SCP), worker and sender wired together.

>>> from ichrt.runtime.serve.config import load_config
>>> from ichrt.runtime.serve.service import Service
>>> service = Service(load_config("ichrt.toml")).start()     # doctest: +SKIP
>>> service.wait()      # until SIGTERM / SIGINT / service.request_stop()   # doctest: +SKIP

Start-up recovers from a crash: half-written files in ``tmp/`` are removed (they were never
acknowledged), instance files that reached the spool but not the state are indexed, complete
studies are scored and pending results sent where they left off.  Stopping (SIGTERM) closes the
listening socket, lets the current associations finish (up to ``drain_s``), lets the worker
finish the study it is scoring, and closes the database.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ichrt.runtime.serve.config import ServeConfig
from ichrt.runtime.serve.intake import Intake
from ichrt.runtime.serve.logs import log
from ichrt.runtime.serve.sender import Sender
from ichrt.runtime.serve.spool import Spool
from ichrt.runtime.serve.state import InstanceRecord, State
from ichrt.runtime.serve.worker import Worker


class Service:
    def __init__(self, config: ServeConfig, scorer: Any = None) -> None:
        self.config = config
        self.scorer = scorer
        self.spool: Spool | None = None
        self.state: State | None = None
        self.intake: Intake | None = None
        self.worker: Worker | None = None
        self.sender: Sender | None = None
        self.server: Any = None
        self.http: ThreadingHTTPServer | None = None
        self.ui: Any = None
        self.threads: list[threading.Thread] = []
        self.stopping = threading.Event()
        self.started_at = 0.0

    # -- life cycle --------------------------------------------------------------------------

    def start(self) -> Service:
        from ichrt.runtime.serve import require

        require("pynetdicom")
        require("highdicom")
        config = self.config
        self.spool = Spool(config.spool)
        self.state = State(config.db_path)
        self.recover()
        if self.scorer is None:
            from ichrt.runtime.scorer import Scorer

            threshold = config.threshold if config.threshold >= 0 else None
            self.scorer = Scorer(config.model or None, threshold=threshold, explain="auto")
        self.intake = Intake(config, self.spool, self.state)
        self.worker = Worker(config, self.spool, self.state, self.scorer)
        self.sender = Sender(config, self.state)
        for name, target in (("ichrt-worker", self.worker.run),
                             ("ichrt-sender", self.sender.run)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self.threads.append(thread)
        ae = self.intake.make_ae()
        self.server = ae.start_server((config.host, config.port), block=False,
                                      evt_handlers=self.intake.handlers())
        if config.status_port:
            self.http = _status_server(self, config.status_port)
        if config.http_port:  # the worklist page over this service's state (ichrt[ui])
            from ichrt.runtime.ui.app import serve_pages

            self.ui = serve_pages(self, host=config.http_host, port=config.http_port,
                                  token=config.http_token or None)
        self.started_at = time.time()
        model = self.scorer.model
        log.info("serve_started", **config.to_dict(),
                 listening=f"{config.host}:{self.port}",
                 model_name=model.contract.name, model_sha256=model.sha256)
        return self

    @property
    def port(self) -> int:
        """The port actually listened on (``port = 0`` picks a free one)."""
        return self.server.server_address[1] if self.server is not None else self.config.port

    def recover(self) -> None:
        """Undo what a crash left half done (see the module docstring)."""
        assert self.spool is not None and self.state is not None
        removed = self.spool.clear_tmp()
        known = self.state.known_paths()
        indexed = 0
        for path in self.spool.instance_files():
            if str(path) in known:
                continue
            record = _record_of(path)
            if record is None:
                path.unlink(missing_ok=True)
                continue
            self.state.add_instance(record)
            indexed += 1
        if removed or indexed:
            log.info("recovered", tmp_removed=removed, instances_indexed=indexed)

    def request_stop(self, *_: Any) -> None:
        self.stopping.set()

    def wait(self) -> None:
        """Block until a stop is requested (SIGTERM/SIGINT when called from the main thread)."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self.request_stop)
            signal.signal(signal.SIGINT, self.request_stop)
        while not self.stopping.wait(0.5):
            pass
        self.stop()

    def stop(self, drain_s: float = 30.0) -> None:
        """Stop gracefully: no new associations, current ones finish, state closed."""
        log.info("serve_stopping")
        t0 = time.monotonic()
        self.stopping.set()
        if self.server is not None:
            active = list(self.server.active_associations)
            self.server.shutdown()
            deadline = time.monotonic() + drain_s
            # established associations may finish; rejected ones linger until the peer
            # closes the connection (or a timeout) and are not waited for
            while (any(a.is_alive() and a.is_established for a in active)
                   and time.monotonic() < deadline):
                time.sleep(0.05)
            for assoc in active:
                if assoc.is_alive():
                    assoc.abort()
            self.server = None
        log.debug("serve_stop_phase", phase="associations", seconds=time.monotonic() - t0)
        if self.http is not None:
            self.http.shutdown()
            self.http.server_close()
            self.http = None
        if self.ui is not None:
            self.ui.stop()
            self.ui = None
        for component in (self.worker, self.sender):
            if component is not None:
                component.stop_event.set()
        for thread in self.threads:
            thread.join(timeout=drain_s)
        self.threads = []
        log.debug("serve_stop_phase", phase="threads", seconds=time.monotonic() - t0)
        if self.state is not None:
            summary = self.state.summary()
            self.state.close()
            self.state = None
            log.info("serve_stopped", studies=summary["studies"], outbox=summary["outbox"])

    # -- status ------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """The /healthz document: liveness of each part and the state's counts."""
        alive = {t.name: t.is_alive() for t in self.threads}
        doc: dict[str, Any] = {
            "ok": bool(self.server is not None and all(alive.values())),
            "uptime_s": round(time.time() - self.started_at, 1),
            "listening": self.server is not None, "threads": alive,
            "active_associations": (len(self.server.active_associations)
                                    if self.server is not None else 0),
            "scoring": bool(self.worker and self.worker.busy),
        }
        if self.state is not None:
            doc.update(self.state.summary())
        return doc


def _record_of(path: Any) -> InstanceRecord | None:
    """The state record of a spooled file (None when it is not a readable CT slice)."""
    from ichrt.runtime.dicom import read_or_reject
    from ichrt.runtime.slices import Slice

    read = read_or_reject(path)
    if not isinstance(read, Slice):
        return None
    ident = read.identity
    return InstanceRecord(ident.study_uid, ident.series_uid, ident.sop_uid,
                          "1.2.840.10008.5.1.4.1.1.2", str(path), path.stat().st_size,
                          "(recovered)", ident.accession_number)


def _status_server(service: Service, port: int) -> ThreadingHTTPServer:
    """``GET /healthz`` on 127.0.0.1:``port``: 200 with the health JSON, 503 when not ok."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # http.server's method name
            if self.path.rstrip("/") not in ("/healthz", "/status"):
                self.send_error(404)
                return
            doc = service.health()
            body = json.dumps(doc, default=str).encode()
            self.send_response(200 if doc["ok"] else 503)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, name="ichrt-status", daemon=True)
    thread.start()
    return server
