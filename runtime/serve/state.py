"""The service's state in SQLite (WAL): studies, instances, results and the outbox.

Study status::

    receiving --(quiet period)--> complete --(worker)--> scored --(sender)--> sent
        ^                                                   |                  |
        +------------- a new instance arrives (version + 1) +------------------+
    complete: scoring failed -> failed;  scored: a send gave up -> failed

* A study's ``version`` grows by one whenever a new instance arrives after it left
  ``receiving``; a result belongs to one (study, version, model SHA-256), stored at most once
  (UNIQUE), so a complete study is scored exactly once per version, also across crashes.
* Recording a result, its outbox rows and the study's new status is one transaction.  A result
  of a version that newer instances already superseded is kept but marked ``superseded`` and
  never sent; recording a newer result supersedes the older ones' unsent outbox rows.
* The outbox has one row per (destination, SOP Instance UID): a row is ``sent`` only after the
  peer acknowledged it; a crash in between sends it again with the same UID (idempotent at the
  receiver).

Every public method is one transaction under one lock; the connection is shared by the service's
threads (``ichrt status`` opens its own, read-only).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ichrt.runtime.serve.spool import uid_key

STATUSES = ("receiving", "complete", "scored", "sent", "failed")
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS studies (
    study_uid   TEXT PRIMARY KEY,
    study_key   TEXT NOT NULL,
    accession   TEXT NOT NULL DEFAULT '',
    status      TEXT NOT NULL,
    version     INTEGER NOT NULL DEFAULT 1,
    n_instances INTEGER NOT NULL DEFAULT 0,
    first_at    REAL NOT NULL,
    last_at     REAL NOT NULL,
    complete_at REAL,
    scored_at   REAL,
    sent_at     REAL,
    error       TEXT
);
CREATE INDEX IF NOT EXISTS studies_status ON studies (status, last_at);
CREATE TABLE IF NOT EXISTS instances (
    sop_uid     TEXT PRIMARY KEY,
    study_uid   TEXT NOT NULL REFERENCES studies (study_uid),
    series_uid  TEXT NOT NULL,
    sop_class   TEXT NOT NULL,
    path        TEXT NOT NULL,
    size        INTEGER NOT NULL,
    calling_aet TEXT NOT NULL DEFAULT '',
    received_at REAL NOT NULL,
    times       INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS instances_study ON instances (study_uid);
CREATE TABLE IF NOT EXISTS results (
    id           INTEGER PRIMARY KEY,
    study_uid    TEXT NOT NULL REFERENCES studies (study_uid),
    version      INTEGER NOT NULL,
    model_sha256 TEXT NOT NULL,
    model_name   TEXT NOT NULL,
    scored_at    REAL NOT NULL,
    seconds      REAL NOT NULL,
    p_any        REAL,
    flagged      INTEGER NOT NULL,
    superseded   INTEGER NOT NULL DEFAULT 0,
    document     TEXT NOT NULL,
    UNIQUE (study_uid, version, model_sha256)
);
CREATE TABLE IF NOT EXISTS outbox (
    id          INTEGER PRIMARY KEY,
    result_id   INTEGER NOT NULL REFERENCES results (id),
    study_uid   TEXT NOT NULL,
    destination TEXT NOT NULL,
    kind        TEXT NOT NULL,
    sop_uid     TEXT NOT NULL,
    path        TEXT NOT NULL DEFAULT '',
    payload     TEXT NOT NULL DEFAULT '',
    status      TEXT NOT NULL DEFAULT 'pending',
    attempts    INTEGER NOT NULL DEFAULT 0,
    next_at     REAL NOT NULL DEFAULT 0,
    last_error  TEXT,
    sent_at     REAL,
    UNIQUE (destination, sop_uid)
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (status, next_at);
"""


@dataclass(frozen=True)
class InstanceRecord:
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class: str
    path: str
    size: int
    calling_aet: str = ""
    accession: str = ""


@dataclass(frozen=True)
class Job:
    """A complete study version waiting to be scored."""

    study_uid: str
    version: int
    paths: tuple[str, ...]


@dataclass(frozen=True)
class OutboxItem:
    id: int
    result_id: int
    study_uid: str
    destination: str
    kind: str
    sop_uid: str
    path: str
    payload: str
    attempts: int


@dataclass(frozen=True)
class Outgoing:
    """What the worker hands over to be sent: one row of the outbox, before it exists."""

    destination: str
    kind: str
    sop_uid: str
    path: str = ""
    payload: str = ""


class State:
    """The SQLite state database of one spool."""

    def __init__(self, path: str | Path, readonly: bool = False) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        if readonly:
            uri = f"file:{self.path}?mode=ro"
            self._db = sqlite3.connect(uri, uri=True, check_same_thread=False, timeout=10)
        else:
            self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=30,
                                       isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL: in WAL mode a commit survives a crash of the process (kill -9) and only a
            # power loss can drop the last ones; acknowledged instances are safe even then,
            # because their files are fsync'd before the answer and start-up indexes any spool
            # file missing from the state (a lost "sent" mark only resends the same UIDs).
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(_SCHEMA)
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)",
                             (str(SCHEMA_VERSION),))
        self._db.row_factory = sqlite3.Row

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # -- intake ------------------------------------------------------------------------------

    def add_instance(self, rec: InstanceRecord, now: float | None = None) -> bool:
        """Record a stored instance; True when its SOP Instance UID is new.

        A new instance of a study that already left ``receiving`` starts its next version.
        """
        now = time.time() if now is None else now
        with self._tx() as db:
            old = db.execute("SELECT study_uid FROM instances WHERE sop_uid = ?",
                             (rec.sop_uid,)).fetchone()
            if old is not None:
                db.execute("UPDATE instances SET times = times + 1, received_at = ?, path = ?,"
                           " size = ? WHERE sop_uid = ?", (now, rec.path, rec.size, rec.sop_uid))
                db.execute("UPDATE studies SET last_at = ? WHERE study_uid = ? "
                           "AND status = 'receiving'", (now, old[0]))
                return False
            study = db.execute("SELECT status FROM studies WHERE study_uid = ?",
                               (rec.study_uid,)).fetchone()
            if study is None:
                db.execute(
                    "INSERT INTO studies (study_uid, study_key, accession, status, version,"
                    " n_instances, first_at, last_at) VALUES (?, ?, ?, 'receiving', 1, 0, ?, ?)",
                    (rec.study_uid, uid_key(rec.study_uid), rec.accession, now, now))
            elif study[0] == "receiving":
                db.execute("UPDATE studies SET last_at = ? WHERE study_uid = ?",
                           (now, rec.study_uid))
            else:
                db.execute(
                    "UPDATE studies SET status = 'receiving', version = version + 1,"
                    " last_at = ?, error = NULL WHERE study_uid = ?", (now, rec.study_uid))
            db.execute(
                "INSERT INTO instances (sop_uid, study_uid, series_uid, sop_class, path, size,"
                " calling_aet, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (rec.sop_uid, rec.study_uid, rec.series_uid, rec.sop_class, rec.path, rec.size,
                 rec.calling_aet, now))
            db.execute("UPDATE studies SET n_instances = n_instances + 1 WHERE study_uid = ?",
                       (rec.study_uid,))
            return True

    def known_paths(self) -> set[str]:
        with self._lock:
            return {r[0] for r in self._db.execute("SELECT path FROM instances")}

    # -- completion and scoring --------------------------------------------------------------

    def complete_quiet(self, quiet_s: float, now: float | None = None) -> list[str]:
        """Mark ``receiving`` studies with nothing new for ``quiet_s`` as complete."""
        now = time.time() if now is None else now
        with self._tx() as db:
            rows = db.execute("SELECT study_uid FROM studies WHERE status = 'receiving' "
                              "AND last_at <= ?", (now - quiet_s,)).fetchall()
            db.executemany("UPDATE studies SET status = 'complete', complete_at = ? "
                           "WHERE study_uid = ?", [(now, r[0]) for r in rows])
        return [r[0] for r in rows]

    def next_job(self) -> Job | None:
        """The complete study that waited longest, with its instance files."""
        with self._lock:
            row = self._db.execute("SELECT study_uid, version FROM studies WHERE status = "
                                   "'complete' ORDER BY complete_at, study_uid LIMIT 1").fetchone()
            if row is None:
                return None
            paths = tuple(r[0] for r in self._db.execute(
                "SELECT path FROM instances WHERE study_uid = ? ORDER BY received_at, sop_uid",
                (row[0],)))
            return Job(row[0], row[1], paths)

    def has_result(self, study_uid: str, version: int, model_sha256: str) -> bool:
        with self._lock:
            return self._db.execute(
                "SELECT 1 FROM results WHERE study_uid = ? AND version = ? AND model_sha256 = ?",
                (study_uid, version, model_sha256)).fetchone() is not None

    def record_result(
        self,
        job: Job,
        model_sha256: str,
        model_name: str,
        document: dict[str, Any],
        outgoing: Sequence[Outgoing],
        seconds: float,
        now: float | None = None,
    ) -> tuple[int, bool]:
        """Store a result and its outbox rows; returns (result id, current).

        ``current`` is False when newer instances arrived meanwhile: the result is then kept
        as superseded and nothing is queued for sending.
        """
        now = time.time() if now is None else now
        with self._tx() as db:
            study = db.execute("SELECT status, version FROM studies WHERE study_uid = ?",
                               (job.study_uid,)).fetchone()
            current = study is not None and study[1] == job.version and study[0] == "complete"
            cur = db.execute(
                "INSERT OR IGNORE INTO results (study_uid, version, model_sha256, model_name,"
                " scored_at, seconds, p_any, flagged, superseded, document)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (job.study_uid, job.version, model_sha256, model_name, now, seconds,
                 document.get("p_any"), int(bool(document.get("flagged"))), int(not current),
                 json.dumps(document, sort_keys=True)))
            if cur.rowcount == 0:  # this version was scored already (cannot happen twice)
                rid = db.execute("SELECT id FROM results WHERE study_uid = ? AND version = ? "
                                 "AND model_sha256 = ?",
                                 (job.study_uid, job.version, model_sha256)).fetchone()[0]
                return rid, False
            rid = cur.lastrowid
            if not current:
                return rid, False
            db.execute("UPDATE results SET superseded = 1 WHERE study_uid = ? AND id != ?",
                       (job.study_uid, rid))
            db.execute("UPDATE outbox SET status = 'superseded' WHERE study_uid = ? "
                       "AND status IN ('pending', 'failed') AND result_id != ?",
                       (job.study_uid, rid))
            db.executemany(
                "INSERT OR IGNORE INTO outbox (result_id, study_uid, destination, kind, sop_uid,"
                " path, payload, next_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(rid, job.study_uid, o.destination, o.kind, o.sop_uid, o.path, o.payload, now)
                 for o in outgoing])
            db.execute("UPDATE studies SET status = 'scored', scored_at = ?, sent_at = NULL, "
                       "error = NULL WHERE study_uid = ?", (now, job.study_uid))
            return rid, True

    def fail_study(self, job: Job, error: str) -> None:
        """Scoring failed for good: the study is ``failed`` with the reason (until new data)."""
        with self._tx() as db:
            db.execute("UPDATE studies SET status = 'failed', error = ? WHERE study_uid = ? "
                       "AND version = ? AND status = 'complete'",
                       (error[:2000], job.study_uid, job.version))

    # -- sending -----------------------------------------------------------------------------

    def due(self, now: float | None = None, limit: int = 64) -> list[OutboxItem]:
        now = time.time() if now is None else now
        with self._lock:
            rows = self._db.execute(
                "SELECT id, result_id, study_uid, destination, kind, sop_uid, path, payload,"
                " attempts FROM outbox WHERE status = 'pending' AND next_at <= ?"
                " ORDER BY destination, result_id, id LIMIT ?", (now, limit)).fetchall()
        return [OutboxItem(*r) for r in rows]

    def next_due_at(self) -> float | None:
        with self._lock:
            row = self._db.execute("SELECT MIN(next_at) FROM outbox WHERE status = 'pending'"
                                   ).fetchone()
        return row[0] if row else None

    def mark_sent(self, item: OutboxItem, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self._tx() as db:
            db.execute("UPDATE outbox SET status = 'sent', sent_at = ?, attempts = attempts + 1,"
                       " last_error = NULL WHERE id = ? AND status = 'pending'", (now, item.id))
            self._settle(db, item.result_id, now)

    def mark_failed(self, item: OutboxItem, error: str, retry_at: float | None,
                    now: float | None = None) -> None:
        """A failed try: pending again at ``retry_at``, or ``failed`` for good when None."""
        now = time.time() if now is None else now
        with self._tx() as db:
            if retry_at is None:
                db.execute("UPDATE outbox SET status = 'failed', attempts = attempts + 1,"
                           " last_error = ? WHERE id = ? AND status = 'pending'",
                           (error[:2000], item.id))
            else:
                db.execute("UPDATE outbox SET attempts = attempts + 1, next_at = ?,"
                           " last_error = ? WHERE id = ? AND status = 'pending'",
                           (retry_at, error[:2000], item.id))
            self._settle(db, item.result_id, now)

    def _settle(self, db: sqlite3.Connection, result_id: int, now: float) -> None:
        """Move a scored study to ``sent`` (all rows sent) or ``failed`` (a row gave up)."""
        res = db.execute("SELECT study_uid, version, superseded FROM results WHERE id = ?",
                         (result_id,)).fetchone()
        if res is None or res[2]:
            return
        counts = dict(db.execute("SELECT status, COUNT(*) FROM outbox WHERE result_id = ? "
                                 "GROUP BY status", (result_id,)).fetchall())
        if counts.get("pending"):
            return
        if counts.get("failed"):
            errors = [r[0] for r in db.execute(
                "SELECT destination || ': ' || COALESCE(last_error, '') FROM outbox WHERE "
                "result_id = ? AND status = 'failed'", (result_id,))]
            db.execute("UPDATE studies SET status = 'failed', error = ? WHERE study_uid = ? AND "
                       "version = ? AND status = 'scored'",
                       ("sending failed: " + "; ".join(errors)[:1900], res[0], res[1]))
        else:
            db.execute("UPDATE studies SET status = 'sent', sent_at = ? WHERE study_uid = ? AND"
                       " version = ? AND status = 'scored'", (now, res[0], res[1]))

    def retry_failed(self, now: float | None = None) -> int:
        """Queue again every outbox row that gave up and every study whose scoring failed
        (``ichrt status --retry-failed``); returns how many of both."""
        now = time.time() if now is None else now
        with self._tx() as db:
            n = db.execute("UPDATE outbox SET status = 'pending', attempts = 0, next_at = 0 "
                           "WHERE status = 'failed'").rowcount
            db.execute("UPDATE studies SET status = 'scored', error = NULL WHERE status = "
                       "'failed' AND error LIKE 'sending failed:%'")
            n += db.execute("UPDATE studies SET status = 'complete', complete_at = ?, "
                            "error = NULL WHERE status = 'failed'", (now,)).rowcount
        return n

    # -- reading -----------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """Counts by status, the outbox, and the latest errors (no patient data)."""
        with self._lock:
            db = self._db
            studies = dict(db.execute("SELECT status, COUNT(*) FROM studies GROUP BY status"))
            outbox = dict(db.execute("SELECT status, COUNT(*) FROM outbox GROUP BY status"))
            n_inst = db.execute("SELECT COUNT(*), COALESCE(SUM(times), 0) FROM instances"
                                ).fetchone()
            n_res = db.execute("SELECT COUNT(*), COALESCE(SUM(flagged), 0) FROM results WHERE "
                               "superseded = 0").fetchone()
            errors = [dict(r) for r in db.execute(
                "SELECT destination, kind, attempts, status, last_error FROM outbox WHERE "
                "last_error IS NOT NULL ORDER BY id DESC LIMIT 5")]
            failed = [dict(r) for r in db.execute(
                "SELECT study_key, version, error FROM studies WHERE status = 'failed' "
                "ORDER BY last_at DESC LIMIT 5")]
            last = db.execute("SELECT MAX(received_at) FROM instances").fetchone()[0]
        return {
            "studies": {s: studies.get(s, 0) for s in STATUSES},
            "instances": n_inst[0],
            "instances_received": n_inst[1],
            "results": n_res[0],
            "flagged": n_res[1],
            "outbox": {s: outbox.get(s, 0) for s in ("pending", "sent", "failed", "superseded")},
            "last_instance_at": last,
            "recent_send_errors": errors,
            "failed_studies": failed,
        }

    def studies(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Studies, oldest first (``limit``: the most recent ones only, still oldest first)."""
        with self._lock:
            if limit is None:
                rows = self._db.execute("SELECT * FROM studies ORDER BY first_at")
                return [dict(r) for r in rows]
            rows = self._db.execute("SELECT * FROM studies ORDER BY last_at DESC LIMIT ?",
                                    (limit,))
            return [dict(r) for r in rows][::-1]

    def results(self, study_uid: str | None = None) -> list[dict[str, Any]]:
        return self._rows("results", study_uid)

    def outbox(self, study_uid: str | None = None) -> list[dict[str, Any]]:
        return self._rows("outbox", study_uid)

    def _rows(self, table: str, study_uid: str | None) -> list[dict[str, Any]]:
        """Rows of ``table`` ("results" or "outbox"), of one study when given, oldest first."""
        with self._lock:
            sql, args = f"SELECT * FROM {table}", ()  # table: one of two fixed names
            if study_uid is not None:
                sql, args = sql + " WHERE study_uid = ?", (study_uid,)
            return [dict(r) for r in self._db.execute(sql + " ORDER BY id", args)]

    def count_instances(self, study_uid: str | None = None) -> int:
        with self._lock:
            if study_uid is None:
                return self._db.execute("SELECT COUNT(*) FROM instances").fetchone()[0]
            return self._db.execute("SELECT COUNT(*) FROM instances WHERE study_uid = ?",
                                    (study_uid,)).fetchone()[0]

