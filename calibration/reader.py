"""A ``CalibrationDataReader`` that feeds onnxruntime's quantizer the runtime's own tensors.

``onnxruntime.quantization.quantize_static`` pulls calibration inputs through ``get_next()``: each
call returns one ``{input name: batch}`` dict, and ``None`` once the data are exhausted. The
quantizer knows nothing about DICOM; this reader turns files (or in-memory phantom slices) into
windowed batches with :mod:`ichrt.calibration.batches`, and caches the tensors of its first pass so
that ``rewind()`` can replay the same calibration set for another method (MinMax, Entropy,
Percentile) without decoding again. ``__len__`` and ``set_range`` serve onnxruntime's strided
calibration (``CalibStridedMinMax``), which collects a few batches at a time so that Entropy and
Percentile calibration do not hold every intermediate tensor of every slice in memory at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from ichrt.calibration.batches import Progress, hu_batches, windowed_batches
from ichrt.runtime.contract import ModelContract
from ichrt.runtime.slices import Rejected

INPUT_NAME = "image"


def sample_files(files: Sequence[Path], limit: int | None, seed: int = 0) -> list[Path]:
    """At most ``limit`` of ``files``, drawn at random (reproducibly) and kept in input order."""
    files = list(files)
    if limit is None or limit >= len(files):
        return files
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(len(files), size=limit, replace=False))
    return [files[i] for i in picked]


class SliceCalibrationReader(CalibrationDataReader):
    """Calibration batches for ``quantize_static`` (see the module docstring)."""

    def __init__(self, batches: Iterable[np.ndarray], input_name: str = INPUT_NAME) -> None:
        self._source: Iterator[np.ndarray] | None = iter(batches)
        self._cache: list[np.ndarray] = []
        self._replay: Iterator[np.ndarray] | None = None
        self.input_name = input_name

    @classmethod
    def from_files(
        cls,
        files: Sequence[Path],
        contract: ModelContract,
        batch_size: int = 8,
        limit: int | None = None,
        seed: int = 0,
        rejected: list[Rejected] | None = None,
        progress: Progress | None = None,
    ) -> SliceCalibrationReader:
        """Read DICOM ``files`` (at most ``limit``, sampled with ``seed``) through the runtime."""
        chosen = sample_files(files, limit, seed)
        batches = windowed_batches(chosen, contract, batch_size, rejected=rejected,
                                   progress=progress)
        return cls(b.tensor for b in batches)

    @classmethod
    def from_hu(
        cls, slices_hu: Sequence[np.ndarray], contract: ModelContract, batch_size: int = 8
    ) -> SliceCalibrationReader:
        """Window in-memory HU slices (e.g. ``generate_study(...).hu``)."""
        return cls(hu_batches(slices_hu, contract, batch_size))

    def get_next(self) -> dict[str, np.ndarray] | None:
        """The next ``{input name: (N, C, S, S) float32}``, or None when the set is exhausted."""
        if self._replay is not None:
            batch = next(self._replay, None)
        elif self._source is not None:
            batch = next(self._source, None)
            if batch is None:
                self._source = None
            else:
                self._cache.append(batch)
        else:
            batch = None
        return None if batch is None else {self.input_name: batch}

    def rewind(self) -> None:
        """Start again from the first batch."""
        self._materialize()
        self._replay = iter(self._cache)

    def set_range(self, start_index: int, end_index: int) -> None:
        """Serve only batches ``[start_index, end_index)`` (onnxruntime's strided calibration)."""
        self._materialize()
        self._replay = iter(self._cache[start_index:end_index])

    def __len__(self) -> int:
        """Number of batches (reads the whole set on first use)."""
        self._materialize()
        return len(self._cache)

    def _materialize(self) -> None:
        if self._source is not None:
            self._cache.extend(self._source)
            self._source = None

    @property
    def slices(self) -> int:
        """Slices read so far (all of them once a pass has completed)."""
        return sum(len(b) for b in self._cache)

