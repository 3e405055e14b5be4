"""HU-side augmentation against source shortcuts: re-create an 8-bit windowed export.

The real sources reach training as 8-bit exports mapped back to HU (:mod:`ichrt.export.sources`):
soft tissue clipped to the publisher's window (ct-ich and Roboflow -20..100 HU, RSNA 0..80, BHSD
0..255), 8-bit steps, a flat bone plateau, air outside the head. Each clip range belongs to one
source with one label prevalence, so the range alone can give the label away. :class:`WindowedExport`
is an :data:`~ichrt.export.augment.HuHook` that blurs this:

- a real-source slice is, with probability ``p_real``, exported again at the ``common`` window
  (0..80 HU, contained in every source's window), so all real sources share one look;
- any other slice (phantoms, DICOM) is, with probability ``p_other``, exported at one of the real
  sources' windows (edges jittered), so a clipped look does not mean "real" either;
- the bone plateau takes a random value in ``bone_hu`` each time.

Exporting goes through the loaders' own mapping (:meth:`GrayWindow.to_hu`), so an augmented
slice is exactly what a loader would have made of such a file.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ichrt.export.augment import AugmentConfig
from ichrt.export.sources import SOURCES, GrayWindow


def _source_windows() -> tuple[tuple[float, float], ...]:
    """(low, high) HU of each real source's window, without repeats."""
    return tuple(sorted({(s.window.low, s.window.low + s.window.width) for s in SOURCES.values()}))


def export_window(hu: np.ndarray, low: float, high: float, bone_hu: float) -> np.ndarray:
    """What an 8-bit export of ``hu`` at [low, high] HU gives back through the loaders' mapping.

    Gray = floor of the scaled, clipped HU (as the ct-ich export script does; a small tolerance
    keeps an already exported slice unchanged); then air outside the head, the window's HU inside
    it, and ``bone_hu`` where the export saturated.
    """
    if not high > low:
        raise ValueError(f"window must have high > low, got [{low}, {high}]")
    scaled = (np.asarray(hu, np.float32) - low) * (255.0 / (high - low)) + 1e-3
    gray = np.floor(np.clip(scaled, 0.0, 255.0)).astype(np.uint8)
    return GrayWindow((low + high) / 2.0, high - low).to_hu(gray, bone_hu)


@dataclass(frozen=True)
class WindowedExport:
    """HU hook ``(hu, source, rng) -> hu`` (see the module docstring). Picklable."""

    p_real: float = 0.5
    p_other: float = 0.5
    common: tuple[float, float] = (0.0, 80.0)
    windows: tuple[tuple[float, float], ...] = field(default_factory=_source_windows)
    jitter: float = 5.0
    bone_hu: tuple[float, float] = (700.0, 1300.0)
    real: frozenset[str] = frozenset(SOURCES)

    def __call__(self, hu: np.ndarray, source: str, rng: np.random.Generator) -> np.ndarray:
        if source in self.real:
            if rng.random() >= self.p_real:
                return hu
            low, high = self.common
        else:
            if rng.random() >= self.p_other:
                return hu
            low, high = self.windows[int(rng.integers(len(self.windows)))]
            low += float(rng.uniform(-self.jitter, self.jitter))
            high += float(rng.uniform(-self.jitter, self.jitter))
        return export_window(hu, low, high, float(rng.uniform(*self.bone_hu)))


#: The shipped model's augmentation (``--augment-preset ichrt.export.realaug:MIXED``): wide
#: scanner intensity variation, mild geometry (DICOM arrives in radiological orientation, the
#: loaders reorient the real sources), and windowed re-export against source shortcuts.
MIXED = AugmentConfig(box_scale=(0.8, 1.2), box_shift=0.08, hu_slope=(0.94, 1.06),
                      hu_intercept=(-12.0, 12.0), hu_noise=(0.0, 10.0), vflip=0.1, rotate=20.0,
                      contrast=(0.8, 1.2), brightness=0.05, noise=0.02).with_hooks(WindowedExport())
