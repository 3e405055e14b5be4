"""The prioritized worklist: ordering (pure), records, file writers and the terminal table.

Order: flagged studies first, by ``any`` probability (highest first); the others keep arrival
order; ties keep arrival order too.  Nothing is ever dropped: the worklist is a permutation of
the studies, and a study none of whose files could be scored still gets a row (not scored, with
its count of rejected files).  PatientID appears only when the caller asks for it
(``show_phi``); patient names are never read, so they cannot leak.

CSV cells that a spreadsheet would run as a formula (starting with ``=``, ``+``, ``-``, ``@``,
tab or carriage return) get a leading ``'`` and NUL bytes are written as ``\\x00`` (OWASP CSV
injection); the JSON files keep every value exact.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from ichrt.runtime.aggregate import SliceScore, StudyScore, arrival_key, parse_dicom_datetime
from ichrt.runtime.slices import Rejected, SliceIdentity


def prioritize(studies: Sequence[StudyScore]) -> list[StudyScore]:
    """Flagged first by ``any`` probability (desc), then the rest in arrival order; stable."""
    by_arrival = sorted(studies, key=arrival_key)
    flagged = sorted((s for s in by_arrival if s.flagged), key=lambda s: -s.p_any)
    return flagged + [s for s in by_arrival if not s.flagged]


def study_record(
    study: StudyScore, rank: int, show_phi: bool = False, n_rejected: int = 0
) -> dict[str, Any]:
    """One worklist row (JSON-ready); a study with no scored slice has null probabilities."""
    scored = is_scored(study)
    record: dict[str, Any] = {
        "rank": rank,
        "study_instance_uid": study.study_uid,
        "accession_number": study.accession_number,
    }
    if show_phi:
        record["patient_id"] = study.patient_id
    record["n_slices"] = study.n_slices
    record["n_rejected"] = n_rejected
    record["scored"] = scored
    record.update({f"p_{label}": _probability(p) for label, p in study.probs.items()})
    record.update(
        flagged=study.flagged,
        volume_ml=None if study.volume_ml is None else round(study.volume_ml, 2),
        key_slice_sop_instance_uid=study.key_slice.sop_uid if scored else None,
        key_slice_instance_number=study.key_slice.instance_number if scored else None,
        arrival=study.arrival.isoformat(),
        arrival_source=study.arrival_source,
    )
    return record


def is_scored(study: StudyScore) -> bool:
    """False for a study whose every file was rejected (see :func:`unscored_studies`)."""
    return study.n_slices > 0


def _probability(p: float) -> float | None:
    return None if p is None or math.isnan(p) else round(p, 6)


def slice_record(
    item: SliceScore, labels: Sequence[str], threshold: float, show_phi: bool = False
) -> dict[str, Any]:
    """One slices.csv row: identity, probabilities, and whether the slice reached the threshold."""
    ident = item.identity
    record: dict[str, Any] = {
        "study_instance_uid": ident.study_uid,
        "series_instance_uid": ident.series_uid,
        "sop_instance_uid": ident.sop_uid,
        "instance_number": ident.instance_number,
        "path": ident.path,
    }
    if show_phi:
        record["patient_id"] = ident.patient_id
    record.update({f"p_{label}": round(float(p), 6) for label, p in zip(labels, item.probs)})
    record["above_threshold"] = bool(item.probs[list(labels).index("any")] >= threshold)
    return record


def worklist_records(
    ranked: Sequence[StudyScore],
    show_phi: bool = False,
    rejected_counts: Mapping[str, int] | None = None,
) -> list[dict[str, Any]]:
    """Rows of the worklist, rank 1 first; ``rejected_counts``: study UID -> rejected files."""
    counts = rejected_counts or {}
    return [study_record(s, rank, show_phi, counts.get(s.study_uid, 0))
            for rank, s in enumerate(ranked, start=1)]


def rejected_by_study(rejected: Iterable[Rejected]) -> Counter[str]:
    """Rejected files per StudyInstanceUID (files whose study could not be read are not counted)."""
    return Counter(r.study_uid for r in rejected if r.study_uid)


def unscored_studies(
    rejected: Sequence[Rejected], scored_uids: Iterable[str], labels: Sequence[str],
    first_order: int = 0,
) -> list[StudyScore]:
    """A not-scored study for each StudyInstanceUID that only rejected files carry.

    No study is ever dropped: a study whose every file was rejected (duplicates of another
    study's files, undecodable pixels, ...) still gets a worklist row, never flagged, with null
    probabilities; its arrival is its StudyDate/Time, else the earliest file time.
    """
    known = set(scored_uids)
    groups: dict[str, list[Rejected]] = {}
    for item in rejected:
        if item.study_uid and item.study_uid not in known:
            groups.setdefault(item.study_uid, []).append(item)
    return [_unscored(uid, members, labels, first_order + i)
            for i, (uid, members) in enumerate(groups.items())]


def _unscored(uid: str, members: list[Rejected], labels: Sequence[str], order: int) -> StudyScore:
    arrival = min((t for t in (parse_dicom_datetime(m.study_date, m.study_time) for m in members)
                   if t is not None), default=None)
    source = "study"
    if arrival is None:
        arrival, source = datetime.fromtimestamp(min(map(_mtime, members))), "file"
    first = members[0]
    return StudyScore(
        study_uid=uid,
        accession_number=next((m.accession_number for m in members if m.accession_number), ""),
        patient_id=next((m.patient_id for m in members if m.patient_id), ""),
        n_slices=0,
        probs={label: math.nan for label in labels},
        flagged=False,
        key_slice=SliceIdentity(path=first.path, study_uid=uid, series_uid="", sop_uid=""),
        arrival=arrival,
        arrival_source=source,
        order=order,
    )


def _mtime(item: Rejected) -> float:
    try:
        return os.stat(item.path).st_mtime
    except (OSError, ValueError):
        return 0.0


#: First characters that make a spreadsheet treat a cell as a formula (OWASP CSV injection).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(value: Any) -> Any:
    """A cell value that a spreadsheet shows as text: formulas get a leading ``'``, NUL -> ``\\x00``."""
    if not isinstance(value, str):
        return value
    value = value.replace("\x00", "\\x00")
    return "'" + value if value.startswith(_FORMULA_START) else value


def write_csv(path: Path, rows: Iterable[dict[str, Any]], fieldnames: Sequence[str]) -> None:
    """Write dict rows with a header (always written, even with no rows).

    Keys of the first row that ``fieldnames`` lacks are appended as columns, so a new field of a
    record reaches the file without a change here; every text cell goes through :func:`csv_safe`.
    """
    rows = iter(rows)
    first = next(rows, None)
    fields = list(fieldnames)
    if first is not None:
        fields += [key for key in first if key not in fields]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        if first is not None:
            writer.writerows({k: csv_safe(v) for k, v in row.items()}
                             for row in itertools.chain([first], rows))


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


def worklist_fields(labels: Sequence[str], show_phi: bool = False) -> list[str]:
    """Column order of worklist.csv."""
    return [
        "rank", "study_instance_uid", "accession_number", *(["patient_id"] if show_phi else []),
        "n_slices", "n_rejected", "scored", *(f"p_{label}" for label in labels), "flagged",
        "volume_ml", "key_slice_sop_instance_uid", "key_slice_instance_number", "arrival", "arrival_source",
    ]


def slice_fields(labels: Sequence[str], show_phi: bool = False) -> list[str]:
    """Column order of slices.csv."""
    return [
        "study_instance_uid", "series_instance_uid", "sop_instance_uid", "instance_number",
        "path", *(["patient_id"] if show_phi else []), *(f"p_{label}" for label in labels),
        "above_threshold",
    ]


def rejected_records(rejected: Iterable[Rejected]) -> list[dict[str, str]]:
    """rejected.csv rows: path, reason, and the file's StudyInstanceUID when it could be read."""
    return [{"path": r.path, "reason": r.reason, "study_instance_uid": r.study_uid}
            for r in rejected]


#: Column order of rejected.csv.
REJECTED_FIELDS = ("path", "reason", "study_instance_uid")


def summary_table(
    ranked: Sequence[StudyScore], threshold: float, show_phi: bool = False, limit: int = 50
) -> str:
    """A fixed-width table of the first ``limit`` worklist rows for the terminal."""
    header = ["#", "study", "accession", *(["patient_id"] if show_phi else []),
              "slices", "p(any)", "flag", "bleed mL", "top subtype", "key slice"]
    rows = []
    for rank, s in enumerate(ranked[:limit], start=1):
        if not is_scored(s):
            rows.append([str(rank), _short(s.study_uid, 28), _short(s.accession_number, 14),
                         *([_short(s.patient_id, 16)] if show_phi else []),
                         "0", "-", "NOT SCORED", "", "every file rejected", ""])
            continue
        subtypes = {k: v for k, v in s.probs.items() if k != "any"}
        top = max(subtypes, key=subtypes.get) if subtypes else ""
        rows.append([
            str(rank), _short(s.study_uid, 28), _short(s.accession_number, 14),
            *([_short(s.patient_id, 16)] if show_phi else []),
            str(s.n_slices), f"{s.p_any:.3f}", "BLEED?" if s.flagged else "",
            f"{s.volume_ml:.1f}" if s.flagged and s.volume_ml is not None else "",
            f"{top} {subtypes[top]:.2f}" if top else "",
            _short(f"#{s.key_slice.instance_number}" if s.key_slice.instance_number is not None
                   else s.key_slice.sop_uid, 20),
        ])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    n_flagged = sum(s.flagged for s in ranked)
    n_unscored = sum(not is_scored(s) for s in ranked)
    lines.append(f"{len(ranked)} studies, {n_flagged} flagged at p(any) >= {threshold:.3f}"
                 + (f", {n_unscored} not scored" if n_unscored else "")
                 + (f" (first {limit} shown)" if len(ranked) > limit else ""))
    return "\n".join(lines)


def _short(text: str, width: int) -> str:
    """Printable, at most ``width`` characters (keeps the distinctive end of long UIDs)."""
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= width else "..." + text[-(width - 3):]
