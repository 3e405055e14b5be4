"""Files -> scored slices, with decoding, windowing and inference overlapped.

Three stages run at once, joined by bounded queues so memory stays flat however many studies come:

1. **read and window** (reader threads, :func:`reader_threads`):
   :func:`ichrt.runtime.batches.iter_batches` reads files with
   :func:`ichrt.runtime.dicom.iter_read`, in input order, with a bounded number in flight, and
   windows each slice into its row of the batch tensor right after reading it, while its
   pixels are in the cache.  A file that cannot be read becomes a :class:`Rejected` with its
   reason and never stops the others; so does a second file with the SOPInstanceUID of an
   earlier one (a copy would count twice in its study).
2. **batch** (calling thread): consecutive rows make a batch (a view, nothing copied); the HU
   pixels are released with it.
3. **infer**: one worker thread runs ONNX Runtime batch by batch (it releases the GIL, so decoding
   goes on meanwhile); at most :data:`QUEUE_DEPTH` batches wait for it.

What is kept per slice is small: identity, calibrated probabilities, the framing box, and - only
for slices whose ``any`` probability reaches the threshold - the (h, w) class activation map.
Results come back in input order, whatever the batch composition.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ichrt.runtime.aggregate import SliceScore, calibrated_probabilities
from ichrt.runtime.batches import iter_batches
from ichrt.runtime.contract import ModelContract
from ichrt.runtime.dicom import IngestLimits, default_workers
from ichrt.runtime.explain.cam import cam_maps
from ichrt.runtime.lesion import lesion_area_mm2, lesion_probabilities
from ichrt.runtime.session import LoadedModel
from ichrt.runtime.slices import Rejected, SliceIdentity

#: ``progress(done, total)``: called as each input file is accounted for.
Progress = Callable[[int, int], None]
#: Inference batches allowed to wait for the inference thread.
QUEUE_DEPTH = 2


@dataclass
class PipelineOutput:
    """Every input file ends up in exactly one of the two lists (a slice or a rejection)."""

    slices: list[SliceScore] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)


def scoring_outputs(contract: ModelContract, keep_cam: bool = False) -> tuple[str, ...]:
    """The model outputs scoring fetches: logits, features for CAM maps, the lesion map."""
    dense = contract.lesion_stride is not None
    return ("logits",) + (("features",) if keep_cam else ()) + (("lesion",) if dense else ())


def infer_batch(
    model: LoadedModel,
    tensor: np.ndarray,
    identities: list[SliceIdentity],
    boxes: np.ndarray,
    threshold: float,
    keep_cam: bool,
    keep_lesion: bool = True,
) -> list[SliceScore]:
    """Run one batch and keep what the worklist needs (CAM only for slices at the threshold)."""
    contract = model.contract
    dense = contract.lesion_stride is not None
    out = model.run(tensor, scoring_outputs(contract, keep_cam))
    probs = calibrated_probabilities(out["logits"], contract)
    hot = np.flatnonzero(probs[:, contract.labels.index("any")] >= threshold)
    cams: dict[int, np.ndarray] = {}
    if keep_cam and hot.size:
        maps = cam_maps(out["features"][hot], contract, label="any")
        cams = {int(i): np.array(m, np.float32) for i, m in zip(hot, maps)}
    lesion = lesion_probabilities(out["lesion"]) if dense else None
    keep = set(hot.tolist()) if keep_lesion else set()
    scores = []
    for i, meta in enumerate(identities):
        box = tuple(int(v) for v in boxes[i])
        scores.append(SliceScore(
            identity=meta, probs=probs[i], box=box, cam=cams.get(i),
            lesion=lesion[i].copy() if lesion is not None and i in keep else None,
            lesion_mm2=(lesion_area_mm2(lesion[i], box, meta.pixel_spacing)
                        if lesion is not None else None)))
    return scores


def run_pipeline(
    files: Sequence[Path],
    model: LoadedModel,
    batch_size: int = 16,
    threshold: float = 0.5,
    keep_cam: bool = True,
    workers: int | None = None,
    keep_lesion: bool = True,
    progress: Progress | None = None,
    limits: IngestLimits | None = None,
) -> PipelineOutput:
    """Score ``files`` with ``model``; every file ends up scored or rejected.

    Args:
        batch_size: slices per inference call.
        threshold: ``any`` probability at which a slice's CAM is kept.
        keep_cam: compute CAM maps (needs ``cam_weights`` in the contract).
        keep_lesion: keep the lesion maps of slices at the threshold (lesion-level models; the
            bleeding area of every slice is measured either way).
        workers: reader threads [default: :func:`reader_threads`].
        limits: what one input file may make the reader allocate (default: 4096 x 4096 pixels).
    """
    keep_cam = keep_cam and model.contract.cam_weights is not None
    result = PipelineOutput()
    total = len(files)
    pending: deque[Future] = deque()
    readers = workers or reader_threads(model.on_gpu)
    # On a CPU the model keeps every core busy: a parallel windowing call would only add
    # thread wake-ups and contention, so each reader windows on its own thread.
    kernel_threads = None if model.on_gpu else 1
    streams = max(1, model.streams)
    with ThreadPoolExecutor(streams, thread_name_prefix="ichrt-infer") as infer_pool:
        for batch in iter_batches(files, model.contract, batch_size, readers, limits,
                                  kernel_threads=kernel_threads):
            result.rejected.extend(batch.rejected)
            if batch.identities:
                while len(pending) >= QUEUE_DEPTH + streams - 1:
                    result.slices.extend(pending.popleft().result())
                pending.append(infer_pool.submit(
                    infer_batch, model, batch.tensor, batch.identities, batch.boxes, threshold,
                    keep_cam, keep_lesion))
            if progress is not None:
                progress(batch.done, total)
        while pending:
            result.slices.extend(pending.popleft().result())
    return result


def reader_threads(on_gpu: bool = False, cpus: int | None = None) -> int:
    """Readers that keep the model fed without starving it: on a CPU, half the cores (1 on 2-3
    cores, up to 8); with a GPU, :func:`ichrt.runtime.dicom.default_workers` (the CPU is theirs).

    What a slice costs the CPU (2-core x86; ``benchmarks/bench_read.py``, ``ichrt bench``): a
    plain one ~0.35 ms to read; a compressed one ~2 ms on its reader plus 3-5 ms of decoding
    (JPEG Lossless, gdcm) in the reader's worker process, which takes ~0.4 s to start; the model
    3.2 core-ms (INT8) to 8.8 core-ms (FP32). With compressed input decoding needs 40-70 % of
    the CPU, so from 4 cores half of them read (several readers decode in processes of their
    own); plain input starts no process, and idle reader threads cost nothing. On 2 cores one
    reader, decoding in its own thread while ONNX Runtime (which releases the GIL) runs the
    model, measured best: a 240-slice JPEG Lossless series scored at 5.9 ms/slice (INT8; FP32
    8.3) with 1 reader against 9.2 (FP32 12.1) with 2, whose workers' start and decoding contend
    with the model for the two cores; plain slices 2.4 either way (FP32 5.2 against 5.1).
    """
    if on_gpu:
        return default_workers()
    cpus = cpus or os.cpu_count() or 1
    return max(1, min(8, cpus // 2))
