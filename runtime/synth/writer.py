"""Write phantom studies in the RSNA 2019 layout: DICOM files, labels, masks, boxes, jpgs.

Layout under ``out``::

    stage_2_train.csv          ID_<id>_<subtype>,Label (Kaggle row order)
    stage_2_train/ID_<id>.dcm  CT Image Storage, explicit VR little endian
    masks/ID_<id>.npz          (5, H, W) bool under "masks", positive slices only
    boxes.csv                  one box per subtype component and slice (BHX columns)
    studies.csv                study -> image ids, positive, subtypes, preset, seed
    synth.json                 the summary returned by write_dataset, with the config
    hemorrhage/, no_hemorrhage/  8-bit three-window jpgs (only with jpg=True; needs Pillow)

DICOM stored values are HU + 1024 (intercept -1024, slope 1), 12 or 16 bits. A share of the
studies is written with the RSNA 2019 bad-rescale quirk (BitsStored 12, unsigned, intercept 0,
HU kept as 12-bit two's complement) and a share with padding (-2000 or -3024 HU outside the
circular field of view, with or without PixelPaddingValue), so that ingest meets both.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, CTImageStorage, ExplicitVRLittleEndian

from ichrt.runtime.contract import LABELS
from ichrt.runtime.extras import ExtraNotInstalled, needs_extra
from ichrt.runtime.rsna_layout import (
    BOXES_FILE,
    IMAGES_DIR,
    LABELS_FILE,
    MASKS_DIR,
    STUDIES_FILE,
    Box,
    write_boxes_csv,
    write_labels_csv,
    write_studies_csv,
)
from ichrt.runtime.synth.boxes import component_boxes
from ichrt.runtime.synth.config import PhantomConfig, resolve_config
from ichrt.runtime.synth.study import PhantomStudy, generate_study

SUBTYPES = LABELS[1:]
JPG_DIRS = ("no_hemorrhage", "hemorrhage")


def stored_values(study: PhantomStudy, k: int) -> tuple[np.ndarray, float]:
    """(stored pixel array, RescaleIntercept) of slice k as the study's encoding writes it."""
    ident = study.identity
    hu = study.hu[k]
    if ident.bad_rescale:
        return (hu.astype(np.int32) & 0xFFF).astype(np.uint16), 0.0
    stored = hu.astype(np.int32) + 1024
    if ident.padding_hu is not None:
        stored[~study.fov_mask] = ident.padding_hu + 1024
    if ident.bits_stored == 16 and _signed(study):
        return stored.astype(np.int16), -1024.0
    return stored.astype(np.uint16), -1024.0


def _signed(study: PhantomStudy) -> bool:
    """Padding needs negative stored values; other 16-bit studies alternate by seed."""
    return study.identity.padding_hu is not None or study.seed % 2 == 0


def _kernel_name(study: PhantomStudy) -> str:
    return "H40s" if study.protocol.sharpen > 0.0 else ("H31s" if study.protocol.blur < 0.4 else "H21s")


def study_header(study: PhantomStudy) -> Dataset:
    """The elements shared by every slice of a study (per-slice ones are set by the writer)."""
    ident, proto = study.identity, study.protocol
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    when = ident.when
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = when.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = when.strftime("%H%M%S")
    ds.AccessionNumber = ident.accession
    ds.Modality = "CT"
    ds.Manufacturer = "ichrt synthetic phantom"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "CT HEAD WO CONTRAST (SYNTHETIC PHANTOM)"
    ds.SeriesDescription = f"AXIAL {proto.thickness:g}MM {_kernel_name(study)}"
    ds.PatientName = ident.patient_name
    ds.PatientID = ident.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.PatientIdentityRemoved = "YES"
    ds.BodyPartExamined = "HEAD"
    ds.SliceThickness = f"{proto.thickness:g}"
    ds.KVP = "120"
    ds.GantryDetectorTilt = f"{ident.gantry_tilt:.1f}"
    ds.ConvolutionKernel = _kernel_name(study)
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = ident.study_uid
    ds.SeriesInstanceUID = ident.series_uid
    ds.FrameOfReferenceUID = ident.series_uid if ident.rsna_ids else ident.study_uid + ".1"
    ds.StudyID = "1"
    ds.SeriesNumber = 2
    tilt = math.radians(ident.gantry_tilt)
    ds.ImageOrientationPatient = [1, 0, 0, 0, round(math.cos(tilt), 6), round(math.sin(tilt), 6)]
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = proto.size
    ds.PixelSpacing = [f"{proto.spacing:.6f}", f"{proto.spacing:.6f}"]
    ds.BitsAllocated = 16
    ds.BitsStored = ident.bits_stored
    ds.HighBit = ident.bits_stored - 1
    signed = not ident.bad_rescale and ident.bits_stored == 16 and _signed(study)
    ds.PixelRepresentation = 1 if signed else 0
    if ident.padding_hu is not None and ident.padding_tag:
        ds.add_new(0x00280120, "SS" if signed else "US", ident.padding_hu + 1024)
    ds.WindowCenter = ["40", "40"] if ident.rsna_ids else "40"
    ds.WindowWidth = ["80", "80"] if ident.rsna_ids else "80"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    return ds


def write_study_dicom(study: PhantomStudy, folder: Path) -> list[Path]:
    """Write the study's slices as ``folder/ID_<id>.dcm``; returns the paths (slice order).

    RSNA-style ``ID_...`` UIDs are not valid UI values; as in the Kaggle files they are written
    anyway (pydicom's value validation is off while writing).
    """
    with pydicom.config.disable_value_validation():
        return _write_slices(study, folder)


def _write_slices(study: PhantomStudy, folder: Path) -> list[Path]:
    ident, proto = study.identity, study.protocol
    ds = study_header(study)
    tilt = math.radians(ident.gantry_tilt)
    corner = -proto.fov / 2.0 + proto.spacing / 2.0
    n = len(study.positions_z)
    paths = []
    for k, z in enumerate(study.positions_z):
        stored, intercept = stored_values(study, k)
        acquired = ident.when + timedelta(seconds=30.0 + 0.8 * k)
        ds.SOPInstanceUID = ident.sop_uids[k]
        ds.file_meta.MediaStorageSOPInstanceUID = ident.sop_uids[k]
        ds.InstanceNumber = n - k if ident.reverse_order else k + 1
        ds.ImagePositionPatient = [f"{corner:.4f}", f"{corner * math.cos(tilt):.4f}",
                                   f"{z + corner * math.sin(tilt):.4f}"]
        ds.SliceLocation = f"{z:.4f}"
        ds.AcquisitionTime = ds.ContentTime = acquired.strftime("%H%M%S.%f")[:13]
        ds.RescaleIntercept = f"{intercept:g}"
        ds.PixelData = stored.tobytes()
        path = folder / f"{ident.image_ids[k]}.dcm"
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        paths.append(path)
    return paths


def study_boxes(study: PhantomStudy) -> list[Box]:
    """One box per connected component of each subtype mask on each slice."""
    ident = study.identity
    out = []
    for k in np.flatnonzero(study.labels[:, 0]):
        for s, name in enumerate(SUBTYPES):
            for x, y, w, h in component_boxes(study.masks[k, s]):
                out.append(Box(ident.image_ids[k], x, y, w, h, name, ident.sop_uids[k],
                               ident.series_uid, ident.study_uid))
    return out


def _save_jpgs(study: PhantomStudy, out: Path) -> None:
    """8-bit three-window (brain, subdural, bone) jpgs in hemorrhage/ and no_hemorrhage/."""
    try:
        from PIL import Image
    except ImportError:
        raise ExtraNotInstalled(needs_extra("--jpg", "export", "Pillow is missing")) from None
    from ichrt.runtime.pictures import window_rgb8

    for k, image_id in enumerate(study.identity.image_ids):
        folder = out / JPG_DIRS[int(study.labels[k, 0])]
        # 4:4:4: each channel holds its own window, chroma subsampling would blur them
        Image.fromarray(window_rgb8(study.hu[k])).save(folder / f"{image_id}.jpg", quality=95,
                                                       subsampling=0)


def _study_seeds(seed: int, n: int) -> list[int]:
    """Independent per-study seeds; study i's seed does not depend on n."""
    children = np.random.SeedSequence(seed).spawn(n)
    return [int(c.generate_state(1, np.uint64)[0] >> np.uint64(1)) for c in children]


def _prepare(out: Path, jpg: bool, overwrite: bool) -> None:
    if not overwrite:
        for name in (LABELS_FILE, IMAGES_DIR):
            if (out / name).exists():
                raise FileExistsError(f"{out / name}: a dataset is already there (use overwrite)")
    for name in (IMAGES_DIR, MASKS_DIR, *(JPG_DIRS if jpg else ())):
        (out / name).mkdir(parents=True, exist_ok=True)


def write_dataset(
    out: str | Path,
    studies: int,
    seed: int,
    slices: int | tuple[int, int] = (24, 40),
    size: int = 512,
    prevalence: float = 0.35,
    jpg: bool = False,
    config: PhantomConfig | str | None = None,
    progress: Callable[[int], Any] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Generate ``studies`` phantom studies and write them in the RSNA 2019 layout under ``out``.

    Exactly round(prevalence * studies) studies are positive (chosen by seed); ``slices`` is a
    slice count or an inclusive (min, max) range. ``progress`` is called with the number of
    slices written after each study. Returns a summary (also written to ``synth.json``).
    """
    cfg = resolve_config(config)
    if studies < 0 or not 0.0 <= prevalence <= 1.0:
        raise ValueError(f"need studies >= 0 and 0 <= prevalence <= 1, got {studies}, {prevalence}")
    lo, hi = (slices, slices) if isinstance(slices, int) else (int(slices[0]), int(slices[1]))
    if not 1 <= lo <= hi:
        raise ValueError(f"bad slice range {slices!r}")
    out = Path(out)
    _prepare(out, jpg, overwrite)
    rng = np.random.default_rng(np.random.SeedSequence(seed).generate_state(4))
    positives = set(rng.permutation(studies)[: round(prevalence * studies)].tolist())
    counts = rng.integers(lo, hi + 1, studies)
    start = time.perf_counter()
    when = None
    labels: dict[str, np.ndarray] = {}
    boxes: list[Box] = []
    rows = []
    for i, study_seed in enumerate(_study_seeds(seed, studies)):
        study = generate_study(study_seed, int(counts[i]), size, i in positives, cfg)
        when = study.identity.when if when is None else when + timedelta(
            minutes=float(rng.uniform(3.0, 90.0)))
        study.identity.when = when
        write_study_dicom(study, out / IMAGES_DIR)
        _write_masks(study, out / MASKS_DIR)
        if jpg:
            _save_jpgs(study, out)
        boxes.extend(study_boxes(study))
        labels.update(zip(study.identity.image_ids, study.labels))
        rows.append(_study_row(study, size))
        if progress is not None:
            progress(len(study.positions_z))
    write_labels_csv(out / LABELS_FILE, labels)
    write_boxes_csv(out / BOXES_FILE, boxes)
    write_studies_csv(out / STUDIES_FILE, rows)
    summary = _summary(out, cfg, seed, size, rows, labels, time.perf_counter() - start)
    (out / "synth.json").write_text(json.dumps({**summary, "config": cfg.to_dict()}, indent=2))
    return summary


def _write_masks(study: PhantomStudy, folder: Path) -> None:
    for k in np.flatnonzero(study.labels[:, 0]):
        np.savez_compressed(folder / f"{study.identity.image_ids[k]}.npz", masks=study.masks[k])


def _study_row(study: PhantomStudy, size: int) -> dict[str, Any]:
    present = study.labels[:, 1:].any(axis=0)
    return {
        "study_id": study.study_id, "n_slices": len(study.positions_z),
        "positive": int(study.positive),
        "subtypes": [name for name, p in zip(SUBTYPES, present) if p],
        "image_ids": study.identity.image_ids, "preset": study.preset, "seed": study.seed,
        "size": size, "pixel_spacing": round(study.spacing, 6),
        "slice_thickness": study.protocol.thickness,
    }


def _summary(out: Path, cfg: PhantomConfig, seed: int, size: int, rows: list[dict[str, Any]],
             labels: dict[str, np.ndarray], seconds: float) -> dict[str, Any]:
    table = np.array(list(labels.values()), np.int64).reshape(-1, len(LABELS))
    n_slices = int(table.shape[0])
    return {
        "out": str(out), "preset": cfg.name, "seed": seed, "size": size,
        "studies": len(rows), "positive_studies": sum(r["positive"] for r in rows),
        "slices": n_slices, "positive_slices": int(table[:, 0].sum()),
        "slices_per_label": {name: int(table[:, k].sum()) for k, name in enumerate(LABELS)},
        "studies_per_subtype": {name: sum(name in r["subtypes"] for r in rows) for name in SUBTYPES},
        "seconds": round(seconds, 3),
        "slices_per_second": round(n_slices / seconds, 2) if seconds > 0 else None,
    }
