"""DICOM files or in-memory HU slices -> windowed model batches, through the runtime's own path.

Calibration must see exactly the tensors the runtime will feed the model, so nothing here
re-implements preprocessing: files go through :func:`ichrt.runtime.batches.iter_batches` (the
runtime ingest on a bounded thread pool, its duplicate-SOPInstanceUID rule, rejected files with
their reason, then :func:`~ichrt.runtime.batches.window_hu`), and in-memory HU slices straight
through :func:`~ichrt.runtime.batches.window_hu`. Batches are streamed, so a large validation
set never sits in memory as HU pixels.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ichrt.runtime.contract import ModelContract
from ichrt.runtime.slices import Rejected

if TYPE_CHECKING:
    from ichrt.runtime.batches import Batch

#: ``progress(done, total)``: called as input files are accounted for.
Progress = Callable[[int, int], None]


def windowed_batches(
    files: Sequence[Path],
    contract: ModelContract,
    batch_size: int = 16,
    rejected: list[Rejected] | None = None,
    workers: int | None = None,
    progress: Progress | None = None,
) -> Iterator[Batch]:
    """Model batches (``tensor``, ``identities``) of ``files`` in input order.

    Unreadable files, and repeats of an already seen SOPInstanceUID (which would count one
    slice twice in a metric), go to ``rejected`` with their reason.
    """
    from ichrt.runtime.batches import iter_batches

    for batch in iter_batches(files, contract, batch_size, workers):
        if rejected is not None:
            rejected.extend(batch.rejected)
        if progress is not None:
            progress(batch.done, len(files))
        if batch.identities:
            yield batch


def hu_batches(
    slices_hu: Sequence[np.ndarray], contract: ModelContract, batch_size: int = 16
) -> Iterator[np.ndarray]:
    """Model batches of in-memory HU slices (e.g. phantoms from ``ichrt.runtime.synth``)."""
    from ichrt.runtime.batches import window_hu

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, len(slices_hu), batch_size):
        yield window_hu(slices_hu[start:start + batch_size], contract)[0]
