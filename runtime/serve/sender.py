"""Sending results: C-STORE to each destination and the optional HTTP notification.

The sender thread takes due outbox rows, one association per destination and round, and marks
each row ``sent`` only after the peer acknowledged it.  A failure (peer down, association
rejected, a failure status) puts the row back with exponential backoff (``[retry]``); after
``max_attempts`` it is ``failed`` and the study shows it (``ichrt status``).  Rows of a
destination that is down wait together: one refused association counts one try for each.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from itertools import groupby

from ichrt.runtime.serve import require
from ichrt.runtime.serve.config import Destination, ServeConfig
from ichrt.runtime.serve.logs import log
from ichrt.runtime.serve.spool import uid_key
from ichrt.runtime.serve.state import OutboxItem, State
from ichrt.runtime.serve.worker import NOTIFY_KIND

SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.33"       # Comprehensive SR
SC_STORAGE = "1.2.840.10008.5.1.4.1.1.7"           # Secondary Capture Image Storage
SEND_SYNTAXES = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]


class Sender:
    def __init__(self, config: ServeConfig, state: State) -> None:
        self.config = config
        self.state = state
        self.destinations = {d.key: d for d in config.destinations}
        self.stop_event = threading.Event()
        self.sent = 0
        self.failures = 0

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                worked = self.step()
            except Exception as exc:  # noqa: BLE001 - sending must live; rows stay pending
                log.error("sender_error", exc_info=True, error=str(exc)[:300])
                worked = False
            if not worked:
                self.stop_event.wait(self.config.poll_s)

    def step(self) -> bool:
        due = self.state.due()
        if not due:
            return False
        for destination, items in groupby(due, key=lambda i: i.destination):
            if self.stop_event.is_set():
                break
            batch = list(items)
            if batch[0].kind == NOTIFY_KIND:
                for item in batch:
                    self._settle(item, notify(item, self.config.notify.timeout_s))
            elif destination in self.destinations:
                self.store(self.destinations[destination], batch, self._settle)
            else:
                for item in batch:  # a destination removed from the config since
                    self.state.mark_failed(item, "destination no longer configured", None)
        return True

    def _settle(self, item: OutboxItem, error: str | None) -> None:
        fields = {"destination": item.destination if item.kind != NOTIFY_KIND else "notify",
                  "kind": item.kind, "study": uid_key(item.study_uid)}
        if error is None:
            self.state.mark_sent(item)
            self.sent += 1
            log.info("result_sent", attempts=item.attempts + 1, **fields)
            return
        self.failures += 1
        attempts = item.attempts + 1
        retry = self.config.retry
        retry_at = None if attempts >= retry.max_attempts else time.time() + retry.delay(attempts)
        self.state.mark_failed(item, error, retry_at)
        log.warning("send_failed", attempts=attempts, error=error[:300],
                    retry_in_s=round(retry_at - time.time(), 1) if retry_at else None,
                    gave_up=retry_at is None, **fields)

    def store(self, dest: Destination, items: Sequence[OutboxItem],
              settle: Callable[[OutboxItem, str | None], None]) -> None:
        """C-STORE ``items`` to ``dest`` in one association; ``settle(item, error or None)``
        right after each answer, so that a crash mid-batch resends only what was not
        acknowledged."""
        pynetdicom = require("pynetdicom")
        from pydicom import dcmread

        ae = pynetdicom.AE(ae_title=self.config.ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        ae.connection_timeout = 10
        for sop_class in (SR_STORAGE, SC_STORAGE):
            ae.add_requested_context(sop_class, SEND_SYNTAXES)
        assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title)
        if not assoc.is_established:
            why = "association rejected" if assoc.is_rejected else (
                "association aborted" if assoc.is_aborted else "peer unreachable")
            for item in items:
                settle(item, f"{why} by {dest.key}")
            return
        try:
            for item in items:
                if self.stop_event.is_set() or not assoc.is_established:
                    break  # the rest stays pending: next round or next start
                try:
                    ds = dcmread(item.path)
                except (OSError, ValueError) as exc:
                    settle(item, f"cannot read the result file: {exc}")
                    continue
                status = assoc.send_c_store(ds)
                code = getattr(status, "Status", None)
                if code is None:
                    settle(item, f"no response from {dest.key} (timeout or abort)")
                elif code == 0x0000 or 0xB000 <= code <= 0xBFFF:  # success or warning
                    settle(item, None)
                else:
                    comment = str(status.get("ErrorComment", ""))
                    settle(item, f"{dest.key} answered 0x{code:04X} {comment}".strip())
        finally:
            if assoc.is_established:
                assoc.release()


def notify(item: OutboxItem, timeout_s: float) -> str | None:
    """POST the notification's JSON to its URL; None on a 2xx answer, else the error."""
    request = urllib.request.Request(
        item.destination, data=item.payload.encode("utf-8"), method="POST",
        headers={"Content-Type": "application/json", "User-Agent": "ichrt-serve"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            if 200 <= response.status < 300:
                return None
            return f"HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return f"notification failed: {getattr(exc, 'reason', exc)}"

