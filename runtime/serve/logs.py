"""Structured log lines: one JSON object per event on stderr, never a patient name.

Fields are passed explicitly (``log.info("stored", study=key, aet=...)``); the service logs study
*keys* (the hash that names the spool folder) rather than UIDs, AccessionNumber only when the
configuration says ``log_ids = true``, and never a patient name (no log call is given one).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

LOGGER = "ichrt.serve"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "event": record.getMessage(),
        }
        doc.update(getattr(record, "fields", {}))
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info).splitlines()[-1]
        return json.dumps(doc, default=str, ensure_ascii=True)


class EventLog:
    """``log.info(event, **fields)`` over a standard logger with the JSON formatter."""

    def __init__(self, name: str = LOGGER) -> None:
        self.logger = logging.getLogger(name)

    def _log(self, level: int, event: str, exc_info: bool = False, **fields: Any) -> None:
        if self.logger.isEnabledFor(level):
            self.logger.log(level, event, extra={"fields": fields}, exc_info=exc_info)

    def debug(self, event: str, **fields: Any) -> None:
        self._log(logging.DEBUG, event, **fields)

    def info(self, event: str, **fields: Any) -> None:
        self._log(logging.INFO, event, **fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._log(logging.WARNING, event, **fields)

    def error(self, event: str, exc_info: bool = False, **fields: Any) -> None:
        self._log(logging.ERROR, event, exc_info=exc_info, **fields)


def setup_logging(level: str = "info", stream: TextIO | None = None) -> None:
    """Send ``ichrt.serve`` events as JSON lines to ``stream`` (stderr); pynetdicom's own
    messages go there too, at warning and above (its debug output dumps whole datasets)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(_drop_uid_conformance)
    ours = logging.getLogger(LOGGER)
    ours.handlers[:] = [handler]
    ours.setLevel(level.upper())
    ours.propagate = False
    net = logging.getLogger("pynetdicom")
    net.handlers[:] = [handler]
    net.setLevel(logging.WARNING)
    net.propagate = False


def _drop_uid_conformance(record: logging.LogRecord) -> bool:
    """pynetdicom warns twice per instance about non-conformant UIDs (RSNA-style ``ID_...``
    UIDs are common in research data); ingest accepts them, so the warning is only noise."""
    return not str(record.msg).startswith("Non-conformant")


log = EventLog()
