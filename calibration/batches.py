"""DICOM files -> windowed model batches, through the runtime's own decode and windowing.

Calibration must see exactly the tensors the runtime will feed the model, so nothing here
re-implements preprocessing: files are read by the runtime ingest's ``iter_read`` (a bounded
thread pool; rejected files reported with their reason) and windowed by the scoring pipeline's
``window_slices`` (the Numba kernel, framed around the head when the contract says so). Batches are streamed,
so a large validation set never sits in memory as HU pixels.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ichrt.runtime.contract import ModelContract
from ichrt.runtime.slices import Rejected, Slice, SliceIdentity

#: ``progress(done, total)``: called as each input file is accounted for.
Progress = Callable[[int, int], None]


@dataclass
class Batch:
    """One model batch and who its slices are."""

    tensor: np.ndarray
    identities: list[SliceIdentity]


def windowed_batches(
    files: Sequence[Path],
    contract: ModelContract,
    batch_size: int = 16,
    rejected: list[Rejected] | None = None,
    workers: int | None = None,
    progress: Progress | None = None,
) -> Iterator[Batch]:
    """Yield model batches of ``files`` in input order.

    Unreadable files, and repeats of an already seen SOPInstanceUID (which would count one
    slice twice in a metric), go to ``rejected`` with their reason.
    """
    from ichrt.runtime.dicom import iter_read
    from ichrt.runtime.pipeline import window_slices

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    pending: list[Slice] = []
    seen: dict[str, str] = {}
    for done, item in enumerate(iter_read(files, workers), start=1):
        if isinstance(item, Slice):
            first = seen.setdefault(item.identity.sop_uid, item.identity.path)
            if first != item.identity.path:
                item = Rejected.of(item.identity.path, f"duplicate SOPInstanceUID (as {first})")
        if isinstance(item, Rejected):
            if rejected is not None:
                rejected.append(item)
        else:
            pending.append(item)
        if progress is not None:
            progress(done, len(files))
        if len(pending) >= batch_size:
            yield Batch(window_slices(pending, contract)[0], [s.identity for s in pending])
            pending = []
    if pending:
        yield Batch(window_slices(pending, contract)[0], [s.identity for s in pending])


def hu_batches(
    slices_hu: Sequence[np.ndarray], contract: ModelContract, batch_size: int = 16
) -> Iterator[np.ndarray]:
    """Model batches of in-memory HU slices (e.g. phantoms from ``ichrt.runtime.synth``)."""
    from ichrt.runtime.pipeline import window_slices

    for start in range(0, len(slices_hu), batch_size):
        chunk = [
            Slice(identity=SliceIdentity(path="", study_uid="", series_uid="", sop_uid=""),
                  hu=np.asarray(hu, np.float32))
            for hu in slices_hu[start:start + batch_size]
        ]
        yield window_slices(chunk, contract)[0]
