"""DICOM files -> windowed model batches, through the runtime's own decode and windowing.

Calibration must see exactly the tensors the runtime will feed the model, so nothing here
re-implements preprocessing: files are decoded by the scoring pipeline's ``decode`` (the runtime
ingest, rejected files reported with their reason) and windowed by its ``window_slices`` (the
Numba windowing kernel, framed around the head when the contract says so). Batches are streamed,
so a large validation set never sits in memory as HU pixels.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
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
    """Yield model batches of ``files`` in input order; unreadable files go to ``rejected``."""
    from ichrt.runtime.pipeline import bounded_map, decode, window_slices

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    workers = workers or min(4, os.cpu_count() or 1)
    pending: list[Slice] = []

    def flush() -> Batch:
        tensor, _ = window_slices(pending, contract)
        batch = Batch(tensor, [s.identity for s in pending])
        pending.clear()
        return batch

    with ThreadPoolExecutor(workers, thread_name_prefix="ichrt-calib-decode") as pool:
        items = bounded_map(pool, decode, files, max(2 * batch_size, 2 * workers))
        for done, item in enumerate(items, start=1):
            if isinstance(item, Rejected):
                if rejected is not None:
                    rejected.append(item)
            else:
                pending.append(item)
            if progress is not None:
                progress(done, len(files))
            if len(pending) >= batch_size:
                yield flush()
        if pending:
            yield flush()


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
