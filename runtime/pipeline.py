"""Files -> scored slices, with decoding, windowing and inference overlapped.

Three stages run at once, joined by bounded queues so memory stays flat however many studies come:

1. **decode**: :func:`ichrt.runtime.dicom.iter_read` reads files on a thread pool, in input
   order, with a bounded number in flight.  A file that cannot be read becomes a
   :class:`Rejected` with its reason and never stops the others; so does a second file with the
   SOPInstanceUID of an earlier one (a copy would count twice in its study).
2. **window** (calling thread): slices fill a batch (at most ``batch_size`` slices and
   :data:`BATCH_PIXELS` pixels, so large images make small batches), which the Numba kernel
   turns into the model tensor (framed around the head when the contract says so); the HU
   pixels are then released.
3. **infer**: one worker thread runs ONNX Runtime batch by batch (it releases the GIL, so decoding
   goes on meanwhile); at most :data:`QUEUE_DEPTH` batches wait for it.

What is kept per slice is small: identity, calibrated probabilities, the framing box, and - only
for slices whose ``any`` probability reaches the threshold - the (h, w) class activation map.
Results come back in input order, whatever the batch composition.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ichrt.runtime.aggregate import SliceScore, calibrate
from ichrt.runtime.contract import ModelContract
from ichrt.runtime.dicom import IngestLimits, iter_read
from ichrt.runtime.explain.cam import cam_maps
from ichrt.runtime.framing import head_boxes
from ichrt.runtime.lesion import lesion_area_mm2, lesion_probabilities
from ichrt.runtime.session import LoadedModel
from ichrt.runtime.slices import Rejected, Slice, SliceIdentity
from ichrt.runtime.windowing import centred_boxes, window_batch

#: ``progress(done, total)``: called as each input file is accounted for.
Progress = Callable[[int, int], None]
#: Inference batches allowed to wait for the inference thread.
QUEUE_DEPTH = 2
#: HU pixels a batch may hold before it is windowed (32 slices of 512 x 512: 32 MiB of float32).
BATCH_PIXELS = 32 * 512 * 512


@dataclass
class PipelineOutput:
    """Every input file ends up in exactly one of the two lists (a slice or a rejection)."""

    slices: list[SliceScore] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)


def window_slices(slices: Sequence[Slice], contract: ModelContract) -> tuple[np.ndarray, np.ndarray]:
    """The model tensor (N, C, S, S) of ``slices`` in their order, and the (N, 4) boxes used."""
    return window_hu([item.hu for item in slices], contract)


def window_hu(hus: Sequence[np.ndarray], contract: ModelContract) -> tuple[np.ndarray, np.ndarray]:
    """The model tensor (N, C, S, S) of HU slices in their order, and the (N, 4) boxes used.

    Slices of different sizes are windowed in one kernel call per size.
    """
    s = contract.input_size
    tensor = np.empty((len(hus), contract.channels, s, s), np.float32)
    boxes = np.empty((len(hus), 4), np.int64)
    by_shape: dict[tuple[int, int], list[int]] = {}
    for i, item in enumerate(hus):
        by_shape.setdefault(np.shape(item), []).append(i)
    start = 0
    order = []
    for shape, idx in by_shape.items():
        hu = np.stack([hus[i] for i in idx])
        if contract.framing == "head":
            group_boxes = np.asarray(head_boxes(hu), np.int64)
        else:
            group_boxes = centred_boxes(len(idx), *shape).astype(np.int64)
        stop = start + len(idx)
        window_batch(hu, contract, boxes=group_boxes, out=tensor[start:stop])
        boxes[start:stop] = group_boxes
        order.extend(idx)
        start = stop
    restore = np.argsort(np.asarray(order))
    if np.array_equal(restore, np.arange(len(hus))):
        return tensor, boxes
    return tensor[restore], boxes[restore]


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
    outputs = ("logits",) + (("features",) if keep_cam else ()) + (("lesion",) if dense else ())
    out = model.run(tensor, outputs)
    probs = calibrate(out["logits"], contract)
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
        workers: decoding threads.  Default on CPU: one, because the model is the bottleneck
            and already uses every physical core (a slice costs ~1.5 ms of CPU to decode against
            ~20 ms to infer with a ResNet-18 at 224 px), and more readers only preempt its
            threads; on a GPU: :func:`ichrt.runtime.dicom.default_workers`, to keep it fed.
        limits: what one input file may make the reader allocate (default: 4096 x 4096 pixels).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    keep_cam = keep_cam and model.contract.cam_weights is not None
    result = PipelineOutput()
    first_path: dict[str, str] = {}
    total = len(files)
    pending: deque[Future] = deque()

    def collect(future: Future) -> None:
        result.slices.extend(future.result())

    with ThreadPoolExecutor(1, thread_name_prefix="ichrt-infer") as infer_pool:
        batch: list[Slice] = []

        def flush() -> None:
            tensor, boxes = window_slices(batch, model.contract)
            meta = [item.identity for item in batch]
            batch.clear()  # release the HU pixels before the next batch is decoded
            while len(pending) >= QUEUE_DEPTH:
                collect(pending.popleft())
            pending.append(infer_pool.submit(
                infer_batch, model, tensor, meta, boxes, threshold, keep_cam, keep_lesion))

        readers = workers or (None if model.on_gpu else 1)
        pixels = 0
        for done, item in enumerate(iter_read(files, readers, limits), start=1):
            if isinstance(item, Slice):
                item = _unique(item, first_path)
            if isinstance(item, Rejected):
                result.rejected.append(item)
            else:
                batch.append(item)
                pixels += item.hu.size
                if len(batch) >= batch_size or pixels >= BATCH_PIXELS:
                    flush()
                    pixels = 0
            if progress is not None:
                progress(done, total)
        if batch:
            flush()
        while pending:
            collect(pending.popleft())
    return result


def _unique(item: Slice, first_path: dict[str, str]) -> Slice | Rejected:
    """``item``, or a rejection when an earlier file had the same SOPInstanceUID."""
    first = first_path.setdefault(item.identity.sop_uid, item.identity.path)
    if first == item.identity.path:
        return item
    return Rejected.duplicate(item.identity, first)
