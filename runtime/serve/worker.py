"""Study completion and scoring, in a worker thread (never in the network threads).

The loop: mark studies with nothing new for the quiet period as complete; take the complete study
that waited longest; score its spooled files with the same :class:`~ichrt.runtime.scorer.Scorer`
that ``ichrt score`` uses; write the SR and the Secondary Captures into the spool (durably); and
record the result with one outbox row per object and destination in one transaction.  Intake
goes on meanwhile (ONNX Runtime and the Numba kernel release the GIL).
"""

from __future__ import annotations

import json
import threading
import time
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from ichrt.runtime.serve.config import ServeConfig
from ichrt.runtime.serve.logs import log
from ichrt.runtime.serve.spool import Spool, uid_key, write_durably
from ichrt.runtime.serve.state import Job, Outgoing, State

NOTIFY_KIND = "notify"


def software_version() -> str:
    try:
        return f"ichrt {version('ichrt')}"
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "ichrt (unknown version)"


class Worker:
    """Scores complete studies one at a time; :meth:`run` is the thread's loop."""

    def __init__(self, config: ServeConfig, spool: Spool, state: State, scorer: Any) -> None:
        self.config = config
        self.spool = spool
        self.state = state
        self.scorer = scorer
        self.stop_event = threading.Event()
        self.busy = False
        self.scored = 0
        self.last_error: str | None = None

    def run(self) -> None:
        self.warm_up()
        while not self.stop_event.is_set():
            try:
                worked = self.step()
            except Exception as exc:  # noqa: BLE001 - the worker must live; logged with traceback
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.error("worker_error", exc_info=True, error=self.last_error[:300])
                worked = False
            if not worked:
                self.stop_event.wait(self.config.poll_s)

    def warm_up(self) -> None:
        """Compile the windowing kernel and run the model once, so that the first study is
        not slowed by start-up work."""
        import numpy as np

        from ichrt.runtime.batches import window_hu

        try:
            model = self.scorer.model
            tensor, _ = window_hu([np.full((64, 64), -1000.0, np.float32)], model.contract)
            model.run(tensor)
            _warm_result_writers()
        except Exception as exc:  # noqa: BLE001 - a warm-up problem shows again when scoring
            log.warning("warm_up_failed", error=str(exc)[:200])

    def step(self) -> bool:
        """Complete quiet studies and score one; True when a study was scored."""
        for study_uid in self.state.complete_quiet(self.config.quiet_period_s):
            log.info("study_complete", study=uid_key(study_uid))
        job = self.state.next_job()
        if job is None:
            return False
        self.busy = True
        try:
            self.score(job)
        finally:
            self.busy = False
        return True

    def score(self, job: Job) -> None:
        key = uid_key(job.study_uid)
        start = time.perf_counter()
        try:
            result = self.scorer.score(list(job.paths))
        except Exception as exc:  # noqa: BLE001 - any failure marks the study failed, with why
            log.error("scoring_failed", exc_info=True, study=key, version=job.version)
            self.state.fail_study(job, f"scoring failed: {type(exc).__name__}: {exc}")
            return
        studies = [s for s in result.studies if s.study_uid == job.study_uid and s.n_slices]
        if not studies:
            reasons = sorted({r.reason for r in result.rejected})[:3]
            self.state.fail_study(job, "no slice could be scored: " + "; ".join(reasons))
            log.warning("scoring_failed", study=key, version=job.version,
                        rejected=len(result.rejected))
            return
        study = studies[0]
        try:
            document, outgoing = self.make_results(job, study, result)
        except Exception as exc:  # noqa: BLE001 - an odd header must not loop the worker
            log.error("results_failed", exc_info=True, study=key, version=job.version)
            self.state.fail_study(job, f"results could not be made: {type(exc).__name__}: "
                                       f"{exc}")
            return
        seconds = time.perf_counter() - start
        document["seconds"] = round(seconds, 4)
        _, current = self.state.record_result(
            job, result.model.sha256, result.model.name, document, outgoing, seconds)
        self.scored += 1
        fields: dict[str, Any] = {
            "study": key, "version": job.version, "slices": study.n_slices,
            "rejected": len(result.rejected), "p_any": round(study.p_any, 4),
            "flagged": study.flagged, "seconds": round(seconds, 3), "current": current,
            "outgoing": len(outgoing) if current else 0,
        }
        if self.config.log_ids:
            fields["accession"] = study.accession_number
        log.info("study_scored", **fields)

    def make_results(self, job: Job, study: Any, result: Any) -> tuple[dict[str, Any],
                                                                        list[Outgoing]]:
        """The result document, the SR and SC files in the spool, and what to send where."""
        from pydicom import dcmread

        from ichrt.runtime.serve.results import (
            Finding,
            build_sc,
            build_sr,
            result_uids,
        )

        any_idx = result.labels.index("any")
        hot = sorted(
            (s for s in result.slices if s.identity.study_uid == job.study_uid
             and heat_map(s, result.explain) is not None
             and s.probs[any_idx] >= result.threshold),
            key=lambda s: -float(s.probs[any_idx]))
        hot = hot[: self.config.max_sc_images] if study.flagged else []
        uids = result_uids(job.study_uid, job.version, result.model.sha256, len(hot))
        volume = getattr(study, "volume_ml", None)
        finding = Finding(
            study_uid=job.study_uid, version=job.version, flagged=study.flagged,
            probs=dict(study.probs), threshold=result.threshold,
            key_slice_sop_uid=study.key_slice.sop_uid, n_slices=study.n_slices,
            model_name=result.model.name, model_version=software_version(),
            model_sha256=result.model.sha256,
            volume_ml=float(volume) if volume is not None else None,
        )
        key_ds = dcmread(study.key_slice.path, stop_before_pixels=True)
        objects = [(uids.sr_instance, "sr", build_sr(finding, key_ds, uids))]
        sc_uids = []
        for i, item in enumerate(hot):
            picture = self._picture(item, result.explain)
            if picture is None:
                continue
            ref = dcmread(item.identity.path, stop_before_pixels=True)
            sc = build_sc(ref, picture, uids, i, float(item.probs[any_idx]), result.explain)
            objects.append((uids.sc_instances[i], "sc", sc))
            sc_uids.append(uids.sc_instances[i])
        paths = {}
        for sop_uid, _, ds in objects:
            path = self.spool.result_path(job.study_uid, sop_uid)
            write_durably(path, [_encode(ds)], self.spool.temporary())
            paths[sop_uid] = str(path)
        document: dict[str, Any] = {
            "study_instance_uid": job.study_uid, "version": job.version,
            "accession_number": study.accession_number, "n_slices": study.n_slices,
            "n_rejected": len(result.rejected), "probs": finding.probs,
            "p_any": study.p_any, "flagged": study.flagged, "threshold": result.threshold,
            "key_slice_sop_instance_uid": study.key_slice.sop_uid,
            "model": {"name": finding.model_name, "version": finding.model_version,
                      "sha256": finding.model_sha256},
            "volume_ml": finding.volume_ml,
            "sr_sop_instance_uid": uids.sr_instance, "sc_sop_instance_uids": sc_uids,
        }
        outgoing = [Outgoing(dest.key, kind, sop_uid, paths[sop_uid])
                    for dest in self.config.destinations for sop_uid, kind, _ in objects]
        if self.config.notify.enabled and study.flagged:
            payload = {k: document[k] for k in (
                "study_instance_uid", "accession_number", "p_any", "flagged", "threshold",
                "key_slice_sop_instance_uid", "sr_sop_instance_uid", "volume_ml", "model")}
            payload["event"] = "ich_suspected"
            outgoing.append(Outgoing(self.config.notify.url, NOTIFY_KIND,
                                     f"{uids.sr_instance}:notify", "",
                                     json.dumps(payload, sort_keys=True)))
        return document, outgoing

    def _picture(self, item: Any, method: str) -> Any:
        from ichrt.runtime.dicom import read_or_reject
        from ichrt.runtime.serve.results import heatmap_picture
        from ichrt.runtime.slices import Slice

        read = read_or_reject(item.identity.path)
        if not isinstance(read, Slice):
            return None
        return heatmap_picture(read.hu, heat_map(item, method), item.box)


def heat_map(item: Any, method: str) -> Any:
    """The map kept during scoring: the lesion map of lesion-level models, else the CAM."""
    return getattr(item, "lesion", None) if method == "lesion" else item.cam


def _encode(ds: Any) -> bytes:
    """The DICOM file bytes of ``ds`` (preamble, file meta, data set)."""
    from io import BytesIO

    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _warm_result_writers() -> None:
    """Build a throw-away SR and SC: highdicom's imports and its tables of the standard take
    about half a second the first time, which would otherwise delay the first study's result."""
    import numpy as np
    from pydicom.dataset import Dataset

    from ichrt.runtime.serve.results import Finding, build_sc, build_sr, result_uids

    ref = Dataset()
    ref.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ref.StudyInstanceUID, ref.SeriesInstanceUID, ref.SOPInstanceUID = "1.2.3", "1.2.3.4", "1.2.3.5"
    ref.PatientID, ref.PatientName, ref.PatientBirthDate, ref.PatientSex = "", "", "", ""
    ref.StudyDate, ref.StudyTime, ref.StudyID, ref.AccessionNumber = "20000101", "000000", "", ""
    ref.ReferringPhysicianName, ref.Modality = "", "CT"
    uids = result_uids("1.2.3", 1, "0" * 64, 1)
    finding = Finding("1.2.3", 1, True, {"any": 1.0}, 0.5, "1.2.3.5", 1, "warm-up", "0", "0" * 64,
                      1.0)
    build_sr(finding, ref, uids)
    build_sc(ref, np.zeros((16, 16, 3), np.uint8), uids, 0, 1.0)
