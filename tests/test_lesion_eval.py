"""The model card's evaluation (ichrt.export.lesion_eval) on phantom studies: the study model sees
each study's slices in scan order, as ``ichrt score`` does, whatever the files are called."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from export_helpers import write_phantoms
from tinymodel import make_tiny_model

from ichrt.export.lesion_eval import evaluate_samples, infer_hu, phantom_slices, study_scores
from ichrt.runtime import rsna_layout
from ichrt.runtime.contract import ModelContract
from ichrt.runtime.session import load_model
from ichrt.runtime.slices import scan_positions

#: Neighbour-max with a large neighbour weight: the study p(any) depends on the slice order.
STUDY_MODEL = {"kind": "neighbour-max", "r": 0.8, "a": 1.0, "b": 0.0}


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lesion-eval") / "ph"
    write_phantoms(root, studies=4, size=64, slices=(7, 7), seed=3)
    return root


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("lesion-eval-model") / "tiny-lesion.onnx"
    make_tiny_model(path, ModelContract(input_size=32, name="tiny-test-model", arch="tiny",
                                        study_model=STUDY_MODEL), lesion=True)
    return load_model(path, provider="cpu", threads=1)


def renamed_copy(src: Path, dst: Path, seed: int) -> Path:
    """``src`` with its image ids (file names and every CSV / mask that names them) shuffled
    among the slices: the pixels, positions and labels stay together, only names change."""
    shutil.copytree(src, dst)
    ids = sorted(p.stem for p in (dst / rsna_layout.IMAGES_DIR).glob("*.dcm"))
    new = list(np.random.default_rng(seed).permutation(ids))
    mapping = dict(zip(ids, new))
    for folder, suffix in ((rsna_layout.IMAGES_DIR, ".dcm"), (rsna_layout.MASKS_DIR, ".npz")):
        files = list((dst / folder).glob(f"*{suffix}")) if (dst / folder).is_dir() else []
        for path in files:  # two passes: new names collide with old ones
            path.rename(path.with_name(f"tmp-{mapping[path.stem]}{suffix}"))
        for path in (dst / folder).glob(f"tmp-*{suffix}"):
            path.rename(path.with_name(path.name[len("tmp-"):]))
    pattern = re.compile("|".join(re.escape(i) for i in sorted(ids, key=len, reverse=True)))
    for csv in dst.glob("*.csv"):
        csv.write_text(pattern.sub(lambda m: mapping[m.group(0)], csv.read_text()))
    return dst


def study_figures(model, folder: Path, by_file_name: bool = False
                  ) -> tuple[dict, dict[str, float]]:
    """(evaluate_samples' figures, study p(any) by the study model) of a phantom folder;
    ``by_file_name``: each study's slices in file-name order instead (what the evaluation did)."""
    samples, idents = phantom_slices(folder)
    if by_file_name:
        order = sorted(range(len(samples)), key=lambda k: (samples[k].group, samples[k].id))
        samples, idents = [samples[k] for k in order], None
    doc = evaluate_samples(model, samples, "phantom", studies=True, n_boot=50,
                           identities=idents)
    probs = infer_hu(model, [s.hu for s in samples]).probs[:, 0]
    y = np.stack([s.labels for s in samples])[:, 0].astype(np.float64)
    st = study_scores(y, probs, [s.group for s in samples], [s.id for s in samples],
                      model.contract.study_model, idents)
    return doc, dict(zip(st["study"], st["p_model"]))


def test_each_phantom_study_is_in_scan_order(phantoms):
    samples, idents = phantom_slices(phantoms)
    assert len(samples) == len(idents) == 28
    for s, ident in zip(samples, idents):
        assert Path(ident.path).stem == s.id
    groups = [s.group for s in samples]
    assert groups == sorted(groups)  # whole studies, one after the other
    for g in set(groups):
        keys = scan_positions([i for s, i in zip(samples, idents) if s.group == g])
        assert keys is not None and np.all(np.diff(keys) > 0)


def test_shuffled_file_names_give_the_same_study_figures(phantoms, model, tmp_path):
    doc, p = study_figures(model, phantoms)
    for seed in (0, 1):
        other, q = study_figures(model, renamed_copy(phantoms, tmp_path / f"ph{seed}", seed))
        assert q.keys() == p.keys()
        assert np.allclose([q[k] for k in p], [p[k] for k in p], rtol=0, atol=1e-12)
        assert other["study"] == doc["study"]
        assert other["auc"] == doc["auc"] and other["slice"] == doc["slice"]
        # The check has teeth: in file-name order these studies' p(any) do move.
        _, by_name = study_figures(model, tmp_path / f"ph{seed}", by_file_name=True)
        assert not np.allclose([by_name[k] for k in p], [p[k] for k in p], rtol=0, atol=1e-6)


def test_study_figures_are_the_scorers(phantoms, model):
    """The evaluation's study p(any) is the one ``ichrt score`` gives the same studies."""
    from ichrt.runtime.scorer import Scorer

    samples, idents = phantom_slices(phantoms)
    _, p = study_figures(model, phantoms)
    study_uid = {s.group: i.study_uid for s, i in zip(samples, idents)}
    scored = {st.study_uid: st.p_any for st in Scorer(model, explain="none").score([phantoms])
              .studies}
    assert len(scored) == len(p) == 4
    for group, value in p.items():
        assert scored[study_uid[group]] == pytest.approx(value, abs=1e-6)
