"""iter_batches accounts for every file once and makes window_hu's tensors; its callers (the
probe, source evaluation, calibration, training) feed the model window_hu's tensors too."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from pydicom.uid import generate_uid
from score_helpers import head_slice, write_ct

from ichrt.runtime.batches import iter_batches, window_hu
from ichrt.runtime.dicom import read_slice

BATCH = 3


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """7 readable slices (two sizes), a copy of one of them (same SOPInstanceUID) and junk."""
    root = tmp_path_factory.mktemp("batches")
    study, series = generate_uid(), generate_uid()
    good = [write_ct(root / f"s{i}.dcm", head_slice(64 if i % 3 else 48, 0.1 * (i % 2)),
                     study, series, generate_uid(), i + 1) for i in range(7)]
    copy = root / "copy_of_s1.dcm"
    shutil.copy(good[1], copy)
    junk = root / "junk.dcm"
    junk.write_bytes(b"not dicom at all")
    return [*good[:3], copy, *good[3:5], junk, *good[5:]]


def test_every_file_is_accounted_for_once(files, tiny_model) -> None:
    _, contract = tiny_model
    batches = list(iter_batches(files, contract, batch_size=BATCH))
    paths = [i.path for b in batches for i in b.identities]
    rejected = [r for b in batches for r in b.rejected]
    assert sorted(paths + [r.path for r in rejected]) == sorted(map(str, files))
    reasons = {Path(r.path).name: r.reason for r in rejected}
    assert reasons.keys() == {"copy_of_s1.dcm", "junk.dcm"}
    assert "duplicate SOPInstanceUID" in reasons["copy_of_s1.dcm"]
    # Batches never span two slabs of BATCH consecutive files (so windowing copies nothing):
    # the copy (file 3) and the junk (file 6) leave their slabs' batches one short.
    assert [len(b.identities) for b in batches] == [3, 2, 2]
    assert [b.done for b in batches] == sorted(b.done for b in batches)
    assert batches[-1].done == len(files)
    assert all(b.hu is None for b in batches)


def test_batches_hold_window_hu_of_the_read_slices(files, tiny_model) -> None:
    _, contract = tiny_model
    batches = list(iter_batches(files, contract, batch_size=BATCH, keep_hu=True))
    paths = [i.path for b in batches for i in b.identities]
    hus = [read_slice(p).hu for p in paths]
    for got, want in zip([h for b in batches for h in b.hu], hus):
        np.testing.assert_array_equal(got, want)
    tensor, boxes = window_hu(hus, contract)
    np.testing.assert_array_equal(np.concatenate([b.tensor for b in batches]), tensor)
    np.testing.assert_array_equal(np.concatenate([b.boxes for b in batches]), boxes)


def test_batch_size_is_honoured(files, tiny_model) -> None:
    _, contract = tiny_model
    for size in (1, 2, 16):
        sizes = [len(b.identities) for b in iter_batches(files, contract, batch_size=size)]
        assert sum(sizes) == 7 and max(sizes) <= size
    with pytest.raises(ValueError, match="batch_size"):
        next(iter_batches(files, contract, batch_size=0))


def test_batches_of_one_slab_are_windowed_without_a_copy(tmp_path, tiny_model) -> None:
    from ichrt.runtime.batches import Slabs, stacked
    from ichrt.runtime.dicom import read_or_reject

    _, contract = tiny_model
    study, series = generate_uid(), generate_uid()
    paths = [write_ct(tmp_path / f"s{i}.dcm", head_slice(64, 0.1), study, series, generate_uid(),
                      i + 1) for i in range(4)]
    slabs = Slabs(4, contract)
    items = [read_or_reject(p, hu_buffer=slabs.hu_buffer(i)) for i, p in enumerate(paths)]
    hus = [item.hu for item in items]
    for got, path in zip(hus, paths):
        np.testing.assert_array_equal(got, read_slice(path).hu)
    whole = stacked(hus)
    assert whole.shape == (4, 64, 64) and all(np.shares_memory(whole, h) for h in hus)
    assert np.shares_memory(stacked(hus[1:3]), hus[1])
    gapped = stacked([hus[0], hus[2]])  # not consecutive slots: a copy
    assert not np.shares_memory(gapped, hus[0])
    np.testing.assert_array_equal(gapped, np.stack([hus[0], hus[2]]))
    for i, item in enumerate(items):  # the readers' windowing, into the slab's tensor rows
        slabs.window(i, item)
    tensor, boxes = slabs.batch_rows([0, 1, 2, 3])
    want = window_hu(hus, contract)
    np.testing.assert_array_equal(tensor, want[0])
    np.testing.assert_array_equal(boxes, want[1])
    assert np.shares_memory(tensor, slabs.rows(0)[0])
    gapped_rows = slabs.batch_rows([0, 2])
    np.testing.assert_array_equal(gapped_rows[0], want[0][[0, 2]])


def test_calibration_batches_are_iter_batches(files, tiny_model) -> None:
    from ichrt.calibration.batches import hu_batches, windowed_batches

    _, contract = tiny_model
    rejected: list = []
    seen: list[tuple[int, int]] = []
    got = list(windowed_batches(files, contract, BATCH, rejected=rejected,
                                progress=lambda done, total: seen.append((done, total))))
    want = list(iter_batches(files, contract, BATCH))
    np.testing.assert_array_equal(np.concatenate([b.tensor for b in got]),
                                  np.concatenate([b.tensor for b in want]))
    assert len(rejected) == 2 and seen[-1] == (len(files), len(files))
    hus = [read_slice(f).hu for f in files[:3]]
    np.testing.assert_array_equal(np.concatenate(list(hu_batches(hus, contract, batch_size=2))),
                                  window_hu(hus, contract)[0])


class Recorder:
    """A stand-in model: records the tensors it is run on; zero logits and features."""

    def __init__(self, contract) -> None:
        self.contract = contract
        self.calls: list[np.ndarray] = []

    def run(self, tensor: np.ndarray, outputs=None) -> dict[str, np.ndarray]:
        self.calls.append(tensor.copy())
        n, k = len(tensor), len(self.contract.cam_weights[0])
        return {"logits": np.zeros((n, len(self.contract.labels)), np.float32),
                "features": np.ones((n, k, 8, 8), np.float32)}


def _hus() -> list[np.ndarray]:
    return [head_slice(64, 0.1), head_slice(48), head_slice(64), head_slice(40, 0.12),
            head_slice(64, 0.05)]


def test_probe_and_source_eval_run_window_hu_batches(tiny_model, monkeypatch) -> None:
    pytest.importorskip("torch")
    from ichrt.export import probe, source_eval
    from ichrt.export.samples import Sample

    _, contract = tiny_model
    hus = _hus()
    want = window_hu(hus, contract)[0]
    model = Recorder(contract)
    probs, cams = source_eval.score_hu(model, hus, batch=4)
    assert [len(c) for c in model.calls] == [4, 1]  # batches, not one slice per call
    np.testing.assert_array_equal(np.concatenate(model.calls), want)
    assert probs.shape == (5, len(contract.labels))
    assert [c.shape for c in cams] == [h.shape for h in hus]

    model = Recorder(contract)
    monkeypatch.setattr("ichrt.runtime.session.load_model", lambda *a, **k: model)
    samples = [Sample(hu=h, labels=np.zeros(6, np.float32)) for h in hus]
    probe.model_features("unused.onnx", samples, batch_size=2)
    np.testing.assert_array_equal(np.concatenate(model.calls), want)


def test_training_inputs_are_window_hu(tiny_model) -> None:
    pytest.importorskip("torch")
    from ichrt.export.augment import AugmentConfig
    from ichrt.export.samples import Sample
    from ichrt.export.torchdata import SliceDataset, SliceStore

    _, contract = tiny_model
    hus = _hus()
    store = SliceStore.from_samples(Sample(hu=h, labels=np.zeros(6, np.float32)) for h in hus)
    plain = SliceDataset(store, contract)
    none = AugmentConfig(box_scale=(1.0, 1.0), box_shift=0.0, hu_slope=(1.0, 1.0),
                         hu_intercept=(0.0, 0.0), hu_noise=(0.0, 0.0), hflip=0.0, rotate=0.0,
                         contrast=(1.0, 1.0), brightness=0.0, noise=0.0)
    identity = SliceDataset(store, contract, augment=none)
    for i, hu in enumerate(hus):
        want = window_hu([store.hu(i)], contract)[0][0]
        np.testing.assert_array_equal(plain[i]["image"].numpy(), want)
        # the augmented path frames as window_hu does (no draw changes anything here)
        np.testing.assert_allclose(identity[(i, 7)]["image"].numpy(), want, atol=1e-5)


def test_slabs_never_outgrow_a_batch_of_pixels(tiny_model) -> None:
    from ichrt.runtime.batches import BATCH_PIXELS, Slabs

    _, contract = tiny_model
    small = Slabs(4, contract)
    assert small.hu_buffer(0)((64, 64)) is not None
    side = int((BATCH_PIXELS // 4) ** 0.5) + 1  # 4 slots of this side exceed BATCH_PIXELS
    assert Slabs(4, contract).hu_buffer(0)((side, side)) is None
