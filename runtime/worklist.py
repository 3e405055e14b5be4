"""The prioritized worklist: ordering (pure), records, file writers and the terminal table.

Order: flagged studies first, by ``any`` probability (highest first); the others keep arrival
order; ties keep arrival order too.  Nothing is ever dropped: the worklist is a permutation of
the studies.  PatientID appears only when the caller asks for it (``show_phi``); patient names
are never read, so they cannot leak.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ichrt.runtime.aggregate import SliceScore, StudyScore, arrival_key
from ichrt.runtime.slices import Rejected


def prioritize(studies: Sequence[StudyScore]) -> list[StudyScore]:
    """Flagged first by ``any`` probability (desc), then the rest in arrival order; stable."""
    by_arrival = sorted(studies, key=arrival_key)
    flagged = sorted((s for s in by_arrival if s.flagged), key=lambda s: -s.p_any)
    return flagged + [s for s in by_arrival if not s.flagged]


def study_record(study: StudyScore, rank: int, show_phi: bool = False) -> dict[str, Any]:
    """One worklist row (JSON-ready)."""
    record: dict[str, Any] = {
        "rank": rank,
        "study_instance_uid": study.study_uid,
        "accession_number": study.accession_number,
    }
    if show_phi:
        record["patient_id"] = study.patient_id
    record["n_slices"] = study.n_slices
    record.update({f"p_{label}": round(p, 6) for label, p in study.probs.items()})
    record.update(
        flagged=study.flagged,
        key_slice_sop_instance_uid=study.key_slice.sop_uid,
        key_slice_instance_number=study.key_slice.instance_number,
        arrival=study.arrival.isoformat(),
        arrival_source=study.arrival_source,
    )
    return record


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


def worklist_records(ranked: Sequence[StudyScore], show_phi: bool = False) -> list[dict[str, Any]]:
    """Rows of the worklist, rank 1 first."""
    return [study_record(s, rank, show_phi) for rank, s in enumerate(ranked, start=1)]


def write_csv(path: Path, rows: Iterable[dict[str, Any]], fieldnames: Sequence[str]) -> None:
    """Write dict rows with a header (always written, even with no rows)."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(fieldnames))
        writer.writeheader()
        writer.writerows(rows)


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


def worklist_fields(labels: Sequence[str], show_phi: bool = False) -> list[str]:
    """Column order of worklist.csv."""
    return [
        "rank", "study_instance_uid", "accession_number", *(["patient_id"] if show_phi else []),
        "n_slices", *(f"p_{label}" for label in labels), "flagged",
        "key_slice_sop_instance_uid", "key_slice_instance_number", "arrival", "arrival_source",
    ]


def slice_fields(labels: Sequence[str], show_phi: bool = False) -> list[str]:
    """Column order of slices.csv."""
    return [
        "study_instance_uid", "series_instance_uid", "sop_instance_uid", "instance_number",
        "path", *(["patient_id"] if show_phi else []), *(f"p_{label}" for label in labels),
        "above_threshold",
    ]


def rejected_records(rejected: Iterable[Rejected]) -> list[dict[str, str]]:
    return [{"path": r.path, "reason": r.reason} for r in rejected]


def summary_table(
    ranked: Sequence[StudyScore], threshold: float, show_phi: bool = False, limit: int = 50
) -> str:
    """A fixed-width table of the first ``limit`` worklist rows for the terminal."""
    header = ["#", "study", "accession", *(["patient_id"] if show_phi else []),
              "slices", "p(any)", "flag", "top subtype", "key slice"]
    rows = []
    for rank, s in enumerate(ranked[:limit], start=1):
        subtypes = {k: v for k, v in s.probs.items() if k != "any"}
        top = max(subtypes, key=subtypes.get) if subtypes else ""
        rows.append([
            str(rank), _short(s.study_uid, 28), _short(s.accession_number, 14),
            *([_short(s.patient_id, 16)] if show_phi else []),
            str(s.n_slices), f"{s.p_any:.3f}", "BLEED?" if s.flagged else "",
            f"{top} {subtypes[top]:.2f}" if top else "",
            _short(f"#{s.key_slice.instance_number}" if s.key_slice.instance_number is not None
                   else s.key_slice.sop_uid, 20),
        ])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    n_flagged = sum(s.flagged for s in ranked)
    lines.append(f"{len(ranked)} studies, {n_flagged} flagged at p(any) >= {threshold:.3f}"
                 + (f" (first {limit} shown)" if len(ranked) > limit else ""))
    return "\n".join(lines)


def _short(text: str, width: int) -> str:
    """Printable, at most ``width`` characters (keeps the distinctive end of long UIDs)."""
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= width else "..." + text[-(width - 3):]
