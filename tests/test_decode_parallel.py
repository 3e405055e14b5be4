"""Parallel decoding of compressed slices (issue 15): with several readers, ``iter_read`` decodes
compressed frames in worker processes (``dicomparse.FrameWorker``); the result must be what one
reader gives, file for file: the same slices (HU equal) and the same rejections, in input order,
also when a decoder crashes its process. The fastest installed plugin decodes each syntax, the
next one when it fails.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from codec_helpers import (
    CRASH_ROWS,
    JPEG_LOSSLESS_SV1,
    crash_on_marked_rows,
    jpeg_lossless,
    needs_dcmcjpeg,
    panic_on_marked_rows,
)
from dicom_helpers import head_hu, write_ct
from pydicom.pixels import get_decoder, get_encoder
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

from ichrt.runtime import dicomparse
from ichrt.runtime.dicom import iter_read, read_or_reject
from ichrt.runtime.slices import Rejected, Slice

COMPRESSED = [RLELossless, JPEG2000Lossless] + (
    [JPEGLSLossless] if get_encoder(JPEGLSLossless).is_available else [])


def _slice(folder: Path, k: int, syntax: str, rows: int = 64) -> Path:
    return write_ct(folder / f"{k:02d}-{syntax}.dcm", syntax=syntax, rows=rows,
                    hu=head_hu(rows, 64, brain=30.0 + k), instance_number=k,
                    sop_uid=f"1.2.826.0.1.3680043.8.498.7.{k}")


def mixed_inputs(folder: Path) -> list[Path]:
    """Compressed and plain slices, junk, an empty and a missing file, corrupt JPEG 2000."""
    syntaxes = [*COMPRESSED, ExplicitVRLittleEndian]
    files = [_slice(folder, k, syntaxes[k % len(syntaxes)]) for k in range(12)]
    corrupt = _slice(folder, 12, JPEG2000Lossless)
    data = bytearray(corrupt.read_bytes())
    start = data.index(b"\xff\x4f\xff\x51")  # the codestream's SOC and SIZ markers
    data[start:start + 40] = b"\x00" * 40
    corrupt.write_bytes(bytes(data))
    (folder / "notes.txt").write_text("not a DICOM file")
    (folder / "empty.dcm").write_bytes(b"")
    files += [corrupt, folder / "notes.txt", folder / "empty.dcm", folder / "missing.dcm"]
    random.Random(15).shuffle(files)
    return files


def assert_same(parallel: list, serial: list) -> None:
    """Same kinds, paths and reasons in the same order; slices with equal HU and identity."""
    assert [type(r) for r in parallel] == [type(r) for r in serial]
    for a, b in zip(parallel, serial):
        if isinstance(b, Rejected):
            assert a == b
        else:
            assert a.identity == b.identity and a.notes == b.notes
            np.testing.assert_array_equal(a.hu, b.hu)


@pytest.fixture
def frames_sent(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Paths of the frames the readers sent to their worker processes."""
    sent: list[str] = []
    run = dicomparse.FrameWorker.run

    def counting(self, path, *args):
        sent.append(str(path))
        return run(self, path, *args)

    monkeypatch.setattr(dicomparse.FrameWorker, "run", counting)
    return sent


def test_parallel_decode_reads_what_one_reader_reads(tmp_path, frames_sent):
    files = mixed_inputs(tmp_path)
    serial = list(iter_read(files, 1))
    assert not frames_sent  # one reader decodes on its own thread
    parallel = list(iter_read(files, 3))
    assert_same(parallel, serial)
    compressed = [str(p) for p in files if any(p.name.endswith(f"-{s}.dcm") for s in COMPRESSED)]
    assert sorted(frames_sent) == sorted(compressed)  # every compressed frame, in a worker
    reasons = {Path(r.path).name: r.reason for r in serial if isinstance(r, Rejected)}
    assert len(reasons) == 4 and "corrupt pixel data" in reasons[f"12-{JPEG2000Lossless}.dcm"]
    assert sum(isinstance(r, Slice) for r in parallel) == 12


@needs_dcmcjpeg()
def test_jpeg_lossless_decodes_to_the_plain_originals_serial_and_parallel(tmp_path):
    plain = [_slice(tmp_path / "plain", k, ExplicitVRLittleEndian, rows=96) for k in range(6)]
    jpeg = jpeg_lossless(plain, tmp_path / "jpeg")
    assert get_decoder(JPEG_LOSSLESS_SV1).UID == JPEGLosslessSV1
    import pydicom

    assert pydicom.dcmread(jpeg[0]).file_meta.TransferSyntaxUID == JPEGLosslessSV1
    originals = [read_or_reject(p) for p in plain]
    serial, parallel = list(iter_read(jpeg, 1)), list(iter_read(jpeg, 2))
    for original, a, b in zip(originals, serial, parallel):
        np.testing.assert_array_equal(a.hu, original.hu)
        np.testing.assert_array_equal(b.hu, original.hu)


def test_every_installed_plugin_decodes_the_same_values(tmp_path):
    import pydicom
    from pydicom.pixels import as_pixel_options

    for k, syntax in enumerate(COMPRESSED):
        ds = pydicom.dcmread(_slice(tmp_path, k, syntax))
        options = as_pixel_options(ds)
        decoder = get_decoder(syntax)
        arrays = {name: decoder.as_array(ds.PixelData, raw=True, decoding_plugin=name,
                                         **options)[0] for name in dicomparse.plugins_for(syntax)}
        reference = dicomparse.decode_frame(ds.PixelData, syntax, options)
        assert arrays, syntax
        for name, array in arrays.items():
            np.testing.assert_array_equal(array, reference, err_msg=f"{syntax.name}: {name}")


def test_the_fastest_installed_plugin_comes_first():
    for syntax, preferred in dicomparse.PREFERRED_PLUGINS.items():
        available = set(get_decoder(syntax).available_plugins)
        order = dicomparse.plugins_for(syntax)
        assert set(order) == available
        installed = [name for name in preferred if name in available]
        assert list(order[:len(installed)]) == installed
    if "gdcm" in get_decoder(JPEGLosslessSV1).available_plugins:
        assert dicomparse.plugins_for(JPEGLosslessSV1)[0] == "gdcm"
    if "pylibjpeg" in get_decoder(RLELossless).available_plugins:
        assert dicomparse.plugins_for(RLELossless)[0] == "pylibjpeg"


def test_a_failing_plugin_leaves_the_frame_to_the_next(tmp_path, monkeypatch):
    path = _slice(tmp_path, 0, JPEG2000Lossless)
    expected = read_or_reject(path).hu
    decoder = get_decoder(JPEG2000Lossless)
    order = dicomparse.plugins_for(JPEG2000Lossless)
    if len(order) < 2:
        pytest.skip("one JPEG 2000 plugin installed: nothing to fall back on")

    def broken(src, runner):
        raise ValueError("cannot decode this one")

    monkeypatch.setitem(decoder._available, order[0], broken)
    np.testing.assert_array_equal(read_or_reject(path).hu, expected)
    for name in order:
        monkeypatch.setitem(decoder._available, name, broken)
    result = read_or_reject(path)
    assert isinstance(result, Rejected) and "missing or corrupt pixel data" in result.reason
    assert all(f"{name}: cannot decode this one" in result.reason for name in order)


def test_a_decoder_crash_rejects_its_file_and_the_rest_is_read(tmp_path, monkeypatch):
    files = [_slice(tmp_path, k, RLELossless, rows=CRASH_ROWS if k in (3, 7) else 64)
             for k in range(10)] + [_slice(tmp_path, 10, ExplicitVRLittleEndian)]
    serial = list(iter_read(files, 1))
    monkeypatch.setattr(dicomparse, "decode_frame", crash_on_marked_rows)
    parallel = list(iter_read(files, 2))
    for k, (a, b) in enumerate(zip(parallel, serial)):
        if k in (3, 7):
            assert isinstance(a, Rejected) and a.path == str(files[k])
            assert "the decoder crashed" in a.reason and "SIGSEGV" in a.reason, a.reason
        else:
            assert_same([a], [b])


def test_a_decoder_panic_gives_the_reason_one_reader_gives(tmp_path, monkeypatch):
    files = [_slice(tmp_path, k, RLELossless, rows=CRASH_ROWS if k == 1 else 64)
             for k in range(3)]
    monkeypatch.setattr(dicomparse, "decode_frame", panic_on_marked_rows)
    serial, parallel = list(iter_read(files, 1)), list(iter_read(files, 2))
    assert_same(parallel, serial)
    assert "the decoder failed (PanicException" in serial[1].reason


def test_plain_files_never_start_a_worker(tmp_path, monkeypatch):
    def refuse(offer):
        raise AssertionError("a worker for a plain file")

    monkeypatch.setattr(dicomparse.FrameWorker, "of_thread", refuse)
    files = [_slice(tmp_path, k, ExplicitVRLittleEndian) for k in range(6)]
    (tmp_path / "junk.dcm").write_bytes(b"junk" * 40)
    results = list(iter_read([*files, tmp_path / "junk.dcm"], 3))
    assert [type(r) for r in results] == [Slice] * 6 + [Rejected]


@pytest.mark.parametrize("how", ["no processes", "no usable interpreter"])
def test_without_workers_the_readers_decode_themselves(tmp_path, monkeypatch, how):
    files = mixed_inputs(tmp_path)
    serial = list(iter_read(files, 1))

    def no_processes(*args, **kwargs):
        raise OSError("no processes here")

    if how == "no processes":
        monkeypatch.setattr(dicomparse.subprocess, "Popen", no_processes)
    else:  # a frozen application, say: its executable does not run ``-c`` code
        monkeypatch.setattr(dicomparse.sys, "executable", "/bin/false")
    assert_same(list(iter_read(files, 2)), serial)


def test_stopping_early_ends_the_workers(tmp_path, monkeypatch):
    workers: list = []
    of_thread = dicomparse.FrameWorker.of_thread.__func__

    def recording(cls, offer):
        worker = of_thread(cls, offer)
        if worker not in workers:
            workers.append(worker)
        return worker

    monkeypatch.setattr(dicomparse.FrameWorker, "of_thread", classmethod(recording))
    files = [_slice(tmp_path, k, RLELossless) for k in range(8)]
    reading = iter_read(files, 2)
    assert isinstance(next(reading), Slice)
    reading.close()
    assert workers and all(w._proc is None for w in workers)
