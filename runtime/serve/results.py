"""The results sent back to PACS: a DICOM Comprehensive SR and Secondary Capture heat maps.

Both go into new series of the original study (the originals are never altered), are marked as
not for diagnostic use (series description, SR comment, SC image comments), and get UIDs derived
from the study UID, the study version and the model's SHA-256 (:func:`derived_uid`), so that
sending the same result again is idempotent at the receiver and a re-score after new instances
gets new objects that supersede the old ones.

SR content (a flat comprehensive SR; codes of the private scheme ``99ICHRT`` where no standard
concept fits)::

    CONTAINER (LN 18748-4 "Diagnostic imaging report")
      HAS OBS CONTEXT  observer = device (the model: name, version, UID derived from its hash)
      CONTAINS TEXT    (DCM 121106 "Comment")   "NOT FOR DIAGNOSTIC USE ..."
      CONTAINS CODE    (99ICHRT ICH-SUSPECTED)  SCT 373066001 "Yes" / SCT 373067005 "No"
      CONTAINS NUM     (99ICHRT P-<LABEL>)      p(any) and each subtype, unit UCUM "1"
      CONTAINS NUM     (99ICHRT THRESHOLD)      the operating point on p(any)
      CONTAINS NUM     (SCT 118565006 "Volume") estimated bleed volume, mL (when the model has it)
      CONTAINS IMAGE   (99ICHRT KEY-SLICE)      the slice with the highest p(any)
      CONTAINS TEXT    (DCM 111001 "Algorithm Name"), (DCM 111003 "Algorithm Version"),
                       (99ICHRT MODEL-SHA256)
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ichrt.runtime.serve import require

NOT_FOR_DIAGNOSIS = "NOT FOR DIAGNOSTIC USE - research triage by ichrt"
MANUFACTURER = "ichrt"
SR_SERIES_NUMBER = 9901
SC_SERIES_NUMBER = 9902
SCHEME = "99ICHRT"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def derived_uid(*parts: object) -> str:
    """A ``2.25.`` UID derived from ``parts``: the same parts give the same UID.

    ``2.25.`` is followed by a 128-bit integer (as for UUID-derived UIDs, PS3.5 B.2), here the
    first 128 bits of the SHA-256 of the parts.  (pydicom's ``generate_uid(prefix=None)``
    ignores its entropy sources and is random, so it cannot be used for this.)
    """
    text = "\x1f".join(str(p) for p in parts).encode("utf-8", "surrogatepass")
    return "2.25." + str(int.from_bytes(hashlib.sha256(text).digest()[:16], "big"))


@dataclass(frozen=True)
class ResultUids:
    sr_series: str
    sr_instance: str
    sc_series: str
    sc_instances: tuple[str, ...]


def result_uids(study_uid: str, version: int, model_sha256: str, n_sc: int) -> ResultUids:
    base = ("ichrt-result", study_uid, version, model_sha256)
    return ResultUids(
        sr_series=derived_uid(*base, "sr-series"),
        sr_instance=derived_uid(*base, "sr"),
        sc_series=derived_uid(*base, "sc-series"),
        sc_instances=tuple(derived_uid(*base, "sc", i) for i in range(n_sc)),
    )


@dataclass(frozen=True)
class Finding:
    """What the SR says: plain values, so the SR can be built and tested without a model."""

    study_uid: str
    version: int
    flagged: bool
    probs: dict[str, float]
    threshold: float
    key_slice_sop_uid: str
    n_slices: int
    model_name: str
    model_version: str
    model_sha256: str
    volume_ml: float | None = None


def _code(value: str, scheme: str, meaning: str) -> Any:
    hd = require("highdicom")
    return hd.sr.CodedConcept(value=value, scheme_designator=scheme, meaning=meaning)


def build_sr(finding: Finding, evidence: Any, uids: ResultUids) -> Any:
    """The Comprehensive SR of ``finding``; ``evidence`` is the key slice's dataset (header)."""
    hd = require("highdicom")
    sr = hd.sr
    unitless = _code("1", "UCUM", "no units")
    items: list[Any] = []
    observer = sr.ObserverContext(
        observer_type=_code("121007", "DCM", "Device"),
        observer_identifying_attributes=sr.DeviceObserverIdentifyingAttributes(
            uid=derived_uid("ichrt-model", finding.model_sha256),
            name=finding.model_name[:64],
            manufacturer_name=MANUFACTURER,
            model_name=finding.model_version[:64],
        ),
    )
    items.extend(observer)
    items.append(sr.TextContentItem(
        _code("121106", "DCM", "Comment"),
        f"{NOT_FOR_DIAGNOSIS}. Automated triage for intracranial hemorrhage; "
        "not a medical device. A radiologist must read the study.",
        relationship_type="CONTAINS"))
    items.append(sr.CodeContentItem(
        _code("ICH-SUSPECTED", SCHEME, "Suspected intracranial hemorrhage"),
        _code("373066001", "SCT", "Yes") if finding.flagged else _code("373067005", "SCT", "No"),
        relationship_type="CONTAINS"))
    for label, p in finding.probs.items():
        items.append(sr.NumContentItem(
            _code(f"P-{label.upper()}", SCHEME, f"Probability of {label} hemorrhage"[:64]),
            round(float(p), 6), unitless, relationship_type="CONTAINS"))
    items.append(sr.NumContentItem(
        _code("THRESHOLD", SCHEME, "Operating point on probability of any hemorrhage"),
        round(float(finding.threshold), 6), unitless, relationship_type="CONTAINS"))
    if finding.volume_ml is not None:
        items.append(sr.NumContentItem(
            _code("118565006", "SCT", "Volume"), round(float(finding.volume_ml), 3),
            _code("mL", "UCUM", "milliliter"), relationship_type="CONTAINS"))
    items.append(sr.NumContentItem(
        _code("N-SLICES", SCHEME, "Number of slices scored"), int(finding.n_slices),
        _code("{slices}", "UCUM", "slices"), relationship_type="CONTAINS"))
    items.append(sr.ImageContentItem(
        _code("KEY-SLICE", SCHEME, "Key slice (highest probability of hemorrhage)"),
        referenced_sop_class_uid=CT_IMAGE_STORAGE,
        referenced_sop_instance_uid=finding.key_slice_sop_uid,
        relationship_type="CONTAINS"))
    items.append(sr.TextContentItem(_code("111001", "DCM", "Algorithm Name"),
                                    finding.model_name, relationship_type="CONTAINS"))
    items.append(sr.TextContentItem(_code("111003", "DCM", "Algorithm Version"),
                                    finding.model_version, relationship_type="CONTAINS"))
    items.append(sr.TextContentItem(_code("MODEL-SHA256", SCHEME, "Model SHA-256"),
                                    finding.model_sha256, relationship_type="CONTAINS"))
    root = sr.ContainerContentItem(_code("18748-4", "LN", "Diagnostic imaging report"))
    root.ContentSequence = sr.ContentSequence(items)
    doc = sr.ComprehensiveSR(
        evidence=[evidence],
        content=root,
        series_instance_uid=uids.sr_series,
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=uids.sr_instance,
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description=f"ICH triage SR - {NOT_FOR_DIAGNOSIS}"[:64],
    )
    return doc


def build_sc(
    ref: Any, rgb: np.ndarray, uids: ResultUids, index: int, probability: float,
    method: str = "cam",
) -> Any:
    """A Secondary Capture of one flagged slice with its heat map burned in (RGB, 8 bits)."""
    hd = require("highdicom")
    spacing = ref.get("PixelSpacing")
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=ref,
        pixel_array=np.ascontiguousarray(rgb, np.uint8),
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=uids.sc_series,
        series_number=SC_SERIES_NUMBER,
        sop_instance_uid=uids.sc_instances[index],
        instance_number=index + 1,
        manufacturer=MANUFACTURER,
        pixel_spacing=tuple(float(v) for v in spacing) if spacing else None,
        patient_orientation=("L", "P"),
        series_description=f"ICH heat maps - {NOT_FOR_DIAGNOSIS}"[:64],
    )
    sc.BurnedInAnnotation = "YES"
    sc.ImageComments = (f"{NOT_FOR_DIAGNOSIS}. Heat map ({method}) of p(any) = {probability:.3f}; "
                        f"source slice {ref.SOPInstanceUID}")[:10240]
    derivation = ref.get("SOPInstanceUID")
    if derivation:
        from pydicom.dataset import Dataset

        item = Dataset()
        item.ReferencedSOPClassUID = ref.SOPClassUID
        item.ReferencedSOPInstanceUID = derivation
        sc.SourceImageSequence = [item]
    return sc


def heatmap_picture(hu: np.ndarray, cam: np.ndarray, box: Sequence[int]) -> np.ndarray:
    """The runtime's own overlay (brain window, jet heat map, Otsu contour) as (H, W, 3) uint8,
    with "NOT FOR DIAGNOSTIC USE" burned into a strip at the top."""
    from ichrt.runtime.explain.base import normalize, to_slice
    from ichrt.runtime.explain.overlay import overlay_rgb

    heat = normalize(to_slice(np.asarray(cam, np.float32), tuple(box), hu.shape))
    return burn_label(overlay_rgb(hu, heat))


#: A 5 x 7 pixel font with just the letters of the label.
_GLYPHS = {
    "A": (" ### ", "#   #", "#   #", "#####", "#   #", "#   #", "#   #"),
    "C": (" ####", "#    ", "#    ", "#    ", "#    ", "#    ", " ####"),
    "D": ("#### ", "#   #", "#   #", "#   #", "#   #", "#   #", "#### "),
    "E": ("#####", "#    ", "#    ", "#### ", "#    ", "#    ", "#####"),
    "F": ("#####", "#    ", "#    ", "#### ", "#    ", "#    ", "#    "),
    "G": (" ####", "#    ", "#    ", "#  ##", "#   #", "#   #", " ####"),
    "I": ("#####", "  #  ", "  #  ", "  #  ", "  #  ", "  #  ", "#####"),
    "N": ("#   #", "##  #", "# # #", "#  ##", "#   #", "#   #", "#   #"),
    "O": (" ### ", "#   #", "#   #", "#   #", "#   #", "#   #", " ### "),
    "R": ("#### ", "#   #", "#   #", "#### ", "# #  ", "#  # ", "#   #"),
    "S": (" ####", "#    ", "#    ", " ### ", "    #", "    #", "#### "),
    "T": ("#####", "  #  ", "  #  ", "  #  ", "  #  ", "  #  ", "  #  "),
    "U": ("#   #", "#   #", "#   #", "#   #", "#   #", "#   #", " ### "),
    " ": ("     ",) * 7,
}
LABEL = "NOT FOR DIAGNOSTIC USE"
LABEL_RGB = (255, 255, 0)


def burn_label(rgb: np.ndarray, text: str = LABEL) -> np.ndarray:
    """``rgb`` with ``text`` in yellow on a black strip along the top (scaled with the image;
    left as it is when the image is too narrow for the text at one pixel per font pixel)."""
    out = np.array(rgb, np.uint8, copy=True)
    height, width = out.shape[:2]
    scale = max(1, min(height, width) // 200)
    while scale > 1 and len(text) * 6 * scale + 2 * scale > width:
        scale -= 1
    if len(text) * 6 * scale + 2 * scale > width or 9 * scale > height:
        return out
    out[: 9 * scale] = 0
    x = 2 * scale
    for char in text:
        glyph = np.array([[c == "#" for c in row] for row in _GLYPHS[char]], bool)
        mask = np.kron(glyph, np.ones((scale, scale), bool))
        region = out[scale: scale + mask.shape[0], x: x + mask.shape[1]]
        region[mask] = LABEL_RGB
        x += 6 * scale
    return out
