"""The calibration reader yields the runtime's windowed tensors from DICOM and replays them."""

from __future__ import annotations

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from ichrt.calibration.dataset import open_labelled
from ichrt.calibration.reader import SliceCalibrationReader, sample_files
from ichrt.runtime.dicom import read_slice
from ichrt.runtime.framing import head_boxes
from ichrt.runtime.windowing import window_reference

pytest_plugins = ("calibration_helpers",)


def drain(reader: SliceCalibrationReader) -> list[np.ndarray]:
    batches = []
    while (item := reader.get_next()) is not None:
        assert list(item) == ["image"]
        batches.append(item["image"])
    return batches


def test_reader_yields_windowed_batches_from_dicom(tiny_model, phantom_dir, tmp_path):
    _, contract = tiny_model
    files = open_labelled(phantom_dir).files[:11]
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom at all")
    rejected: list = []
    reader = SliceCalibrationReader.from_files([*files, junk], contract, batch_size=4,
                                               rejected=rejected)
    assert isinstance(reader, CalibrationDataReader)
    batches = drain(reader)
    assert [len(b) for b in batches] == [4, 4, 3]
    assert all(b.dtype == np.float32 and b.shape[1:] == (3, 32, 32) for b in batches)
    assert [r.path for r in rejected] == [str(junk)]
    # the same tensors as the NumPy reference windowing of the runtime's HU, framed on the head
    hu = np.stack([read_slice(p).hu for p in files])
    expected = window_reference(hu, contract, boxes=head_boxes(hu))
    np.testing.assert_allclose(np.concatenate(batches), expected, atol=1e-5)
    assert reader.slices == 11


def test_rewind_and_set_range_replay_the_cache(tiny_model, labelled_dir):
    _, contract = tiny_model
    files = open_labelled(labelled_dir).files[:10]
    reader = SliceCalibrationReader.from_files(files, contract, batch_size=4)
    first = reader.get_next()["image"]
    reader.rewind()
    replay = drain(reader)
    np.testing.assert_array_equal(replay[0], first)
    assert len(reader) == 3
    reader.set_range(1, 3)
    assert [len(b) for b in drain(reader)] == [4, 2]


def test_reader_from_in_memory_hu(tiny_model):
    _, contract = tiny_model
    hu = np.full((5, 40, 48), 30.0, np.float32)
    batches = drain(SliceCalibrationReader.from_hu(list(hu), contract, batch_size=2))
    assert [b.shape for b in batches] == [(2, 3, 32, 32), (2, 3, 32, 32), (1, 3, 32, 32)]


def test_sample_files_is_reproducible_and_ordered():
    files = [f"f{i:02d}" for i in range(30)]
    a = sample_files(files, 7, seed=3)
    assert a == sample_files(files, 7, seed=3) and a == sorted(a) and len(set(a)) == 7
    assert sample_files(files, None) == files and sample_files(files, 99) == files
