"""Who a phantom study is and how its DICOM files are encoded.

Identifiers mimic the RSNA 2019 archive: image ids ``ID_`` + 9 hex digits (the file name), and in
about half of the studies the UIDs too are ``ID_...`` strings instead of real UIDs, as in the
Kaggle files. Patients are clearly synthetic (``PHANTOM^...``). Encoding choices (12/16 bits, the
RSNA bad-rescale quirk, padding outside the field of view, gantry tilt, reversed instance order)
are drawn per study so that ingest meets every variant.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np

from ichrt.runtime.synth.config import PhantomConfig

#: HU written outside the reconstruction circle by padding studies (stored value = HU + 1024).
PADDING_HU = (-2000, -3024)


@dataclass
class StudyIdentity:
    """Identifiers, dates and DICOM encoding of one study."""

    image_ids: list[str]
    sop_uids: list[str]
    study_uid: str
    series_uid: str
    patient_id: str
    patient_name: str
    accession: str
    when: datetime
    #: RSNA-style ``ID_...`` UIDs (True) or real numeric UIDs.
    rsna_ids: bool
    bits_stored: int
    #: RSNA 2019 quirk: BitsStored 12, unsigned, intercept 0, HU stored as 12-bit two's complement.
    bad_rescale: bool
    #: HU of pixels outside the reconstruction circle, or None (air there).
    padding_hu: int | None
    #: whether PixelPaddingValue is written (otherwise ingest must recognise the value itself).
    padding_tag: bool
    #: gantry tilt (degrees) recorded in ImageOrientationPatient, 0 for most studies.
    gantry_tilt: float
    #: InstanceNumber 1 at the top slice (scanned from the vertex down).
    reverse_order: bool


def _hex(rng: np.random.Generator, digits: int) -> str:
    return "".join(f"{int(v):x}" for v in rng.integers(0, 16, digits))


def _uid(rng: np.random.Generator) -> str:
    """A real-looking UID under the UUID-derived root 2.25 (no registered root needed)."""
    value = int.from_bytes(rng.bytes(15), "big")
    return f"2.25.{value}"


def draw_identity(rng: np.random.Generator, cfg: PhantomConfig, n_slices: int) -> StudyIdentity:
    """Identifiers and encoding of a study of ``n_slices`` slices."""
    rsna = rng.random() < cfg.p_rsna_ids
    image_ids: list[str] = []
    seen: set[str] = set()
    while len(image_ids) < n_slices:
        candidate = "ID_" + _hex(rng, 9)
        if candidate not in seen:
            seen.add(candidate)
            image_ids.append(candidate)
    sop_uids = list(image_ids) if rsna else [_uid(rng) for _ in range(n_slices)]
    study_uid = "ID_" + _hex(rng, 10) if rsna else _uid(rng)
    series_uid = "ID_" + _hex(rng, 10) if rsna else _uid(rng)
    patient = "ID_" + _hex(rng, 8) if rsna else "SYN" + _hex(rng, 8).upper()
    bad = rng.random() < cfg.p_bad_rescale
    padding = None
    if not bad and rng.random() < cfg.p_padding:
        padding = int(rng.choice(PADDING_HU))
    start = datetime(2015, 1, 1) + timedelta(minutes=int(rng.integers(0, 9 * 365 * 24 * 60)))
    return StudyIdentity(
        image_ids=image_ids,
        sop_uids=sop_uids,
        study_uid=study_uid,
        series_uid=series_uid,
        patient_id=patient,
        patient_name=f"PHANTOM^SYNTH{_hex(rng, 6).upper()}",
        accession="PH" + "".join(str(int(v)) for v in rng.integers(0, 10, 8)),
        when=start,
        rsna_ids=rsna,
        bits_stored=12 if bad or (padding is None and rng.random() < cfg.p_bits12) else 16,
        bad_rescale=bad,
        padding_hu=padding,
        padding_tag=padding is not None and rng.random() < 0.7,
        gantry_tilt=float(rng.uniform(-20.0, 20.0)) if rng.random() < cfg.p_gantry_tilt else 0.0,
        reverse_order=rng.random() < cfg.p_reverse_order,
    )
