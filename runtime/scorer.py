"""The scoring API: DICOM paths in, a prioritized worklist out (no file writing).

>>> from ichrt.runtime.scorer import Scorer
>>> result = Scorer().score(["/data/incoming"])          # doctest: +SKIP
>>> [s.study_uid for s in result.studies if s.flagged]   # doctest: +SKIP

:class:`Scorer` loads the model once and can score many batches of paths; :func:`score` is the
one-shot form.  Writing the worklist files is a separate step (:func:`write_result`), so the API
can be used and tested without touching the disk.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ichrt.runtime.aggregate import SliceScore, StudyScore, aggregate_studies
from ichrt.runtime.dicom import iter_files, read_or_reject
from ichrt.runtime.explain import Explainer, explain_slices, make_explainer, write_explanation
from ichrt.runtime.paths import inside, safe_name
from ichrt.runtime.pipeline import Progress, run_pipeline, window_slices
from ichrt.runtime.session import LoadedModel, load_model
from ichrt.runtime.slices import Rejected, Slice
from ichrt.runtime.worklist import (
    prioritize,
    rejected_records,
    slice_fields,
    slice_record,
    worklist_fields,
    worklist_records,
    write_csv,
    write_json,
)

#: Explanation methods ``--explain`` accepts; ``cam`` is free during scoring.
EXPLAIN_METHODS = ("cam", "gradcam", "gradcampp", "hshap", "none")


@dataclass(frozen=True)
class ModelInfo:
    """What the worklist says about the model that produced it."""

    name: str
    path: str
    sha256: str
    arch: str
    providers: tuple[str, ...]

    @classmethod
    def of(cls, model: LoadedModel) -> ModelInfo:
        c = model.contract
        return cls(c.name, str(model.path), model.sha256, c.arch, tuple(model.providers))

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
                      "providers": list(self.model.providers)},
            "labels": list(self.labels),
            "threshold": self.threshold,
            "counts": {"inputs": self.n_inputs, "scored_slices": len(self.slices),
                       "rejected": len(self.rejected), "studies": len(self.studies),
                       "flagged": len(self.flagged)},
            "studies": worklist_records(self.studies, show_phi),
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
        explain: str = "cam",
        workers: int | None = None,
    ) -> None:
        """
        Args:
            model: an ONNX file, an already loaded model, or None for the shipped default.
            provider: ``auto``, ``cpu``, ``cuda`` or ``tensorrt``.
            threads: ONNX Runtime intra-op threads (default: physical cores).
            batch_size: slices per inference call.
            threshold: ``any`` probability that flags a study (default: the model's own).
            explain: one of :data:`EXPLAIN_METHODS`; ``cam`` keeps CAM maps of flagged slices;
                other methods get their explainer now, so that a missing extra or checkpoint
                fails before scoring (:class:`~ichrt.runtime.explain.ExplainError`).
            workers: decoding threads.
        """
        if explain not in EXPLAIN_METHODS:
            raise ValueError(f"explain must be one of {EXPLAIN_METHODS}, got {explain!r}")
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model if isinstance(model, LoadedModel) else load_model(
            model, provider=provider, threads=threads)
        self.threshold = (self.model.contract.threshold("any") if threshold is None
                          else float(threshold))
        self.batch_size = batch_size
        self.explain = explain
        self.workers = workers
        #: The explainer of a method other than ``cam`` (for :func:`write_result`), else None.
        self.explainer: Explainer | None = (
            make_explainer(explain, self.model) if explain not in ("cam", "none") else None)

    def score(
        self, paths: str | Path | Iterable[str | Path], progress: Progress | None = None
    ) -> ScoreResult:
        """Score a file, a folder (recursively) or a list of both; ``progress(done, total)`` is
        called as each input file is accounted for."""
        files = iter_files(paths)
        out = run_pipeline(
            files, self.model, batch_size=self.batch_size, threshold=self.threshold,
            keep_cam=self.explain == "cam", workers=self.workers, progress=progress,
        )
        labels = tuple(self.model.contract.labels)
        studies = prioritize(aggregate_studies(out.slices, labels, self.threshold))
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


def write_result(
    result: ScoreResult,
    out_dir: str | Path,
    show_phi: bool = False,
    explainer: Explainer | None = None,
) -> dict[str, Any]:
    """Write the worklist files (and explanations) into ``out_dir``; return worklist.json's content.

    Explanations go to ``explanations/<study>/<slice>.{npy,png,json}`` for every slice whose
    ``any`` probability reached the threshold; methods other than ``cam`` re-read and re-window
    those slices and need ``explainer`` (:attr:`Scorer.explainer`).  Every name built from a UID
    goes through :func:`safe_name` and every path through :func:`inside`, so nothing lands
    outside ``out_dir``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: inside(out, name) for name in OUTPUT_FILES}
    document = result.to_dict(show_phi)
    if result.explain != "none":
        paths[EXPLANATIONS_DIR] = inside(out, EXPLANATIONS_DIR)
        paths[EXPLANATIONS_DIR].mkdir(exist_ok=True)
        document["explanations"] = write_explanations(result, out, explainer)
    document["outputs"] = {name: str(p) for name, p in paths.items()}
    labels = result.labels
    write_csv(paths["worklist.csv"], document["studies"], worklist_fields(labels, show_phi))
    write_csv(paths["slices.csv"],
              (slice_record(s, labels, result.threshold, show_phi) for s in result.slices),
              slice_fields(labels, show_phi))
    write_csv(paths["rejected.csv"], document["rejected"], ("path", "reason"))
    write_json(paths["worklist.json"], document)
    return document


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
    if result.explain == "cam":
        hot = [s for s in hot if s.cam is not None]
    elif explainer is None or explainer.name != result.explain:
        raise ValueError(f"explanations by {result.explain!r} need its explainer "
                         "(Scorer.explainer)")
    summaries: list[dict[str, Any]] = []
    for start in range(0, len(hot), EXPLAIN_CHUNK):
        chunk = hot[start:start + EXPLAIN_CHUNK]
        read = [read_or_reject(s.identity.path) for s in chunk]
        ok = [(s, r) for s, r in zip(chunk, read) if isinstance(r, Slice)]
        summaries += [_failed(s, r) for s, r in zip(chunk, read) if isinstance(r, Rejected)]
        if not ok:
            continue
        if result.explain == "cam":  # (map over the framing box, seconds: free during scoring)
            maps = [(s.cam, s.box, 0.0) for s, _ in ok]
        else:
            tensors, boxes = window_slices([r for _, r in ok], explainer.model.contract)
            done = explain_slices(explainer, tensors, boxes, [r.hu.shape for _, r in ok])
            maps = [(e.heatmap, None, e.seconds) for e in done]
        for (item, sl), (heatmap, frame, seconds) in zip(ok, maps):
            ident = item.identity
            folder = inside(out, EXPLANATIONS_DIR, safe_name(ident.study_uid))
            extra = {"study_instance_uid": ident.study_uid, "sop_instance_uid": ident.sop_uid,
                     "label": "any", "probability": float(item.probs[any_idx]),
                     "seconds": seconds}
            summary = write_explanation(folder, ident.sop_uid, sl.hu, heatmap, result.explain,
                                        extra=extra, frame=frame)
            summary["folder"] = str(folder)
            summaries.append(summary)
    return summaries


def _failed(item: SliceScore, rejected: Rejected) -> dict[str, Any]:
    ident = item.identity
    return {"study_instance_uid": ident.study_uid, "sop_instance_uid": ident.sop_uid,
            "error": f"cannot re-read the slice: {rejected.reason}"}
