"""Samples -> model tensors for training, through the runtime's own preprocessing.

:class:`SliceStore` packs samples compactly (HU as int16, region masks bit-packed).
:class:`SliceDataset` turns a stored slice into the model input with
:func:`ichrt.runtime.batches.window_hu`, the very function that scoring runs, so training and
inference cannot drift; augmentation wraps around it (see :mod:`ichrt.export.augment`): only its
jittered framing box needs the windowing kernel called with a given box (``window_hu`` frames by
the contract). :class:`EpochSampler` draws a reproducible, optionally class-balanced
order per epoch together with one augmentation seed per draw, and can skip the draws already
consumed when a run resumes mid-epoch.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ichrt.export.appearance import AppearanceConfig, appearance
from ichrt.export.augment import (
    AugmentConfig,
    TensorParams,
    geometric,
    hu_calibration,
    hu_side,
    intensity,
    jitter_box,
)
from ichrt.export.insertion import DonorBank, InsertionConfig
from ichrt.export.samples import Sample
from ichrt.runtime.batches import window_hu
from ichrt.runtime.contract import LABELS, ModelContract
from ichrt.runtime.framing import frame_boxes

BALANCE_MODES = ("none", "class", "source")
#: :attr:`SliceStore.region_kind` values: no region, a pixel mask, rasterized (weak) boxes.
NO_REGION, MASK, BOXES = 0, 1, 2


def _region_of(sample: Sample) -> np.ndarray | None:
    """The sample's lesion region: its mask, else its rasterized boxes, else None."""
    if sample.mask is not None:
        return np.asarray(sample.mask, bool)
    if not sample.boxes:
        return None
    region = np.zeros(sample.hu.shape, bool)
    for y0, x0, y1, x1, _ in sample.boxes:
        region[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)] = True
    return region


class Chunks:
    """Append-only storage of 1-D arrays in flat tensors of a fixed size (the last one trimmed).

    Slices are copied in as they are loaded, so no list of per-slice arrays (and no heap
    fragmentation from one) ever exists, and loader workers can map the tensors from shared
    memory instead of receiving copies (:meth:`SliceStore.share_memory`).
    """

    #: Elements per chunk (128 MiB of int16).
    SIZE = 1 << 26

    def __init__(self, dtype: torch.dtype, size: int = SIZE) -> None:
        self.dtype, self.size = dtype, size
        self.tensors: list[torch.Tensor] = []
        self.where: list[tuple[int, int, int]] = []  # (chunk, start, length) per array
        self._used = 0

    def append(self, array: np.ndarray) -> None:
        n = int(array.size)
        if not self.tensors or self._used + n > len(self.tensors[-1]):
            self.tensors.append(torch.empty(max(self.size, n), dtype=self.dtype))
            self._used = 0
        self.tensors[-1].numpy()[self._used:self._used + n] = array.ravel()
        self.where.append((len(self.tensors) - 1, self._used, n))
        self._used += n

    def finish(self) -> Chunks:
        """Trim the last chunk to what it holds."""
        if self.tensors and self._used < len(self.tensors[-1]):
            self.tensors[-1] = self.tensors[-1][: self._used].clone()
        return self

    def get(self, k: int) -> np.ndarray:
        """Array ``k`` as a flat view."""
        chunk, start, n = self.where[k]
        return self.tensors[chunk].numpy()[start:start + n]


@dataclass
class Pack:
    """The pixels (int16 HU) and bit-packed lesion regions of one loaded data source."""

    pixels: Chunks
    shapes: np.ndarray
    regions: Chunks

    def hu(self, r: int) -> np.ndarray:
        h, w = self.shapes[r]
        return self.pixels.get(r).reshape(h, w)

    def region(self, r: int) -> np.ndarray | None:
        bits = self.regions.get(r)
        if bits.size == 0:
            return None
        h, w = self.shapes[r]
        return np.unpackbits(bits, count=int(h * w)).reshape(h, w).astype(bool)


@dataclass
class SliceStore:
    """Training slices in compact form: row ``i`` is row ``row[i]`` of ``packs[pack[i]]``.

    Subsets and concatenations share the packs (no pixel is copied).
    """

    packs: list[Pack] = field(default_factory=list)
    pack: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    row: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0, len(LABELS)), np.float32))
    groups: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    #: Where a row's region came from: :data:`NO_REGION`, :data:`MASK` or :data:`BOXES`.
    region_kind: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int8))

    @classmethod
    def from_samples(
        cls, samples: Iterable[Sample], progress: Callable[[int], None] | None = None
    ) -> SliceStore:
        """Pack samples (consumed one at a time, so an iterator never lives in memory whole)."""
        pixels, bits, shapes = Chunks(torch.int16), Chunks(torch.uint8), []
        labels, kinds = [], []
        store = cls()
        for s in samples:
            hu = np.asarray(s.hu, np.float32)
            pixels.append(np.clip(np.rint(hu), -32768, 32767).astype(np.int16))
            shapes.append(hu.shape)
            region = _region_of(s)
            kinds.append(MASK if s.mask is not None else (BOXES if s.boxes else NO_REGION))
            bits.append(np.packbits(region, axis=None) if region is not None
                        else np.zeros(0, np.uint8))
            labels.append(np.asarray(s.labels, np.float32).reshape(len(LABELS)))
            store.groups.append(s.group)
            store.sources.append(s.source)
            store.ids.append(s.id)
            if progress is not None:
                progress(1)
        n = len(shapes)
        store.packs = [Pack(pixels.finish(), np.array(shapes, np.int64).reshape(-1, 2),
                            bits.finish())]
        store.pack = np.zeros(n, np.int64)
        store.row = np.arange(n, dtype=np.int64)
        if n:
            store.labels = np.stack(labels)
            store.region_kind = np.array(kinds, np.int8)
        return store

    def __len__(self) -> int:
        return len(self.row)

    def hu(self, i: int) -> np.ndarray:
        """The int16 HU slice of row ``i`` (a view, not a copy)."""
        return self.packs[self.pack[i]].hu(self.row[i])

    def shape(self, i: int) -> tuple[int, int]:
        h, w = self.packs[self.pack[i]].shapes[self.row[i]]
        return int(h), int(w)

    def region(self, i: int) -> np.ndarray | None:
        """The (H, W) bool lesion region of row ``i``, or None."""
        return self.packs[self.pack[i]].region(self.row[i])

    def subset(self, indices: Iterable[int]) -> SliceStore:
        """A store of the given rows (packs shared, not copied)."""
        idx = np.asarray([int(i) for i in indices], np.int64)
        return SliceStore(
            packs=self.packs, pack=self.pack[idx], row=self.row[idx], labels=self.labels[idx],
            groups=[self.groups[i] for i in idx],
            sources=[self.sources[i] for i in idx], ids=[self.ids[i] for i in idx],
            region_kind=self.region_kind[idx],
        )

    @staticmethod
    def concat(stores: list[SliceStore]) -> SliceStore:
        """One store holding the rows of all ``stores`` in order (packs shared)."""
        out = SliceStore()
        index: dict[int, int] = {}
        packs, rows = [], []
        for s in stores:
            for p in s.packs:
                if id(p) not in index:
                    index[id(p)] = len(out.packs)
                    out.packs.append(p)
            packs.append(np.array([index[id(s.packs[k])] for k in s.pack], np.int64))
            rows.append(s.row)
            out.groups += s.groups
            out.sources += s.sources
            out.ids += s.ids
        if stores:
            out.pack, out.row = np.concatenate(packs), np.concatenate(rows)
            out.labels = np.concatenate([s.labels for s in stores])
            out.region_kind = np.concatenate([s.region_kind for s in stores])
        return out

    def share_memory(self) -> SliceStore:
        """Move the pixel tensors to shared memory (once), so worker processes map them."""
        for p in self.packs:
            for t in (*p.pixels.tensors, *p.regions.tensors):
                t.share_memory_()
        return self


def sample_region(region: np.ndarray, box: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resampling of a region mask with the windowing kernel's box geometry."""
    y0, x0, y1, x1 = (float(v) for v in box)
    pos = (np.arange(size) + 0.5) / size
    ys = np.rint(y0 + pos * (y1 - y0) - 0.5).astype(np.int64)
    xs = np.rint(x0 + pos * (x1 - x0) - 0.5).astype(np.int64)
    h, w = region.shape
    inside_y, inside_x = (ys >= 0) & (ys < h), (xs >= 0) & (xs < w)
    out = np.zeros((size, size), np.float32)
    sub = region[np.clip(ys, 0, h - 1)][:, np.clip(xs, 0, w - 1)]
    out[:] = sub * inside_y[:, None] * inside_x[None, :]
    return out


class SliceDataset(Dataset):
    """Model inputs from a :class:`SliceStore` via the runtime's windowing.

    Items are addressed by a row index, or by ``(row, seed)`` as :class:`EpochSampler` yields
    them; augmentation (when configured) draws from a generator seeded with ``seed``. An item is
    a dict: ``image`` (C, S, S) float32, ``labels`` (6,) float32 with NaN for unknown, ``index``,
    and with ``with_regions`` a ``region`` (S, S) map plus ``has_region``.
    """

    def __init__(
        self,
        store: SliceStore,
        contract: ModelContract,
        augment: AugmentConfig | None = None,
        with_regions: bool = False,
        insertion: InsertionConfig | None = None,
        look: AppearanceConfig | None = None,
    ) -> None:
        self.store = store
        self.contract = contract
        self.augment = augment
        self.with_regions = with_regions
        self.insertion = insertion
        self.look = look
        self._mean = torch.tensor(contract.mean, dtype=torch.float32)[:, None, None]
        self._std = torch.tensor(contract.std, dtype=torch.float32)[:, None, None]

    def __len__(self) -> int:
        return len(self.store)

    def _augmented_window(self, i: int, pixels: np.ndarray, rng: np.random.Generator
                          ) -> tuple[np.ndarray, np.ndarray]:
        """(1, C, S, S) tensor and (1, 4) box of row ``i`` (``pixels``: its possibly inserted HU)
        with the framing and HU-side augmentations.

        The contract's framing box (of the stored slice, as ``window_hu`` would frame it) is
        jittered in scale and position, and :func:`~ichrt.runtime.batches.window_hu` windows
        with that box (applying the simulated scanner calibration in the same pass).
        """
        cfg = self.augment
        frame = frame_boxes(self.store.hu(i)[None], self.contract.framing)[0]
        box = jitter_box(frame, rng, cfg)[None]
        slope, intercept = hu_calibration(rng, cfg)
        pixels = hu_side(pixels, self.store.sources[i], rng, cfg)
        image, _ = window_hu([pixels], self.contract, boxes=box, slopes=np.array([slope]),
                             intercepts=np.array([intercept]))
        return image, box

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        i, seed = key if isinstance(key, tuple) else (key, None)
        i = int(i)
        cfg = self.augment
        rng = np.random.default_rng(seed) if cfg is not None else None
        pixels = self.store.hu(i)
        labels = self.store.labels[i].copy()
        kind = int(self.store.region_kind[i]) if len(self.store.region_kind) else NO_REGION
        mask = self.store.region(i) if (self.with_regions or self.insertion) else None
        if rng is None:
            image, boxes = window_hu([pixels], self.contract)
        else:
            if self.insertion is not None:
                pixels, labels, mask, kind = self.insertion.apply(pixels, labels, mask, kind, rng,
                                                                  mask_kind=MASK)
            image, boxes = self._augmented_window(i, pixels, rng)
        box = boxes[0]
        x = torch.from_numpy(np.ascontiguousarray(image[0]))
        region = None
        if self.with_regions and mask is not None:
            region = torch.from_numpy(sample_region(mask, box, self.contract.input_size))
        if rng is not None:
            params = TensorParams.draw(rng, cfg)
            gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
            windowed = intensity(geometric(x * self._std + self._mean, params), params, gen)
            if self.look is not None:
                windowed = appearance(windowed, rng, self.look)
            x = (windowed - self._mean) / self._std
            if region is not None:
                region = geometric(region[None], params)[0]
        item = {"image": x.float(), "labels": torch.from_numpy(labels),
                "index": torch.tensor(i)}
        if self.with_regions:
            s = self.contract.input_size
            item["has_region"] = torch.tensor(region is not None)
            item["region"] = region if region is not None else torch.zeros(s, s)
            item["region_kind"] = torch.tensor(kind if region is not None else NO_REGION)
        return item


def donor_bank(store: SliceStore, limit: int = 800, sources: tuple[str, ...] | None = None
               ) -> DonorBank:
    """Bleed shapes of the store's masked positive rows (evenly spread, at most ``limit``)."""
    rows = [i for i in range(len(store))
            if store.region_kind[i] == MASK and store.labels[i, 0] >= 0.5
            and (sources is None or store.sources[i] in sources)]
    bank = DonorBank()
    step = max(1, len(rows) // limit)
    for i in rows[::step]:
        bank.add(store.region(i))
    return bank


def balance_weights(store: SliceStore, mode: str = "class",
                    shares: Mapping[str, float] | None = None) -> np.ndarray | None:
    """Sampling weight per row, or None for uniform sampling (``mode="none"``).

    Rows are grouped in cells (source, ``any`` label: positive / negative / unknown).
    ``"class"``: within each source every cell gets the same total weight, and each source keeps
    its share of the rows. ``"source"``: additionally every source gets the same total weight.
    Balancing within a source stops the model from reading the label off the source.
    ``shares`` multiplies a source's total weight (e.g. 0.5 draws a large phantom set half as
    often, so the real sources are seen more).
    """
    if mode not in BALANCE_MODES:
        raise ValueError(f"balance must be one of {BALANCE_MODES}, got {mode!r}")
    if (mode == "none" and not shares) or len(store) == 0:
        return None
    a = store.labels[:, 0]
    cells = [(s, "u" if np.isnan(v) else ("p" if v >= 0.5 else "n"))
             for s, v in zip(store.sources, a)]
    per_cell = Counter(cells)
    per_source = Counter(store.sources)
    cells_in_source = Counter(s for s, _ in per_cell)
    n_sources = len(per_source)
    w = np.empty(len(store), np.float64)
    for k, (src, c) in enumerate(cells):
        if mode == "none":
            w[k] = 1.0
        else:
            total = per_source[src] if mode == "class" else len(store) / n_sources
            w[k] = total / (cells_in_source[src] * per_cell[(src, c)])
        w[k] *= (shares or {}).get(src, 1.0)
    return w / w.sum()


class EpochSampler(Sampler):
    """Yields ``(row, augmentation seed)`` pairs; the same (seed, epoch) gives the same draws.

    With ``weights`` rows are drawn with replacement (like ``WeightedRandomSampler``), otherwise
    as a permutation. ``skip`` drops the first draws (used when resuming mid-epoch).
    """

    def __init__(
        self, n: int, num_samples: int | None = None, weights: np.ndarray | None = None,
        seed: int = 0,
    ) -> None:
        self.n, self.weights, self.seed = n, weights, seed
        self.num_samples = num_samples or n
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def draws(self) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, self.epoch])
        if self.weights is not None:
            rows = rng.choice(self.n, self.num_samples, replace=True, p=self.weights)
        else:
            rows = np.concatenate([rng.permutation(self.n)
                                   for _ in range(-(-self.num_samples // self.n))])
            rows = rows[: self.num_samples]
        seeds = rng.integers(0, 2**62, self.num_samples)
        return rows, seeds

    def __iter__(self) -> Iterator[tuple[int, int]]:
        rows, seeds = self.draws()
        for r, s in zip(rows[self.skip:], seeds[self.skip:]):
            yield int(r), int(s)

    def __len__(self) -> int:
        return self.num_samples - self.skip


def _worker_init(_: int) -> None:
    """One thread per loader worker: the workers already run in parallel."""
    import numba

    numba.set_num_threads(1)
    torch.set_num_threads(1)


def make_loader(
    dataset: SliceDataset, batch_size: int, sampler: Sampler | None = None, workers: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader over ``dataset`` (in order when no sampler is given).

    Workers start from a clean ``forkserver`` process, not by forking the trainer: the runtime's
    Numba kernels run on an OpenMP pool in the trainer, and a forked OpenMP process aborts. The
    pixels reach the workers through shared memory, not as copies.
    """
    if workers > 0:
        dataset.store.share_memory()
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, shuffle=False, num_workers=workers,
        worker_init_fn=_worker_init if workers > 0 else None, pin_memory=pin_memory,
        drop_last=False, persistent_workers=False,
        multiprocessing_context="forkserver" if workers > 0 else None,
    )
