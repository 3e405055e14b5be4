"""HU slices -> the model tensor, and DICOM files -> model batches: the one way every caller does it.

Scoring, explanation, calibration, evaluation, the probe, source evaluation and training all feed
the model through :func:`window_hu` (framing as the contract says, then the Numba windowing
kernel), so a model never sees a tensor made another way. Callers that start from files use
:func:`iter_batches`, which reads with :func:`ichrt.runtime.dicom.iter_read`, applies the
duplicate rule (:class:`~ichrt.runtime.slices.FirstCopies`) and accounts for every input file.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ichrt.runtime.contract import ModelContract
from ichrt.runtime.dicom import HUBuffer, IngestLimits, iter_read
from ichrt.runtime.framing import frame_boxes
from ichrt.runtime.slices import FirstCopies, Rejected, Slice, SliceIdentity
from ichrt.runtime.windowing import window_batch

#: HU pixels a batch may hold before it is windowed (32 slices of 512 x 512: 32 MiB of float32),
#: so that large images make small batches.
BATCH_PIXELS = 32 * 512 * 512
#: Files to a :class:`Slabs` slab, whatever the batch size: a batch never spans two slabs, so
#: this also caps a batch (at what :data:`BATCH_PIXELS` allows 512 x 512 slices), and bounds the
#: memory of a slab's tensor rows.
SLAB_FILES = 32


def window_hu(
    hus: Sequence[np.ndarray],
    contract: ModelContract,
    boxes: np.ndarray | None = None,
    slopes: np.ndarray | None = None,
    intercepts: np.ndarray | None = None,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The model tensor (N, C, S, S) of HU slices in their order, and the (N, 4) source boxes.

    Boxes frame the head (``contract.framing == "head"``) or centre the image, unless ``boxes``
    gives them (training jitters the framing box); ``slopes``/``intercepts`` (N,) rescale the
    pixels first (training simulates scanner calibration). Slices of different sizes are
    windowed in one kernel call per size. ``out``: a float32 C-contiguous (N, C, S, S) array
    to fill and return instead of a new one.
    """
    s = contract.input_size
    shape = (len(hus), contract.channels, s, s)
    tensor = out if out is not None else np.empty(shape, np.float32)
    if tensor.shape != shape:
        raise ValueError(f"out must have shape {shape}, got {tensor.shape}")
    used = np.empty((len(hus), 4), np.int64)
    by_shape: dict[tuple[int, int], list[int]] = {}
    for i, item in enumerate(hus):
        by_shape.setdefault(np.shape(item), []).append(i)
    for idx in by_shape.values():
        hu = stacked([hus[i] for i in idx])
        group = frame_boxes(hu, contract.framing) if boxes is None else np.asarray(
            boxes, np.int64)[idx]
        rescale = {"slopes": None if slopes is None else np.asarray(slopes, np.float64)[idx],
                   "intercepts": None if intercepts is None else np.asarray(
                       intercepts, np.float64)[idx]}
        if len(by_shape) == 1:
            window_batch(hu, contract, boxes=group, out=tensor, **rescale)
        else:
            tensor[idx] = window_batch(hu, contract, boxes=group, **rescale)
        used[idx] = group
    return tensor, used


def window_slices(slices: Sequence[Slice], contract: ModelContract
                  ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`window_hu` of ``slices``' pixels."""
    return window_hu([item.hu for item in slices], contract)


@dataclass
class Batch:
    """A model batch of slices and the input files accounted for with it.

    ``rejected``: files rejected since the previous batch (the last batch may hold only these).
    ``done``: input files accounted for so far, this batch included (for progress).
    ``hu``: the slices' HU pixels, only when asked for (explanations need them).
    """

    tensor: np.ndarray
    boxes: np.ndarray
    identities: list[SliceIdentity]
    rejected: list[Rejected] = field(default_factory=list)
    done: int = 0
    hu: list[np.ndarray] | None = None


class Slabs:
    """Room for consecutive input files, ``capacity`` files to a slab: their HU pixels and
    their rows of the model tensor (with their boxes).

    File ``i`` takes slot ``i % capacity`` of slab ``i // capacity`` (allocated on first use).
    The reader writes the file's HU into its HU slot and, right away while they are in the
    cache, windows them into its tensor row; a batch of one slab's consecutive slots is then
    a view of the slab, with nothing stacked or copied. One HU slab for many files rather than
    a fresh array per slice measured faster even with windowing per slice (``ichrt score``
    INT8: 1.53-1.55x the pure model time with it, 1.57-1.63x without). A file of another shape
    than its slab's first, with an unusual pixel type, or so large that a slab of them would
    hold more than :data:`BATCH_PIXELS` pixels, gets its own HU array (memory stays bounded as
    before). Slabs are never reused, so a batch's views stay valid after the readers move on.
    Thread-safe.
    """

    def __init__(self, capacity: int, contract: ModelContract) -> None:
        self.capacity = capacity
        self.contract = contract
        self._hu: dict[int, np.ndarray] = {}
        self._rows: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._lock = threading.Lock()

    def slab_of(self, index: int) -> int:
        return index // self.capacity

    def hu_buffer(self, index: int) -> HUBuffer:
        """Where file ``index`` writes its HU (see :data:`ichrt.runtime.dicom.HUBuffer`)."""
        return lambda shape: self._hu_slot(index, shape)

    def _hu_slot(self, index: int, shape: tuple[int, int]) -> np.ndarray | None:
        if self.capacity * shape[0] * shape[1] > BATCH_PIXELS:
            return None  # a slab would outgrow a batch's pixels: the file gets its own array
        k, pos = divmod(index, self.capacity)
        with self._lock:
            slab = self._hu.get(k)
            if slab is None:
                slab = self._hu[k] = np.empty((self.capacity, *shape), np.float32)
        return slab[pos] if slab.shape[1:] == tuple(shape) else None

    def rows(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Slab ``k``'s tensor (capacity, C, S, S) and boxes (capacity, 4)."""
        with self._lock:
            found = self._rows.get(k)
            if found is None:
                s = self.contract.input_size
                found = self._rows[k] = (
                    np.empty((self.capacity, self.contract.channels, s, s), np.float32),
                    np.empty((self.capacity, 4), np.int64))
        return found

    def window(self, index: int, item: Slice) -> Slice:
        """Window file ``index``'s slice into its tensor row (on the reader thread)."""
        k, pos = divmod(index, self.capacity)
        tensor, boxes = self.rows(k)
        _, box = window_hu([item.hu], self.contract, out=tensor[pos:pos + 1])
        boxes[pos] = box[0]
        return item

    def batch_rows(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """The tensor and boxes of files ``indices`` (one slab's): a view when consecutive."""
        k = self.slab_of(indices[0])
        tensor, boxes = self.rows(k)
        pos = [i - k * self.capacity for i in indices]
        if pos == list(range(pos[0], pos[0] + len(pos))):
            return tensor[pos[0]:pos[-1] + 1], boxes[pos[0]:pos[-1] + 1]
        return tensor[pos], boxes[pos]

    def release(self, before: int) -> None:
        """Forget the slabs before slab ``before`` (their memory goes with their last view)."""
        with self._lock:
            for table in (self._hu, self._rows):
                for k in [k for k in table if k < before]:
                    del table[k]


def stacked(hus: Sequence[np.ndarray]) -> np.ndarray:
    """(N, H, W) float32 of same-shape slices: the slab they are consecutive slots of (no
    copy), else a stacked copy."""
    first = hus[0]
    if len(hus) == 1 and first.dtype == np.float32 and first.flags.c_contiguous:
        return first[None]
    base = first.base
    if (isinstance(base, np.ndarray) and base.ndim == 3 and base.dtype == np.float32
            and base.flags.c_contiguous and base.shape[1:] == first.shape):
        slot = first.nbytes
        start, rest = divmod(_address(first) - _address(base), slot)
        if (not rest and start + len(hus) <= len(base) and all(
                h.base is base and _address(h) == _address(first) + i * slot
                for i, h in enumerate(hus))):
            return base[start:start + len(hus)]
    return np.stack([np.asarray(h, np.float32) for h in hus])


def _address(array: np.ndarray) -> int:
    return array.__array_interface__["data"][0]


def iter_batches(
    files: Sequence[str | Path],
    contract: ModelContract,
    batch_size: int = 16,
    workers: int | None = None,
    limits: IngestLimits | None = None,
    keep_hu: bool = False,
    kernel_threads: int | None = None,
) -> Iterator[Batch]:
    """Model batches of ``files`` in input order; every file is in one batch's slices or
    rejections.

    A batch holds at most ``batch_size`` (and :data:`SLAB_FILES`) slices and
    :data:`BATCH_PIXELS` HU pixels, all from one :class:`Slabs` slab (a rejected file leaves its slab's batch one short); each slice is
    windowed on its reader thread as soon as it is read (:meth:`Slabs.window`), and the HU
    pixels are released with the batch unless ``keep_hu``. ``workers``: reader threads (see
    :func:`ichrt.runtime.dicom.iter_read`); ``kernel_threads``: Numba threads each reader's
    windowing may use (None: as configured).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    copies = FirstCopies()
    slabs = Slabs(min(batch_size, SLAB_FILES), contract)
    slices: list[Slice] = []
    indices: list[int] = []
    rejected: list[Rejected] = []
    pixels = 0
    threads = threading.local()

    def prepare(index: int, item: Slice) -> Slice:
        if not getattr(threads, "set", False):
            threads.set = True
            if kernel_threads is not None:
                import numba

                numba.set_num_threads(min(kernel_threads, numba.get_num_threads()))
        return slabs.window(index, item)

    def flush(done: int) -> Batch:
        if indices:
            tensor, boxes = slabs.batch_rows(indices)
        else:
            tensor, boxes = window_slices([], contract)
        batch = Batch(tensor, boxes, [s.identity for s in slices], list(rejected), done,
                      [s.hu for s in slices] if keep_hu else None)
        slices.clear()
        indices.clear()
        rejected.clear()
        return batch

    reads = iter_read(files, workers, limits, hu_buffers=slabs.hu_buffer, prepare=prepare)
    for done, item in enumerate(reads, start=1):
        if isinstance(item, Slice):
            item = copies.check(item)
        if isinstance(item, Rejected):
            rejected.append(item)
            continue
        index = done - 1
        if indices and slabs.slab_of(index) != slabs.slab_of(indices[0]):
            yield flush(index)  # a batch stays within one slab
            pixels = 0
        slabs.release(slabs.slab_of(index))
        slices.append(item)
        indices.append(index)
        pixels += item.hu.size
        if len(slices) >= batch_size or pixels >= BATCH_PIXELS:
            yield flush(done)
            pixels = 0
    if slices or rejected:
        yield flush(len(files))
