"""From per-slice model outputs to per-study scores (pure functions, no I/O).

* Slice probabilities are ``sigmoid(logits / T)`` with the per-label temperature ``T`` of the
  model's contract (1.0 when uncalibrated), so calibration fitted after export applies here.
* A study's ``any`` probability comes from the contract's study model
  (:mod:`ichrt.runtime.studymodel`: each slice blended with its neighbours along the scan axis,
  then the largest), or, without one, the **maximum over its slices**: a bleed visible on a
  single slice makes the whole study positive, and averaging would dilute a small bleed among
  dozens of normal slices (the RSNA 2019 study labels: a study is positive when any of its slices
  is). Subtypes: the maximum. All series of a study count together.
* A study is flagged when its ``any`` probability reaches the threshold (the contract's calibrated
  ``any`` threshold unless the user overrides it); the key slice is the one where the study
  score was reached (the first on ties), so a reader can jump straight to it.
* Lesion-level models also give each study an estimated bleed volume
  (:func:`ichrt.runtime.lesion.study_volume_ml`).
* Arrival time: the earliest StudyDate/StudyTime of its slices, else AcquisitionDate/Time, else
  the earliest file modification time.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from ichrt.runtime.contract import ModelContract
from ichrt.runtime.lesion import study_volume_ml
from ichrt.runtime.probability import tempered_sigmoid
from ichrt.runtime.slices import SliceIdentity
from ichrt.runtime.studymodel import study_any


@dataclass
class SliceScore:
    """One scored slice: who it is, its calibrated probabilities, and (if flagged) its CAM."""

    identity: SliceIdentity
    #: Calibrated probabilities, one per contract label, float32.
    probs: np.ndarray
    #: Source rectangle (y0, x0, y1, x1) that was resized to the model input.
    box: tuple[int, int, int, int]
    #: Class activation map of ``any`` (h, w), kept only for slices at or above the threshold.
    cam: np.ndarray | None = None
    #: Lesion-map probabilities (h, w) of lesion-level models, kept for slices at the threshold.
    lesion: np.ndarray | None = None
    #: Area (mm^2) of the slice's lesion map at the cell threshold (lesion-level models with a
    #: pixel spacing), else None.
    lesion_mm2: float | None = None


@dataclass
class StudyScore:
    """One study's verdict, in a form the worklist can sort and print."""

    study_uid: str
    accession_number: str
    patient_id: str
    n_slices: int
    #: label -> max over slices of the calibrated probability.
    probs: dict[str, float]
    flagged: bool
    key_slice: SliceIdentity
    arrival: datetime
    #: "study", "acquisition" or "file": where ``arrival`` came from.
    arrival_source: str
    #: Position of the study's first slice in the input (breaks arrival ties stably).
    order: int
    #: Estimated bleed volume in mL from the lesion map (lesion-level models), else None.
    volume_ml: float | None = None

    @property
    def p_any(self) -> float:
        return self.probs["any"]


def calibrated_probabilities(logits: np.ndarray, contract: ModelContract) -> np.ndarray:
    """Calibrated probabilities ``sigmoid(logits / T)`` (N, labels) float32, T per label."""
    temps = [contract.temperature(label) for label in contract.labels]
    return tempered_sigmoid(logits, temps).astype(np.float32)


def aggregate_studies(
    slices: Sequence[SliceScore], labels: Sequence[str], threshold: float,
    study_model: Mapping[str, Any] | None = None,
) -> list[StudyScore]:
    """Group slices by StudyInstanceUID into studies, in arrival order (stable).

    ``study_model`` (a contract's) decides p(any) and the key slice from neighbouring slices
    (:mod:`ichrt.runtime.studymodel`); None = maximum over slices. Subtypes: maximum.
    """
    groups: dict[str, list[SliceScore]] = {}
    first_seen: dict[str, int] = {}
    for i, s in enumerate(slices):
        groups.setdefault(s.identity.study_uid, []).append(s)
        first_seen.setdefault(s.identity.study_uid, i)
    any_idx = list(labels).index("any")
    studies = []
    for uid, members in groups.items():
        probs = np.stack([m.probs for m in members])
        identities = [m.identity for m in members]
        p_any, k = study_any(probs[:, any_idx], identities, study_model)
        key = identities[k]
        arrival, source = arrival_of(identities)
        study_max = probs.max(axis=0)
        study_max[any_idx] = p_any
        studies.append(
            StudyScore(
                study_uid=uid,
                accession_number=_first_nonempty(m.identity.accession_number for m in members),
                patient_id=_first_nonempty(m.identity.patient_id for m in members),
                n_slices=len(members),
                probs={label: float(p) for label, p in zip(labels, study_max)},
                flagged=bool(study_max[any_idx] >= threshold),
                key_slice=key,
                arrival=arrival,
                arrival_source=source,
                order=first_seen[uid],
                volume_ml=study_volume_ml([m.lesion_mm2 for m in members], identities),
            )
        )
    return sorted(studies, key=arrival_key)


def arrival_key(study: StudyScore) -> tuple[datetime, int]:
    """Sort key for arrival order: time, then input order."""
    return study.arrival, study.order


def arrival_of(identities: Sequence[SliceIdentity]) -> tuple[datetime, str]:
    """Earliest study time, else acquisition time, else file time of a study's slices."""
    for source, date_attr, time_attr in (
        ("study", "study_date", "study_time"),
        ("acquisition", "acquisition_date", "acquisition_time"),
    ):
        times = [parse_dicom_datetime(getattr(i, date_attr), getattr(i, time_attr))
                 for i in identities]
        known = [t for t in times if t is not None]
        if known:
            return min(known), source
    mtimes = [i.file_mtime for i in identities if i.file_mtime and math.isfinite(i.file_mtime)]
    return datetime.fromtimestamp(min(mtimes) if mtimes else 0.0), "file"


_DIGITS = re.compile(r"\d+")


def parse_dicom_datetime(date: str, time: str = "") -> datetime | None:
    """A DICOM DA (YYYYMMDD) and TM (HH[MM[SS[.ffffff]]]) pair as a naive datetime.

    Also accepts the old ACR-NEMA forms ``YYYY.MM.DD`` and ``HH:MM:SS``.  Returns None when the
    date is missing or not a real date; a missing or malformed time counts as midnight.
    """
    digits = "".join(_DIGITS.findall(date or ""))
    if len(digits) != 8:
        return None
    try:
        day = datetime.strptime(digits, "%Y%m%d")
    except ValueError:
        return None
    whole, _, frac = (time or "").strip().replace(":", "").partition(".")
    if not whole.isdigit() or len(whole) % 2 or len(whole) > 6:
        return day
    hh, mm, ss = (int(whole[i:i + 2]) if len(whole) > i else 0 for i in (0, 2, 4))
    micro = int((frac[:6] if frac.isdigit() else "0").ljust(6, "0"))
    try:
        return day.replace(hour=hh, minute=mm, second=min(ss, 59), microsecond=micro)
    except ValueError:
        return day


def _first_nonempty(values) -> str:
    return next((v for v in values if v), "")
