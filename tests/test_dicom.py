"""DICOM ingest end to end: files written with pydicom -> slices in HU, rejections, series order."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_helpers import (
    PATIENT_ID,
    STUDY_UID,
    brain_value,
    ct_dataset,
    head_hu,
    truncate,
    write_ct,
    write_dataset,
    write_series,
)
from pydicom.data import get_testdata_file
from pydicom.pixels import get_decoder
from pydicom.uid import (
    ComprehensiveSRStorage,
    EnhancedCTImageStorage,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    MRImageStorage,
    RLELossless,
)

from ichrt.runtime import dicom
from ichrt.runtime.dicom import IngestError, group_series, iter_files, read_paths, read_slice
from ichrt.runtime.slices import Rejected, Slice

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
HEAD = head_hu()


def reason_of(path: Path) -> str:
    with pytest.raises(IngestError) as info:
        read_slice(path)
    assert info.value.path == str(path)
    assert info.value.reason and str(path) in str(info.value)
    return info.value.reason


# --------------------------------------------------------------------- accepted variants


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({}, id="uint16-intercept-1024"),
        pytest.param({"pixel_representation": 1}, id="int16-intercept-1024"),
        pytest.param({"pixel_representation": 1, "intercept": 0.0}, id="int16-stored-is-hu"),
        pytest.param(
            {"pixel_representation": 1, "bits_stored": 12, "intercept": 0.0}, id="int12-signed"
        ),
        pytest.param({"bits_stored": 12}, id="uint12-intercept-1024"),
        pytest.param({"slope": 0.5, "intercept": -1024.0}, id="slope-0.5"),
        pytest.param({"syntax": ExplicitVRBigEndian, "pixel_representation": 1}, id="big-endian"),
        pytest.param({"syntax": ImplicitVRLittleEndian}, id="implicit-vr"),
        pytest.param(
            {"preamble": False, "syntax": ImplicitVRLittleEndian}, id="no-preamble-implicit"
        ),
        pytest.param({"preamble": False}, id="no-preamble-explicit"),
        pytest.param({"syntax": RLELossless}, id="rle"),
        pytest.param({"syntax": RLELossless, "pixel_representation": 1}, id="rle-signed"),
        pytest.param({"syntax": JPEG2000Lossless}, id="jpeg2000-lossless"),
        pytest.param({"syntax": JPEG2000Lossless, "pixel_representation": 1}, id="jpeg2000-signed"),
        pytest.param({"modality": None}, id="no-modality-but-ct-sop-class"),
    ],
)
def test_ct_variants_read_back_exact_hu(tmp_path: Path, kwargs: dict) -> None:
    path = write_ct(tmp_path / "ct.dcm", hu=HEAD, **kwargs)
    item = read_slice(path)
    assert item.hu.dtype == np.float32 and item.hu.shape == HEAD.shape
    np.testing.assert_array_equal(item.hu, HEAD)


def test_signed_12bit_without_sign_extension_on_disk(tmp_path: Path) -> None:
    stored = (HEAD.astype(np.int32) & 0xFFF).astype(np.int16)  # high 4 bits left at zero
    path = write_ct(
        tmp_path / "s12.dcm", stored=stored, pixel_representation=1, bits_stored=12, intercept=0.0
    )
    np.testing.assert_array_equal(read_slice(path).hu, HEAD)


@pytest.mark.parametrize(("rows", "columns"), [(40, 72), (512, 512), (300, 513), (8, 8)])
def test_any_image_size(tmp_path: Path, rows: int, columns: int) -> None:
    hu = head_hu(rows, columns)
    item = read_slice(write_ct(tmp_path / "a.dcm", hu=hu))
    assert item.hu.shape == (rows, columns)
    np.testing.assert_array_equal(item.hu, hu)


def test_identity_is_filled(tmp_path: Path) -> None:
    path = write_ct(tmp_path / "id.dcm", instance_number=7, position=(-120.5, -118.0, 42.25))
    os.utime(path, (1_700_000_000, 1_700_000_000))
    ident = read_slice(path).identity
    assert ident.path == str(path)
    assert ident.study_uid == STUDY_UID and ident.series_uid.endswith(".10001.1")
    assert ident.sop_uid == "1.2.826.0.1.3680043.8.498.10001.1.1"
    assert ident.instance_number == 7
    assert ident.position == (-120.5, -118.0, 42.25)
    assert ident.orientation == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    assert ident.accession_number == "ACC-7" and ident.patient_id == PATIENT_ID
    assert (ident.study_date, ident.study_time) == ("20240301", "101500")
    assert (ident.acquisition_date, ident.acquisition_time) == ("20240301", "101612.5")
    assert ident.modality == "CT" and ident.file_mtime == 1_700_000_000
    assert (ident.rows, ident.columns) == (64, 64)
    assert ident.pixel_spacing == (0.45, 0.45) and ident.slice_thickness == 5.0


def test_rsna_style_identifiers_are_accepted_as_uids(tmp_path: Path) -> None:
    path = write_ct(
        tmp_path / "ID_0fe31b044.dcm",
        study_uid="ID_5c8b5d701",
        series_uid="ID_9e3f2a1b7c",
        sop_uid="ID_0fe31b044",
    )
    ident = read_slice(path).identity
    assert (ident.study_uid, ident.series_uid, ident.sop_uid) == (
        "ID_5c8b5d701",
        "ID_9e3f2a1b7c",
        "ID_0fe31b044",
    )


def test_missing_optional_geometry_is_none(tmp_path: Path) -> None:
    path = write_ct(tmp_path / "g.dcm", position=None, orientation=None, instance_number=None)
    ident = read_slice(path).identity
    assert ident.position is None and ident.orientation is None and ident.instance_number is None


# --------------------------------------------------------------------- HU quirks end to end


def test_multivalued_rescale(tmp_path: Path) -> None:
    path = write_ct(tmp_path / "m.dcm", slope=[1.0, 1.0], intercept=[-1024.0, -1000.0])
    item = read_slice(path)
    np.testing.assert_array_equal(item.hu, HEAD)
    assert any("multi-valued RescaleIntercept" in note for note in item.notes)


def test_missing_rescale_takes_stored_values_as_hu(tmp_path: Path) -> None:
    path = write_ct(tmp_path / "n.dcm", slope=None, intercept=None, pixel_representation=1)
    item = read_slice(path)
    np.testing.assert_array_equal(item.hu, HEAD)
    assert any("no RescaleSlope" in note for note in item.notes)


def test_unusable_rescale_is_rejected(tmp_path: Path) -> None:
    path = write_ct(tmp_path / "bad.dcm", slope=7.77)
    data = path.read_bytes()
    assert data.count(b"7.77") == 1
    path.write_bytes(data.replace(b"7.77", b"abcd"))
    assert "RescaleSlope" in reason_of(path)
    assert "RescaleSlope is 0" in reason_of(write_ct(tmp_path / "zero.dcm", slope=0.0))


def test_rsna_bad_rescale_is_corrected(tmp_path: Path) -> None:
    hu = HEAD.copy()
    hu[:4, :4] = -1010.0  # air noise below -1000 must stay air, not turn into bone
    stored = (hu.astype(np.int32) & 0xFFF).astype(np.uint16)
    path = write_ct(
        tmp_path / "rsna.dcm", stored=stored, bits_stored=12, pixel_representation=0, intercept=0.0
    )
    item = read_slice(path)
    np.testing.assert_array_equal(item.hu, hu)
    assert any("RSNA" in note for note in item.notes)


def test_ordinary_12bit_unsigned_is_left_alone(tmp_path: Path) -> None:
    item = read_slice(write_ct(tmp_path / "u12.dcm", bits_stored=12, intercept=-1024.0))
    np.testing.assert_array_equal(item.hu, HEAD)
    assert item.notes == ()


@pytest.mark.parametrize(
    ("kwargs", "pad_stored"),
    [
        pytest.param(
            {"pixel_representation": 1, "padding_value": -2000}, -2000, id="ppv-signed--2000"
        ),
        pytest.param({"padding_value": 0}, 0, id="ppv-unsigned-0"),
        pytest.param(
            {"pixel_representation": 1, "padding_value": -2000, "padding_limit": -1500},
            -1700,
            id="ppv-range-limit",
        ),
        pytest.param({"pixel_representation": 1}, -2000, id="literal--3024-hu"),
        pytest.param({"pixel_representation": 1, "intercept": 0.0}, -2000, id="literal--2000-hu"),
        pytest.param(
            {"pixel_representation": 1, "intercept": 0.0}, -3024, id="literal--3024-stored-hu"
        ),
    ],
)
def test_padding_becomes_air(tmp_path: Path, kwargs: dict, pad_stored: int) -> None:
    intercept = kwargs.get("intercept", -1024.0)
    signed = kwargs.get("pixel_representation", 0) == 1
    stored = np.rint(HEAD - intercept).astype(np.int16 if signed else np.uint16)
    corner = np.zeros(HEAD.shape, bool)
    corner[:10, :10] = True
    stored[corner] = pad_stored
    item = read_slice(write_ct(tmp_path / "pad.dcm", stored=stored, **kwargs))
    assert (item.hu[corner] == -1000.0).all()
    np.testing.assert_array_equal(item.hu[~corner], HEAD[~corner])


def test_padding_value_written_unsigned_for_signed_pixels(tmp_path: Path) -> None:
    """Files may store PixelPaddingValue -900 as US 64636 beside signed pixels."""
    stored = np.rint(HEAD + 1024).astype(np.int16)
    stored[:5, :5] = -900  # -1924 HU: above the -2000 HU rule, so only the padding value catches it
    ds = ct_dataset(stored=stored, pixel_representation=1)
    ds.add_new(0x00280120, "US", 64636)
    item = read_slice(write_dataset(tmp_path / "ppv.dcm", ds))
    assert (item.hu[:5, :5] == -1000.0).all()
    np.testing.assert_array_equal(item.hu[5:], HEAD[5:])


def test_monochrome1_with_rescale_keeps_hu(tmp_path: Path) -> None:
    item = read_slice(write_ct(tmp_path / "m1.dcm", photometric="MONOCHROME1"))
    np.testing.assert_array_equal(item.hu, HEAD)


def test_monochrome1_without_rescale_is_inverted(tmp_path: Path) -> None:
    stored = (4095 - (HEAD + 1024)).astype(np.uint16)  # dark = dense, 12 bits
    path = write_ct(
        tmp_path / "m1n.dcm",
        stored=stored,
        photometric="MONOCHROME1",
        bits_stored=12,
        slope=None,
        intercept=None,
    )
    item = read_slice(path)
    np.testing.assert_array_equal(item.hu, np.clip(HEAD + 1024, -1024, 3071))
    assert any("MONOCHROME1" in note for note in item.notes)


def test_hu_is_clamped_to_sane_range(tmp_path: Path) -> None:
    hu = HEAD.copy()
    hu[0, 0] = 8000.0
    item = read_slice(write_ct(tmp_path / "metal.dcm", hu=hu, pixel_representation=1))
    assert item.hu[0, 0] == 3071.0


# --------------------------------------------------------------------- rejected inputs


def test_not_dicom_files(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello, this is not a scan\n" * 20)
    png = tmp_path / "image.dcm"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    noise = tmp_path / "noise.bin"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    for path in (text, png, noise):
        assert reason_of(path).startswith("not a DICOM file")
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    assert reason_of(empty) == "empty file"
    assert reason_of(tmp_path / "missing.dcm") == "no such file"


@pytest.mark.parametrize(
    ("keep", "expected"),
    [
        (600, "no Pixel Data"),
        (-4000, "pixel data truncated"),
        (-1, "pixel data truncated"),
    ],
)
def test_truncated_files(tmp_path: Path, keep: int, expected: str) -> None:
    path = truncate(write_ct(tmp_path / "cut.dcm"), keep)
    reason = reason_of(path)
    assert expected in reason and ("truncated" in reason or "cut short" in reason)


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless])
def test_truncated_compressed_files(tmp_path: Path, syntax: str) -> None:
    path = write_ct(tmp_path / "cut.dcm", syntax=syntax)
    truncate(path, path.stat().st_size * 2 // 3)
    assert "truncated" in reason_of(path)


def test_corrupt_compressed_pixel_data(tmp_path: Path) -> None:
    ds = ct_dataset()
    path = write_dataset(tmp_path / "j2k.dcm", ds, syntax=JPEG2000Lossless)
    data = bytearray(path.read_bytes())
    start = data.index(b"\xff\x4f\xff\x51")  # JPEG 2000 codestream start (SOC, SIZ)
    data[start : start + 40] = b"\x00" * 40
    path.write_bytes(bytes(data))
    assert "corrupt pixel data" in reason_of(path)


def test_missing_codec_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_ct(tmp_path / "j2k.dcm", syntax=JPEG2000Lossless)
    monkeypatch.setattr(
        get_decoder(JPEG2000Lossless), "_available", {}
    )  # as if no plugin installed
    reason = reason_of(path)
    assert 'pip install "ichrt[codecs]"' in reason and "JPEG 2000" in reason


def test_missing_codec_inside_pydicom_also_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Even if the availability check were bypassed, the reason must name the extra."""
    path = write_ct(tmp_path / "j2k.dcm", syntax=JPEG2000Lossless)
    monkeypatch.setattr(get_decoder(JPEG2000Lossless), "_available", {})
    monkeypatch.setattr(
        type(get_decoder(JPEG2000Lossless)), "is_available", property(lambda self: True)
    )
    assert 'pip install "ichrt[codecs]"' in reason_of(path)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        pytest.param({"modality": "MR", "sop_class": MRImageStorage}, "modality MR", id="mr"),
        pytest.param(
            {"modality": "SR", "sop_class": ComprehensiveSRStorage, "pixel_data": False},
            "not an image",
            id="sr",
        ),
        pytest.param(
            {"modality": None, "sop_class": "1.2.840.10008.5.1.4.1.1.7"},
            "no Modality",
            id="no-modality-secondary-capture",
        ),
        pytest.param({"pixel_data": False}, "no Pixel Data", id="no-pixel-data"),
        pytest.param(
            {"frames": 2, "stored": np.zeros((2, 64, 64), np.uint16)},
            "multi-frame",
            id="multi-frame",
        ),
        pytest.param(
            {"sop_class": EnhancedCTImageStorage, "frames": 1}, "multi-frame", id="enhanced-ct"
        ),
        pytest.param(
            {
                "photometric": "RGB",
                "samples_per_pixel": 3,
                "stored": np.zeros((64, 64, 3), np.uint8),
                "bits_allocated": 8,
            },
            "photometric interpretation RGB",
            id="rgb",
        ),
        pytest.param(
            {
                "photometric": "PALETTE COLOR",
                "bits_allocated": 8,
                "stored": np.zeros((64, 64), np.uint8),
            },
            "photometric interpretation PALETTE COLOR",
            id="palette",
        ),
        pytest.param(
            {"image_type": ("ORIGINAL", "PRIMARY", "LOCALIZER")}, "localizer", id="localizer"
        ),
        pytest.param({"study_uid": None}, "missing StudyInstanceUID", id="no-study-uid"),
        pytest.param(
            {"series_uid": None, "sop_uid": None}, "SeriesInstanceUID", id="no-series-uid"
        ),
        pytest.param({"stored": np.zeros((4, 4), np.uint16)}, "too small", id="tiny"),
        pytest.param(
            {"stored": np.zeros((32, 32), np.uint16), "extra": {"Rows": 64, "Columns": 64}},
            "pixel data truncated",
            id="rows-columns-larger-than-data",
        ),
        pytest.param(
            {
                "extra": {"ModalityLUTSequence": [pydicom.Dataset()]},
                "slope": None,
                "intercept": None,
            },
            "Modality LUT",
            id="modality-lut",
        ),
    ],
)
def test_rejections_say_why(tmp_path: Path, kwargs: dict, expected: str) -> None:
    assert expected in reason_of(write_ct(tmp_path / "x.dcm", **kwargs))


def test_dicomdir_and_hidden_files_are_inputs_and_rejected(tmp_path: Path) -> None:
    (tmp_path / "DICOMDIR").write_bytes(Path(get_testdata_file("DICOMDIR")).read_bytes())
    (tmp_path / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + b"\x00" * 100)
    write_ct(tmp_path / "sub" / ".hidden.dcm")
    files = iter_files(tmp_path)
    assert [p.name for p in files] == [".DS_Store", "DICOMDIR", ".hidden.dcm"]
    result = read_paths(tmp_path)
    assert len(result.slices) == 1 and result.slices[0].identity.path.endswith(".hidden.dcm")
    reasons = {Path(r.path).name: r.reason for r in result.rejected}
    assert "DICOMDIR" in reasons["DICOMDIR"] and "not a DICOM" in reasons[".DS_Store"]


def test_duplicate_sop_instance_is_rejected(tmp_path: Path) -> None:
    first = write_ct(tmp_path / "a.dcm")
    second = write_ct(tmp_path / "b.dcm", syntax=RLELossless)
    result = read_paths([first, second])
    assert [s.identity.path for s in result.slices] == [str(first)]
    (rejected,) = result.rejected
    assert (rejected.path, rejected.reason) == (
        str(second), f"duplicate SOPInstanceUID (same as {first})")
    assert rejected.study_uid == result.slices[0].identity.study_uid  # its study stays known


# --------------------------------------------------------------------- files and batches


def test_iter_files_orders_and_dedupes(tmp_path: Path) -> None:
    for name in ("b/2.dcm", "b/1.dcm", "a/z.dcm", "top.dcm"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    expected = [tmp_path / n for n in ("a/z.dcm", "b/1.dcm", "b/2.dcm", "top.dcm")]
    assert iter_files(tmp_path) == expected
    assert iter_files(str(tmp_path / "top.dcm")) == [tmp_path / "top.dcm"]
    assert iter_files([tmp_path / "top.dcm", tmp_path / "b", tmp_path / "top.dcm"]) == [
        tmp_path / "top.dcm",
        tmp_path / "b/1.dcm",
        tmp_path / "b/2.dcm",
    ]
    assert iter_files([tmp_path / "nope.dcm"]) == [tmp_path / "nope.dcm"]


def test_thread_pool_preserves_input_order(tmp_path: Path) -> None:
    files = []
    for k in range(40):
        if k % 5 == 3:
            junk = tmp_path / f"{k:02d}.dcm"
            junk.write_bytes(b"junk" * k)
            files.append(junk)
        else:
            files.append(
                write_ct(
                    tmp_path / f"{k:02d}.dcm", hu=head_hu(16 + k, 16 + k), sop_uid=f"1.2.3.{k}"
                )
            )
    random.Random(1).shuffle(files)
    calls = []
    result = read_paths(files, workers=4, progress=calls.append)
    good = [str(p) for p in files if not p.read_bytes().startswith(b"junk")]
    assert [s.identity.path for s in result.slices] == good
    assert [r.path for r in result.rejected] == [str(p) for p in files if str(p) not in good]
    assert calls == [1] * len(files)
    serial = read_paths(files, workers=1)
    assert [s.identity.path for s in serial.slices] == good
    for a, b in zip(result.slices, serial.slices):
        np.testing.assert_array_equal(a.hu, b.hu)


def test_read_paths_never_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_ct(tmp_path / "a.dcm")

    def broken(*_args):
        raise RuntimeError("bug")

    monkeypatch.setattr(dicom, "read_slice", broken)
    result = read_paths([path])
    assert result.slices == [] and result.rejected == [
        Rejected(str(path), "unexpected error (RuntimeError: bug)")
    ]


# --------------------------------------------------------------------- series ordering


def _brains(series) -> list[float]:
    return [brain_value(s.hu) for s in series.slices]


def test_shuffled_files_are_ordered_by_position(tmp_path: Path) -> None:
    order = [4, 0, 5, 2, 1, 3]
    write_series(tmp_path, 6, name_order=order, instance_numbers=[3, 1, 6, 2, 5, 4])
    (series,) = group_series(read_paths(tmp_path).slices)
    assert series.ordered_by == "position"
    assert _brains(series) == [10.0 + k for k in range(6)]


def test_reversed_positions_order_inferior_to_superior(tmp_path: Path) -> None:
    write_series(tmp_path, 5, reverse_positions=True, spacing=-5.0)
    (series,) = group_series(read_paths(tmp_path).slices)
    z = [s.identity.position[2] for s in series.slices]
    assert series.ordered_by == "position" and z == sorted(z)
    assert _brains(series) == [14.0, 13.0, 12.0, 11.0, 10.0]


def test_tilted_gantry_orders_along_the_slice_normal(tmp_path: Path) -> None:
    tilt = np.deg2rad(25.0)
    orientation = (1.0, 0.0, 0.0, 0.0, float(np.cos(tilt)), float(-np.sin(tilt)))
    write_series(
        tmp_path,
        6,
        orientation=orientation,
        spacing=2.5,
        name_order=[5, 3, 1, 0, 2, 4],
        instance_numbers=[6, 5, 4, 3, 2, 1],
    )
    (series,) = group_series(read_paths(tmp_path).slices)
    assert series.ordered_by == "position"
    assert _brains(series) == [10.0 + k for k in range(6)]


def test_missing_positions_fall_back_to_instance_number(tmp_path: Path) -> None:
    write_series(tmp_path, 5, positions=False, instance_numbers=[2, 1, 5, 3, 4])
    (series,) = group_series(read_paths(tmp_path).slices)
    assert series.ordered_by == "instance_number"
    assert [s.identity.instance_number for s in series.slices] == [1, 2, 3, 4, 5]
    assert _brains(series) == [11.0, 10.0, 13.0, 14.0, 12.0]


def test_tied_positions_fall_back_to_instance_number(tmp_path: Path) -> None:
    write_series(tmp_path, 4, spacing=0.0, instance_numbers=[4, 3, 2, 1])
    (series,) = group_series(read_paths(tmp_path).slices)
    assert series.ordered_by == "instance_number"
    assert _brains(series) == [13.0, 12.0, 11.0, 10.0]


def test_nothing_to_order_by_keeps_file_order(tmp_path: Path) -> None:
    write_series(
        tmp_path, 4, positions=False, instance_numbers=[None, 2, None, 1], name_order=[2, 0, 3, 1]
    )
    (series,) = group_series(read_paths(tmp_path).slices)
    assert series.ordered_by == "file_order"
    assert _brains(series) == [11.0, 13.0, 10.0, 12.0]


def test_series_are_grouped_by_study_and_series(tmp_path: Path) -> None:
    write_series(tmp_path / "a", 3, series_uid="1.2.3.100")
    write_series(tmp_path / "b", 4, series_uid="1.2.3.200", name_order=[3, 2, 1, 0])
    write_series(tmp_path / "c", 2, series_uid="1.2.3.300", study_uid="ID_other")
    groups = group_series(read_paths(tmp_path).slices)
    assert [(g.study_uid, g.series_uid, len(g.slices)) for g in groups] == [
        (STUDY_UID, "1.2.3.100", 3),
        (STUDY_UID, "1.2.3.200", 4),
        ("ID_other", "1.2.3.300", 2),
    ]
    assert all(_brains(g) == sorted(_brains(g)) for g in groups)


# --------------------------------------------------------------------- the pydicom-data corpus


def corpus_files() -> list[Path]:
    """Every file of pydicom's test data and of the pydicom-data package."""
    import data_store
    from pydicom.data import get_testdata_files

    package = Path(data_store.__file__).parent / "data"
    files = {Path(f) for f in get_testdata_files() if Path(f).is_file()}
    files |= {p for p in package.rglob("*") if p.is_file()}
    return sorted(files)


def test_every_corpus_file_is_a_slice_or_a_reasoned_rejection() -> None:
    files = corpus_files()
    assert len(files) > 200
    result = read_paths(files)
    assert len(result.slices) + len(result.rejected) == len(files)
    assert {s.identity.path for s in result.slices} | {r.path for r in result.rejected} == {
        str(f) for f in files
    }
    assert all(isinstance(s, Slice) and s.hu.dtype == np.float32 for s in result.slices)
    assert all(r.reason.strip() for r in result.rejected)
    assert not [r for r in result.rejected if r.reason.startswith("unexpected error")]
    names = {Path(s.identity.path).name for s in result.slices}
    assert {
        "CT_small.dcm",
        "693_J2KR.dcm",
        "bad_sequence.dcm",
    } <= names  # CT, incl. JPEG 2000 / JPEG lossless
    for s in result.slices:
        assert -1024.0 <= s.hu.min() <= s.hu.max() <= 3071.0
