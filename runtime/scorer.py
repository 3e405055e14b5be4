"""The scoring API: DICOM paths in, a prioritized worklist out (no file writing).

>>> from ichrt.runtime.scorer import Scorer
>>> result = Scorer().score(["/data/incoming"])          # doctest: +SKIP
>>> [s.study_uid for s in result.studies if s.flagged]   # doctest: +SKIP

:class:`Scorer` loads the model once and can score many batches of paths; :func:`score` is the
one-shot form.  Writing the worklist files is a separate step (:func:`write_result`), so the API
can be used and tested without touching the disk.  :func:`write_result` publishes a run's files
all at once under the output folder's lock (:mod:`ichrt.runtime.outputs`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ichrt.runtime.aggregate import SliceScore, StudyScore, aggregate_studies
from ichrt.runtime.batches import iter_batches
from ichrt.runtime.dicom import IngestLimits, iter_files, read_or_reject
from ichrt.runtime.explain import Explainer, explain_slices, make_explainer, write_explanation
from ichrt.runtime.outputs import RUN_FILE, OutputLock, fsync_files, publish
from ichrt.runtime.paths import inside, safe_name
from ichrt.runtime.pipeline import Progress, run_pipeline
from ichrt.runtime.session import (
    LoadedModel,
    check_pin,
    default_model_for,
    load_model,
    required_pins,
)
from ichrt.runtime.slices import Rejected
from ichrt.runtime.worklist import (
    REJECTED_FIELDS,
    prioritize,
    rejected_by_study,
    rejected_records,
    slice_fields,
    slice_record,
    unscored_studies,
    worklist_fields,
    worklist_records,
    write_csv,
    write_json,
)

#: Explanation methods ``--explain`` accepts; ``lesion`` (lesion-level models) and ``cam`` are
#: free during scoring; ``auto`` is ``lesion`` where the model has a lesion map, else ``cam``.
EXPLAIN_METHODS = ("auto", "lesion", "cam", "gradcam", "gradcampp", "hshap", "none")
#: Methods whose maps are kept during scoring (no re-read, no extra model run).
FREE_METHODS = ("lesion", "cam")


def resolve_explain(method: str, contract: Any) -> str:
    """``auto`` -> ``lesion`` for lesion-level models, else ``cam``; ``lesion`` needs the map."""
    if method == "auto":
        return "lesion" if contract.lesion_stride is not None else "cam"
    if method == "lesion" and contract.lesion_stride is None:
        raise ValueError("--explain lesion needs a lesion-level model (no 'lesion' output in "
                         "this model); use cam, gradcam, gradcampp or hshap")
    return method


@dataclass(frozen=True)
class ModelInfo:
    """What the worklist says about the model that produced it."""

    name: str
    path: str
    sha256: str
    arch: str
    providers: tuple[str, ...]
    #: The SHA-256 values the file was required to have (empty: not pinned).
    pinned_to: tuple[str, ...] = ()

    @classmethod
    def of(cls, model: LoadedModel) -> ModelInfo:
        c = model.contract
        return cls(c.name, str(model.path), model.sha256, c.arch, tuple(model.providers),
                   tuple(model.pinned_to))

    @property
    def display(self) -> str:
        return f"{self.name} (sha256:{self.sha256[:12]})"


@dataclass
class ScoreResult:
    """Everything one scoring run produced; every input is in ``slices`` or ``rejected``."""

    #: Studies in worklist order (rank 1 first).
    studies: list[StudyScore]
    #: Scored slices in input order.
    slices: list[SliceScore]
    rejected: list[Rejected]
    model: ModelInfo
    labels: tuple[str, ...]
    threshold: float
    explain: str
    n_inputs: int

    @property
    def flagged(self) -> list[StudyScore]:
        return [s for s in self.studies if s.flagged]

    def to_dict(self, show_phi: bool = False) -> dict[str, Any]:
        """The worklist.json document (PatientID only with ``show_phi``)."""
        return {
            "model": {"name": self.model.name, "sha256": self.model.sha256,
                      "arch": self.model.arch, "path": self.model.path,
                      "providers": list(self.model.providers),
                      "pinned": bool(self.model.pinned_to)},
            "labels": list(self.labels),
            "threshold": self.threshold,
            "counts": {"inputs": self.n_inputs, "scored_slices": len(self.slices),
                       "rejected": len(self.rejected), "studies": len(self.studies),
                       "flagged": len(self.flagged),
                       "not_scored_studies": sum(s.n_slices == 0 for s in self.studies)},
            "studies": worklist_records(self.studies, show_phi, rejected_by_study(self.rejected)),
            "rejected": rejected_records(self.rejected),
        }


class Scorer:
    """A loaded model plus scoring options; call :meth:`score` as often as needed."""

    def __init__(
        self,
        model: str | Path | LoadedModel | None = None,
        provider: str = "auto",
        threads: int | None = None,
        batch_size: int = 16,
        threshold: float | None = None,
        explain: str = "auto",
        workers: int | None = None,
        require_sha256: str | Iterable[str] | None = None,
        max_pixels: int | None = None,
    ) -> None:
        """
        Args:
            model: an ONNX file, an already loaded model, or None for the shipped default
                (the INT8 model; the FP32 one, whose torch twin they need, for ``gradcam``
                and ``gradcampp``).
            provider: ``auto``, ``cpu``, ``cuda`` or ``tensorrt``.
            threads: ONNX Runtime intra-op threads (default on a CPU: one per run, with one run
                per physical core at once, :func:`~ichrt.runtime.session.run_layout`; on a
                GPU or with ``explain="hshap"``: physical cores).
            batch_size: slices per inference call.
            threshold: ``any`` probability that flags a study (default: the model's own).
            explain: one of :data:`EXPLAIN_METHODS`; ``cam`` keeps CAM maps of flagged slices;
                other methods get their explainer now, so that a missing extra or checkpoint
                fails before scoring (:class:`~ichrt.runtime.explain.ExplainError`).
            workers: decoding threads.
            require_sha256: the model file's required SHA-256 (several: comma-separated or a
                list); default ``$ICHRT_REQUIRE_SHA256``; another file raises
                :class:`~ichrt.runtime.session.ModelNotPinned`.
            max_pixels: largest Rows x Columns x frames read (default 4096 x 4096).
        """
        if explain not in EXPLAIN_METHODS:
            raise ValueError(f"explain must be one of {EXPLAIN_METHODS}, got {explain!r}")
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.limits = IngestLimits() if max_pixels is None else IngestLimits(max_pixels)
        if isinstance(model, LoadedModel):
            check_pin(model.sha256, required_pins(require_sha256), model.path)
        self.model = model if isinstance(model, LoadedModel) else load_model(
            model if model is not None else default_model_for(explain), provider=provider,
            threads=threads, require_sha256=require_sha256,
            streams=1 if explain == "hshap" else "auto")  # h-Shap runs the model slice by slice
        self.threshold = (self.model.contract.threshold("any") if threshold is None
                          else float(threshold))
        self.batch_size = batch_size
        self.explain = explain = resolve_explain(explain, self.model.contract)
        self.workers = workers
        #: The explainer of a method other than ``cam`` (for :func:`write_result`), else None.
        self.explainer: Explainer | None = (
            make_explainer(explain, self.model) if explain not in (*FREE_METHODS, "none")
            else None)

    def score(
        self, paths: str | Path | Iterable[str | Path], progress: Progress | None = None,
        exclude: Iterable[str | Path] = (),
    ) -> ScoreResult:
        """Score a file, a folder (recursively) or a list of both; ``progress(done, total)`` is
        called as each input file is accounted for; ``exclude``: files and folders left out
        of the walk (the output folder, see :func:`ichrt.runtime.outputs.internal_paths`).

        A study all of whose files were rejected is kept as a not-scored study."""
        files = iter_files(paths, skip=exclude)
        out = run_pipeline(
            files, self.model, batch_size=self.batch_size, threshold=self.threshold,
            keep_cam=self.explain == "cam", keep_lesion=self.explain == "lesion",
            workers=self.workers, progress=progress,
            limits=self.limits,
        )
        labels = tuple(self.model.contract.labels)
        scored = aggregate_studies(out.slices, labels, self.threshold,
                                   self.model.contract.study_model)
        studies = prioritize(scored + unscored_studies(
            out.rejected, (s.study_uid for s in scored), labels, first_order=len(out.slices)))
        return ScoreResult(
            studies=studies, slices=out.slices, rejected=out.rejected,
            model=ModelInfo.of(self.model), labels=labels, threshold=self.threshold,
            explain=self.explain, n_inputs=len(files),
        )


def score(
    paths: str | Path | Iterable[str | Path],
    model: str | Path | LoadedModel | None = None,
    progress: Progress | None = None,
    **options: Any,
) -> ScoreResult:
    """One-shot :meth:`Scorer.score`; ``options`` are :class:`Scorer`'s keyword arguments."""
    return Scorer(model, **options).score(paths, progress=progress)


#: Files :func:`write_result` always writes (headers only when empty).
OUTPUT_FILES = ("worklist.csv", "worklist.json", "slices.csv", "rejected.csv")
EXPLANATIONS_DIR = "explanations"
#: Flagged slices re-read (and, for methods other than cam, explained) together.
EXPLAIN_CHUNK = 16


#: Top-level entries of an output folder that runs write (others make the folder foreign).
OWNED_ENTRIES = (*OUTPUT_FILES, EXPLANATIONS_DIR, RUN_FILE)


def write_result(
    result: ScoreResult,
    out_dir: str | Path,
    show_phi: bool = False,
    explainer: Explainer | None = None,
    wait: bool = False,
) -> dict[str, Any]:
    """Write the worklist files (and explanations) into ``out_dir``; return worklist.json's content.

    All or nothing: the files are written beside ``out_dir`` and swapped into place at once,
    under the folder's lock (``wait``: wait for another run instead of failing), replacing the
    previous run's files, stale heat maps included; on a write error the previous results stay
    (:class:`~ichrt.runtime.outputs.OutputError` and subclasses).  ``run.json`` records the
    model and its SHA-256; the CSVs carry it in a ``model_sha256`` column.

    Explanations go to ``explanations/<study>/<slice>.{npy,png,json}`` for every slice whose
    ``any`` probability reached the threshold; methods other than ``cam`` re-read and re-window
    those slices and need ``explainer`` (:attr:`Scorer.explainer`).  Every name built from a UID
    goes through :func:`safe_name` and every path through :func:`inside`, so nothing lands
    outside ``out_dir``.
    """
    with OutputLock(out_dir, wait=wait):
        return publish(out_dir, lambda staging, final: _write_files(
            result, staging, final, show_phi, explainer), OWNED_ENTRIES,
            lambda document: _run_info(result, document))


def _write_files(result: ScoreResult, staging: Path, final: Path, show_phi: bool,
                 explainer: Explainer | None) -> dict[str, Any]:
    """Every file of a run, into ``staging``; paths in the document name ``final``."""
    paths = {name: inside(staging, name) for name in OUTPUT_FILES}
    document = result.to_dict(show_phi)
    shown = {name: str(final / name) for name in OUTPUT_FILES}
    if result.explain != "none":
        inside(staging, EXPLANATIONS_DIR).mkdir()
        shown[EXPLANATIONS_DIR] = str(final / EXPLANATIONS_DIR)
        document["explanations"] = [_moved(e, staging, final)
                                    for e in write_explanations(result, staging, explainer)]
    document["outputs"] = shown
    labels = result.labels
    sha = {"model_sha256": result.model.sha256}
    write_csv(paths["worklist.csv"], ({**row, **sha} for row in document["studies"]),
              [*worklist_fields(labels, show_phi), "model_sha256"])
    write_csv(paths["slices.csv"],
              ({**slice_record(s, labels, result.threshold, show_phi), **sha}
               for s in result.slices),
              [*slice_fields(labels, show_phi), "model_sha256"])
    write_csv(paths["rejected.csv"], document["rejected"], REJECTED_FIELDS)
    write_json(paths["worklist.json"], document)
    fsync_files(staging, OUTPUT_FILES)
    return document


def _moved(entry: dict[str, Any], staging: Path, final: Path) -> dict[str, Any]:
    """An explanation summary whose ``folder`` names the published place, not the staging one."""
    folder = entry.get("folder")
    if isinstance(folder, str) and Path(folder).is_relative_to(staging.resolve()):
        entry = {**entry, "folder": str(final / Path(folder).relative_to(staging.resolve()))}
    return entry


def _run_info(result: ScoreResult, document: dict[str, Any]) -> dict[str, Any]:
    """run.json: which model (name, SHA-256, pin) produced this folder, when, and the counts."""
    from datetime import datetime, timezone
    from importlib.metadata import PackageNotFoundError, version

    try:
        ichrt_version = version("ichrt")
    except PackageNotFoundError:
        ichrt_version = "unknown"
    return {"ichrt_version": ichrt_version,
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "model": document["model"], "threshold": result.threshold,
            "counts": document["counts"], "complete": True}


def write_explanations(
    result: ScoreResult, out: Path, explainer: Explainer | None = None
) -> list[dict[str, Any]]:
    """Heat maps of the slices at the threshold, with ``result.explain``'s method.

    ``cam`` uses the maps kept during scoring; other methods run ``explainer`` on re-read,
    re-windowed slices in batches.  A slice that cannot be re-read gets an entry with its
    ``error`` instead of files.
    """
    any_idx = result.labels.index("any")
    hot = [s for s in result.slices if s.probs[any_idx] >= result.threshold]
    if result.explain in FREE_METHODS:
        found = _kept_maps([s for s in hot if _free_map(s, result.explain) is not None],
                           result.explain)
    elif explainer is None or explainer.name != result.explain:
        raise ValueError(f"explanations by {result.explain!r} need its explainer "
                         "(Scorer.explainer)")
    else:
        found = _new_maps(hot, explainer)
    summaries: list[dict[str, Any]] = []
    for item, hu, heatmap, frame, seconds in found:
        if isinstance(hu, Rejected):
            summaries.append(_failed(item, hu))
            continue
        ident = item.identity
        folder = inside(out, EXPLANATIONS_DIR, safe_name(ident.study_uid))
        extra = {"study_instance_uid": ident.study_uid, "sop_instance_uid": ident.sop_uid,
                 "label": "any", "probability": float(item.probs[any_idx]), "seconds": seconds}
        summary = write_explanation(folder, ident.sop_uid, hu, heatmap, result.explain,
                                    extra=extra, frame=frame)
        summary["folder"] = str(folder)
        summaries.append(summary)
    return summaries


#: A flagged slice re-read for its explanation: its score, its HU pixels (or why it could not
#: be re-read), its map (over ``frame`` when one is given, else on the slice pixels) and the
#: seconds the map took.
Found = tuple[SliceScore, np.ndarray | Rejected, Any, Any, float]


def _kept_maps(hot: list[SliceScore], method: str) -> Iterator[Found]:
    """The maps kept during scoring (over each slice's framing box), with the re-read HU."""
    for item in hot:
        read = read_or_reject(item.identity.path)
        if isinstance(read, Rejected):
            yield item, read, None, None, 0.0
        else:
            yield item, read.hu, _free_map(item, method), item.box, 0.0


def _new_maps(hot: list[SliceScore], explainer: Explainer) -> Iterator[Found]:
    """``explainer``'s maps of the re-read, re-windowed slices, :data:`EXPLAIN_CHUNK` at a time."""
    by_path = {s.identity.path: s for s in hot}
    for batch in iter_batches(list(by_path), explainer.model.contract, EXPLAIN_CHUNK,
                              keep_hu=True):
        for rejected in batch.rejected:
            yield by_path[rejected.path], rejected, None, None, 0.0
        if not batch.identities:
            continue
        done = explain_slices(explainer, batch.tensor, batch.boxes, [h.shape for h in batch.hu])
        for ident, hu, e in zip(batch.identities, batch.hu, done):
            yield by_path[ident.path], hu, e.heatmap, None, e.seconds


def _free_map(item: SliceScore, method: str) -> Any:
    return item.lesion if method == "lesion" else item.cam


def _failed(item: SliceScore, rejected: Rejected) -> dict[str, Any]:
    ident = item.identity
    return {"study_instance_uid": ident.study_uid, "sop_instance_uid": ident.sop_uid,
            "error": f"cannot re-read the slice: {rejected.reason}"}
