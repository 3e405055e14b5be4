"""Where the worklist page reads from: one interface, two sources.

* :class:`ResultsSource` - the output folder of ``ichrt score`` (``worklist.json``,
  ``slices.csv``, ``rejected.csv``, ``explanations/``, ``run.json``).  Each run replaces the folder
  at once, so the folder's identity and ``run.json`` tell when to read it again.
* :class:`ServeStateSource` - the SQLite state of ``ichrt serve`` (read-only; schema version 1
  of :mod:`ichrt.runtime.serve.state`): live statuses, turnaround, results' documents.

Everything read from files is untrusted: UIDs and paths are never put in URLs (studies are named
by an opaque key, a keyed hash of the UID made with a per-process secret; slices by their index),
and a DICOM file is read only when its real path lies inside a folder the user gave
(:class:`Confiner`).  Patient names are never read; PatientID only with ``show_patient_id``.
Pure standard library and NumPy: importable on a lean install.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import json
import math
import os
import secrets
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import numpy as np

#: Labels every ichrt model has; subtypes are the others.
ANY = "any"


@dataclass(frozen=True)
class StudyRow:
    """One worklist row: what the page shows of a study (no patient name, ever)."""

    key: str
    study_uid: str
    accession: str
    status: str
    arrival: str
    p_any: float | None
    probs: dict[str, float | None]
    flagged: bool
    n_slices: int
    n_rejected: int
    volume_ml: float | None = None
    key_sop_uid: str | None = None
    key_instance: int | None = None
    turnaround_s: float | None = None
    patient_id: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class SliceRow:
    """One slice of a study in scan order; ``path`` and UIDs are untrusted text."""

    sop_uid: str
    instance_number: int | None
    path: str
    p_any: float | None
    above: bool
    heat_map: Path | None = None


@dataclass
class Snapshot:
    """Everything the worklist and status pages show, read at one version of the source."""

    version: str
    kind: str
    model: dict[str, Any] = field(default_factory=dict)
    labels: list[str] = field(default_factory=lambda: [ANY])
    threshold: float | None = None
    studies: list[StudyRow] = field(default_factory=list)
    counts: dict[str, Any] = field(default_factory=dict)
    finished: str | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    problem: str | None = None

    @property
    def has_turnaround(self) -> bool:
        return any(s.turnaround_s is not None for s in self.studies)

    @property
    def has_volume(self) -> bool:
        return any(s.volume_ml is not None for s in self.studies)

    @property
    def subtypes(self) -> list[str]:
        return [label for label in self.labels if label != ANY]

    def study(self, key: str) -> StudyRow | None:
        for row in self.studies:
            if row.key == key:
                return row
        return None


class Source(Protocol):
    """What the pages need from a source of results."""

    kind: str

    def version(self) -> str:
        """A cheap token that changes whenever the data change (polled for live updates)."""

    def snapshot(self) -> Snapshot:
        """The current worklist, model and counts (cached per :meth:`version`)."""

    def slices(self, study: StudyRow) -> list[SliceRow]:
        """The study's slices in scan order."""

    def read_hu(self, item: SliceRow) -> np.ndarray:
        """The slice in HU, read from a file inside the allowed folders (else PermissionError)."""

    def heat_map(self, item: SliceRow) -> np.ndarray | None:
        """The slice's heat map / lesion map in [0, 1], or None."""

    def disks(self) -> list[dict[str, Any]]:
        """Free and total bytes of the folders the source uses."""


# ----------------------------------------------------------------------------- helpers


class OpaqueKeys:
    """Short keyed hashes of UIDs for URLs: stable within a process, meaningless outside it."""

    def __init__(self, secret: bytes | None = None) -> None:
        self._secret = secret or secrets.token_bytes(32)

    def __call__(self, uid: str) -> str:
        data = uid.encode("utf-8", "surrogatepass")
        return hmac.new(self._secret, data, hashlib.sha256).hexdigest()[:16]


class Confiner:
    """Resolves untrusted paths to files inside the given folders, or refuses them."""

    def __init__(self, roots: Iterable[str | os.PathLike], bases: Iterable[str | os.PathLike] = ()):
        self.roots = [Path(os.path.realpath(r)) for r in roots]
        self.bases = [Path(os.path.abspath(b)) for b in bases] or list(self.roots)

    def resolve(self, text: str) -> Path:
        """The real path of ``text`` (relative: against each base) if it is a regular file
        inside a root; PermissionError otherwise (the message names no path)."""
        if not text or "\x00" in text:
            raise PermissionError("no usable file path")
        given = Path(text)
        candidates = [given] if given.is_absolute() else [b / given for b in self.bases]
        for candidate in candidates:
            real = Path(os.path.realpath(candidate))
            if any(real.is_relative_to(root) for root in self.roots) and real.is_file():
                return real
        raise PermissionError("the file is not inside the folders this page may read")


def _disk(label: str, path: Path) -> dict[str, Any]:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        usage = shutil.disk_usage(probe)
    except OSError:
        return {"label": label, "free": None, "total": None}
    return {"label": label, "free": usage.free, "total": usage.total}


def _float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _text(value: Any) -> str:
    return value if isinstance(value, str) else "" if value is None else str(value)


def _stat_token(*paths: Path) -> str:
    parts = []
    for path in paths:
        try:
            st = os.stat(path)
            parts.append(f"{st.st_dev}:{st.st_ino}:{st.st_mtime_ns}:{st.st_size}")
        except OSError:
            parts.append("-")
    return "|".join(parts)


def _scrub(reason: str, path: str) -> str:
    """A reason without the file's path or name (folder names can carry patient names)."""
    text = _text(reason)
    for part in sorted({path, os.path.basename(path), os.path.dirname(path)}, key=len,
                       reverse=True):
        if part and len(part) > 2:
            text = text.replace(part, "<file>")
    return text[:300]


def prioritized(rows: Sequence[StudyRow]) -> list[StudyRow]:
    """Flagged first by p(any), highest first; the others in arrival order (stable)."""
    by_arrival = sorted(rows, key=lambda r: (r.arrival == "", r.arrival))
    flagged = sorted((r for r in by_arrival if r.flagged), key=lambda r: -(r.p_any or 0.0))
    return flagged + [r for r in by_arrival if not r.flagged]


class _Cached:
    """Caches :meth:`snapshot` and per-version data by :meth:`version`."""

    kind = "?"

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._version: str | None = None
        self._snapshot: Snapshot | None = None
        self._per_version: dict[str, Any] = {}

    def version(self) -> str:  # pragma: no cover - overridden
        raise NotImplementedError

    def _load(self, version: str) -> Snapshot:  # pragma: no cover - overridden
        raise NotImplementedError

    def snapshot(self) -> Snapshot:
        version = self.version()
        with self._lock:
            if self._snapshot is None or version != self._version:
                self._per_version = {}
                self._snapshot = self._load(version)
                self._version = version
            return self._snapshot

    def _memo(self, name: str, make: Any) -> Any:
        self.snapshot()
        with self._lock:
            if name not in self._per_version:
                self._per_version[name] = make()
            return self._per_version[name]


# ----------------------------------------------------------------------------- ichrt score


class ResultsSource(_Cached):
    """The output folder of ``ichrt score`` (read-only).

    Args:
        results: the ``--out`` folder of ``ichrt score``.
        inputs: folders the DICOM files may be read from (default: the current folder);
            relative paths in ``slices.csv`` are resolved against each of them.
        show_patient_id: show PatientID where the run wrote it (``--show-phi``).
    """

    kind = "ichrt score results"

    def __init__(self, results: str | os.PathLike, inputs: Sequence[str | os.PathLike] = (),
                 show_patient_id: bool = False, keys: OpaqueKeys | None = None) -> None:
        super().__init__()
        self.results = Path(os.path.abspath(results))
        roots = list(inputs) or [Path.cwd()]
        self.confiner = Confiner(roots, [Path.cwd(), *roots])
        self.show_patient_id = show_patient_id
        self.keys = keys or OpaqueKeys()

    def version(self) -> str:
        return _stat_token(self.results, self.results / "run.json")

    def _read_json(self, name: str) -> Any:
        with open(self.results / name, encoding="utf-8") as fh:
            return json.load(fh)

    def _load(self, version: str) -> Snapshot:
        snap = Snapshot(version=version, kind=self.kind)
        try:
            doc = self._read_json("worklist.json")
        except FileNotFoundError:
            snap.problem = "no results yet: worklist.json is missing"
            return snap
        except (OSError, ValueError) as exc:
            snap.problem = f"worklist.json cannot be read ({type(exc).__name__})"
            return snap
        try:
            run = self._read_json("run.json")
        except (OSError, ValueError):
            run = {}
        labels = [label for label in doc.get("labels") or [ANY] if isinstance(label, str)]
        snap.labels = labels
        snap.model = dict(doc.get("model") or {})
        snap.threshold = _float(doc.get("threshold"))
        snap.counts = dict(doc.get("counts") or {})
        snap.finished = run.get("finished") if isinstance(run, dict) else None
        rows = []
        for record in doc.get("studies") or []:
            if isinstance(record, dict):
                rows.append(self._row(record, labels))
        rows.sort(key=lambda r: r[0])
        snap.studies = [row for _, row in rows]
        snap.errors = _grouped(doc.get("rejected") or [])
        return snap

    def _row(self, record: dict[str, Any], labels: list[str]) -> tuple[int, StudyRow]:
        uid = _text(record.get("study_instance_uid"))
        scored = bool(record.get("scored", True))
        row = StudyRow(
            key=self.keys(uid), study_uid=uid,
            accession=_text(record.get("accession_number")),
            status="scored" if scored else "not scored",
            arrival=_text(record.get("arrival")),
            p_any=_float(record.get("p_any")),
            probs={label: _float(record.get(f"p_{label}")) for label in labels if label != ANY},
            flagged=bool(record.get("flagged")),
            n_slices=_int(record.get("n_slices")) or 0,
            n_rejected=_int(record.get("n_rejected")) or 0,
            volume_ml=_float(record.get("volume_ml")),
            key_sop_uid=record.get("key_slice_sop_instance_uid") or None,
            key_instance=_int(record.get("key_slice_instance_number")),
            patient_id=_text(record.get("patient_id")) or None if self.show_patient_id else None,
        )
        return _int(record.get("rank")) or 10**9, row

    # -- slices ---------------------------------------------------------------------------

    def slices(self, study: StudyRow) -> list[SliceRow]:
        return self._memo("slices", self._read_slices).get(study.study_uid, [])

    def _read_slices(self) -> dict[str, list[SliceRow]]:
        try:
            with open(self.results / "slices.csv", newline="", encoding="utf-8") as fh:
                return self._parse_slices(csv.DictReader(fh))
        except (OSError, csv.Error, UnicodeDecodeError):
            return {}

    def _parse_slices(self, records: Iterable[dict[str, Any]]) -> dict[str, list[SliceRow]]:
        maps = self._memo("maps", self._heat_maps)
        found: dict[str, list[tuple[tuple, SliceRow]]] = {}
        series_order: dict[str, int] = {}
        for i, rec in enumerate(records):
            study, sop = _csv_text(rec.get("study_instance_uid")), _csv_text(
                rec.get("sop_instance_uid"))
            series = series_order.setdefault(_csv_text(rec.get("series_instance_uid")),
                                             len(series_order))
            number = _int(rec.get("instance_number"))
            item = SliceRow(sop_uid=sop, instance_number=number, path=_csv_text(rec.get("path")),
                            p_any=_float(rec.get("p_any")),
                            above=rec.get("above_threshold") == "True",
                            heat_map=maps.get((study, sop)))
            order = (series, number if number is not None else 10**9, i)
            found.setdefault(study, []).append((order, item))
        return {uid: [item for _, item in sorted(items, key=lambda t: t[0])]
                for uid, items in found.items()}

    def _heat_maps(self) -> dict[tuple[str, str], Path]:
        """(study UID, SOP UID) -> the .npy heat map inside ``explanations/``."""
        try:
            entries = self._read_json("worklist.json").get("explanations") or []
        except (OSError, ValueError, AttributeError):
            return {}
        base = self.results / "explanations"
        maps = {}
        for entry in entries:
            if not isinstance(entry, dict) or not isinstance(entry.get("files"), dict):
                continue
            folder = Path(_text(entry.get("folder"))).name
            name = _text(entry["files"].get("npy"))
            if not _plain_name(folder) or not _plain_name(name):
                continue
            maps[(_text(entry.get("study_instance_uid")),
                  _text(entry.get("sop_instance_uid")))] = base / folder / name
        return maps

    def read_hu(self, item: SliceRow) -> np.ndarray:
        from ichrt.runtime.dicom import read_slice

        return read_slice(self.confiner.resolve(item.path)).hu

    def heat_map(self, item: SliceRow) -> np.ndarray | None:
        if item.heat_map is None:
            return None
        real = Path(os.path.realpath(item.heat_map))
        if not real.is_relative_to(Path(os.path.realpath(self.results / "explanations"))):
            return None
        try:
            heat = np.load(real, allow_pickle=False)
        except (OSError, ValueError):
            return None
        if heat.ndim != 2 or not np.issubdtype(heat.dtype, np.floating):
            return None
        return np.clip(np.nan_to_num(heat.astype(np.float32)), 0.0, 1.0)

    def disks(self) -> list[dict[str, Any]]:
        return [_disk("results folder", self.results),
                *(_disk("input folder", root) for root in self.confiner.roots)]


def _plain_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and Path(name).name == name and "\\" not in name


def _csv_text(value: Any) -> str:
    """A CSV cell as written by ichrt (a leading ``'`` guards formula-like cells)."""
    text = _text(value)
    if text[:2] in ("'=", "'+", "'-", "'@", "'\t", "'\r"):
        text = text[1:]
    return text.replace("\\x00", "\x00")


def _grouped(rejected: Iterable[Any]) -> list[dict[str, Any]]:
    """Rejected files grouped by reason (paths removed), most frequent first."""
    counts: dict[str, int] = {}
    for rec in rejected:
        if isinstance(rec, dict):
            reason = _scrub(_text(rec.get("reason")), _text(rec.get("path")))
            counts[reason] = counts.get(reason, 0) + 1
    return [{"what": "rejected file", "reason": r, "count": n}
            for r, n in sorted(counts.items(), key=lambda t: -t[1])[:20]]


# ----------------------------------------------------------------------------- ichrt serve

#: The state schema this source reads (``meta.schema`` of :mod:`ichrt.runtime.serve.state`).
SERVE_SCHEMA = "1"
#: Study status in the state -> what the page shows.
#: Seconds over which intake and scoring rates are counted.
RATE_WINDOW_S = 300.0
SERVE_STATUS = {"receiving": "receiving", "complete": "scoring", "scored": "scored",
                "sent": "sent", "failed": "failed"}


class ServeStateSource(_Cached):
    """The SQLite state of ``ichrt serve`` (``<spool>/state.sqlite``), opened read-only.

    Per-slice probabilities and heat maps are not kept in the state: the study view then shows
    the slices (files inside the spool) without the strip and without an overlay.
    """

    kind = "ichrt serve state"

    def __init__(self, db_path: str | os.PathLike, spool: str | os.PathLike | None = None,
                 show_patient_id: bool = False, keys: OpaqueKeys | None = None,
                 model: dict[str, Any] | None = None, health: Any = None) -> None:
        super().__init__()
        self.db_path = Path(os.path.abspath(db_path))
        self.spool = Path(os.path.abspath(spool)) if spool else self.db_path.parent
        self.confiner = Confiner([self.spool])
        self.show_patient_id = show_patient_id  # PatientID is not in the state; kept for symmetry
        self.keys = keys or OpaqueKeys()
        self.model = dict(model or {})
        self.health = health
        self._db: sqlite3.Connection | None = None
        self._db_lock = threading.Lock()

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._db_lock:
            if self._db is None:
                self._db = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True,
                                           check_same_thread=False, timeout=10)
                self._db.row_factory = sqlite3.Row
            return self._db.execute(sql, args).fetchall()

    def version(self) -> str:
        wal = self.db_path.with_name(self.db_path.name + "-wal")
        return _stat_token(self.db_path, wal)

    def _load(self, version: str) -> Snapshot:
        snap = Snapshot(version=version, kind=self.kind, model=dict(self.model))
        if not self.db_path.is_file():
            snap.problem = "the service has not created its state yet"
            return snap
        try:
            schema = self._query("SELECT value FROM meta WHERE key = 'schema'")
            if not schema or schema[0][0] != SERVE_SCHEMA:
                snap.problem = "the state's schema is not one this page knows"
                return snap
            studies = self._query("SELECT * FROM studies")
            results = self._query("SELECT study_uid, version, model_name, model_sha256, "
                                  "scored_at, seconds, document FROM results WHERE superseded = 0"
                                  " ORDER BY id")
            counts = self._query("SELECT status, COUNT(*) FROM studies GROUP BY status")
            outbox = self._query("SELECT status, COUNT(*) FROM outbox GROUP BY status")
            failed = self._query("SELECT study_key, version, error FROM studies WHERE status ="
                                 " 'failed' ORDER BY last_at DESC LIMIT 5")
            sends = self._query("SELECT destination, kind, attempts, status, last_error FROM "
                                "outbox WHERE last_error IS NOT NULL ORDER BY id DESC LIMIT 5")
            since = time.time() - RATE_WINDOW_S
            rates = self._query("SELECT (SELECT COUNT(*) FROM instances WHERE received_at >= ?),"
                                " (SELECT COUNT(*) FROM results WHERE scored_at >= ?)",
                                (since, since))[0]
        except sqlite3.Error as exc:
            snap.problem = f"the state cannot be read ({type(exc).__name__})"
            return snap
        latest: dict[str, sqlite3.Row] = {r["study_uid"]: r for r in results}
        labels = [ANY]
        rows = []
        for study in studies:
            res = latest.get(study["study_uid"])
            doc = _document(res)
            probs = doc.get("probs") if isinstance(doc.get("probs"), dict) else {}
            if probs and len(labels) == 1:
                labels = [ANY, *[k for k in probs if k != ANY]]
            if res is not None and not snap.model:
                snap.model = {"name": res["model_name"], "sha256": res["model_sha256"]}
            if res is not None and snap.threshold is None:
                snap.threshold = _float(doc.get("threshold"))
            rows.append(self._row(study, res, doc, probs))
        for row in rows:
            for label in labels[1:]:
                row.probs.setdefault(label, None)
        snap.labels = labels
        snap.studies = prioritized(rows)
        snap.counts = {"studies": len(rows), **{f"studies {k}": v for k, v in counts},
                       **{f"outbox {k}": v for k, v in outbox},
                       "flagged": sum(r.flagged for r in rows),
                       "instances received per minute (last 5 min)": round(
                           rates[0] * 60 / RATE_WINDOW_S, 1),
                       "studies scored per minute (last 5 min)": round(
                           rates[1] * 60 / RATE_WINDOW_S, 1)}
        if self.health is not None:
            try:
                snap.counts.update({f"service {k}": v for k, v in dict(self.health()).items()
                                    if isinstance(v, (int, float, str, bool))})
            except Exception:  # noqa: BLE001 - the page must show even when health fails
                snap.counts["service health"] = "unavailable"
        snap.errors = ([{"what": "failed study", "reason": _text(r["error"])[:300], "count": 1}
                        for r in failed]
                       + [{"what": f"send to {r['destination']} ({r['kind']})",
                           "reason": _text(r["last_error"])[:300], "count": r["attempts"]}
                          for r in sends])
        return snap

    def _row(self, study: sqlite3.Row, res: sqlite3.Row | None, doc: dict[str, Any],
             probs: dict[str, Any]) -> StudyRow:
        scored = res is not None and res["version"] == study["version"]
        turnaround = (res["scored_at"] - study["last_at"]) if scored else None
        return StudyRow(
            key=self.keys(study["study_uid"]), study_uid=study["study_uid"],
            accession=_text(study["accession"] or doc.get("accession_number")),
            status=SERVE_STATUS.get(study["status"], _text(study["status"])),
            arrival=datetime.fromtimestamp(study["first_at"], timezone.utc)
            .isoformat(timespec="seconds"),
            p_any=_float(doc.get("p_any")),
            probs={k: _float(v) for k, v in probs.items() if k != ANY},
            flagged=bool(doc.get("flagged")),
            n_slices=_int(doc.get("n_slices")) or study["n_instances"],
            n_rejected=_int(doc.get("n_rejected")) or 0,
            volume_ml=_float(doc.get("volume_ml")),
            key_sop_uid=doc.get("key_slice_sop_instance_uid") or None,
            turnaround_s=turnaround if turnaround is None or turnaround >= 0 else None,
            error=_text(study["error"])[:300] or None,
        )

    def slices(self, study: StudyRow) -> list[SliceRow]:
        try:
            rows = self._query("SELECT sop_uid, path FROM instances WHERE study_uid = ? "
                               "ORDER BY received_at, sop_uid", (study.study_uid,))
        except sqlite3.Error:
            return []
        return [SliceRow(sop_uid=r["sop_uid"], instance_number=None, path=r["path"],
                         p_any=None, above=False) for r in rows]

    def read_hu(self, item: SliceRow) -> np.ndarray:
        from ichrt.runtime.dicom import read_slice

        return read_slice(self.confiner.resolve(item.path)).hu

    def heat_map(self, item: SliceRow) -> np.ndarray | None:
        return None

    def disks(self) -> list[dict[str, Any]]:
        return [_disk("spool", self.spool)]


def _document(res: sqlite3.Row | None) -> dict[str, Any]:
    if res is None:
        return {}
    try:
        doc = json.loads(res["document"])
    except (TypeError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


#: Contract fields shown on the status page (the others are large: CAM weights, metrics).
CONTRACT_FIELDS = ("name", "arch", "input_size", "windows", "framing", "mean", "std",
                   "thresholds", "temperatures", "lesion_stride", "version")


def model_contract(path: str | os.PathLike | None, sha256: str | None) -> dict[str, Any]:
    """The small fields of the contract of the model file at ``path``, when that file is still
    the one with ``sha256`` (the model of the results); {} otherwise."""
    from ichrt.runtime.session import load_model

    if not path or not sha256 or not Path(path).is_file():
        return {}
    model = load_model(path, provider="cpu", threads=1, require_sha256=sha256)
    return contract_summary(model.contract)


def contract_summary(contract: Any) -> dict[str, Any]:
    """The small fields of a :class:`~ichrt.runtime.contract.ModelContract`, for people."""
    data = contract.to_dict()
    return {k: _rounded(data[k]) for k in CONTRACT_FIELDS if data.get(k) not in (None, {}, [])}


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(v) for v in value]
    return value
