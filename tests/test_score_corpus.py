"""Scoring PyPI's pydicom-data corpus (real DICOM of many kinds) mixed with phantom studies.

Every corpus file must be scored or rejected with a reason, nothing may crash, and the phantom
studies' results must be identical to a run without the junk beside them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from score_helpers import StudySpec, write_study

from ichrt.runtime.scorer import Scorer
from ichrt.runtime.session import load_model


def corpus_dir() -> Path:
    """The data folder of the ``pydicom-data`` distribution (the ``dev`` extra)."""
    import data_store  # the import name of PyPI's pydicom-data

    return Path(data_store.__file__).resolve().parent / "data"


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("phantoms")
    for i, blobs in enumerate([(0.0, 0.6, 0.3), (0.0, 0.0), (0.45, 0.0, 0.0, 0.0)]):
        write_study(root, StudySpec(f"3.{i}", blobs, study_time=f"{8 + i:02d}00"), f"p{i}")
    return root


def test_corpus_files_are_accounted_for_and_phantoms_unchanged(tiny_model, phantoms: Path) -> None:
    corpus = sorted(p for p in corpus_dir().rglob("*") if p.is_file())
    assert len(corpus) >= 60
    model = load_model(tiny_model[0], provider="cpu", threads=1)
    alone = Scorer(model, batch_size=4).score([phantoms])
    mixed = Scorer(model, batch_size=4).score([corpus_dir(), phantoms])

    assert mixed.n_inputs == len(corpus) + alone.n_inputs
    scored = {s.identity.path for s in mixed.slices}
    rejected = {r.path: r.reason for r in mixed.rejected}
    assert len(scored) + len(rejected) == mixed.n_inputs
    assert not scored & set(rejected)
    assert all(reason.strip() for reason in rejected.values())
    assert len(rejected) >= len(corpus) // 2  # most of the corpus is not head CT
    assert not any(r.startswith("unexpected error") for r in rejected.values()), rejected

    phantom_uids = {s.study_uid for s in alone.studies}
    assert phantom_uids == {"3.0", "3.1", "3.2"}
    mixed_phantoms = [s for s in mixed.studies if s.study_uid in phantom_uids]
    for a, b in zip(alone.studies, mixed_phantoms, strict=True):
        assert (a.study_uid, a.probs, a.flagged, a.key_slice, a.n_slices) == (
            b.study_uid, b.probs, b.flagged, b.key_slice, b.n_slices)
    a_slices = [s for s in alone.slices]
    b_slices = [s for s in mixed.slices if s.identity.study_uid in phantom_uids]
    assert [s.identity for s in a_slices] == [s.identity for s in b_slices]
    np.testing.assert_array_equal(np.stack([s.probs for s in a_slices]),
                                  np.stack([s.probs for s in b_slices]))
