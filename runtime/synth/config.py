"""Ranges that phantom studies are drawn from, and the named presets.

Every study draws its anatomy, scanner and lesions uniformly (unless noted) from these ranges, so
one :class:`PhantomConfig` describes a whole population of patients and scanners. ``"train"`` is
the population the shipped model learns from; ``"shifted"`` moves scanner, pose and lesion
settings outside the training ranges so that held-out measurements see conditions no model was
trained on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

Range = tuple[float, float]


@dataclass(frozen=True)
class PhantomConfig:
    """Ranges of anatomy, scanner physics, lesions and DICOM encoding for phantom studies."""

    name: str = "train"

    # --- anatomy (mm unless noted) ---
    #: overall head size factor (1 = adult average: cranial cavity 132 x 170 mm).
    head_scale: Range = (0.86, 1.12)
    #: width / length ratio of the cranial cavity (dolicho- to brachycephalic).
    head_aspect: Range = (0.70, 0.90)
    #: amplitude of the low-order contour asymmetry (fraction of the radius).
    asymmetry: Range = (0.0, 0.025)
    skull_thickness: Range = (3.5, 9.0)
    scalp_thickness: Range = (2.5, 6.5)
    #: lateral ventricle radius factor (atrophy and hydrocephalus > 1.3).
    ventricle_scale: Range = (0.6, 2.1)
    #: 0 = young brain (tight sulci), 1 = marked atrophy (wide sulci, wide CSF spaces).
    atrophy: Range = (0.0, 1.0)
    #: mean distance between neighbouring sulci along the brain surface.
    sulcal_period: Range = (14.0, 22.0)
    #: probability of each physiological calcification (pineal, choroid plexus, basal ganglia).
    p_calcification: tuple[float, float, float] = (0.55, 0.6, 0.08)

    # --- tissue densities (HU) ---
    #: white matter HU, gray - white contrast, and the range gray matter is kept in.
    white_matter: Range = (22.0, 30.0)
    gray_white: Range = (6.0, 13.0)
    gray_matter: Range = (36.0, 44.0)
    csf: Range = (2.0, 12.0)
    bone: Range = (1150.0, 1750.0)

    # --- scanner ---
    #: display field of view (mm), drawn from one of these ranges; pixel spacing = fov / size.
    fov: tuple[Range, ...] = ((195.0, 265.0),)
    #: widen a drawn field of view that would cut the head off (as a technologist would).
    fit_fov: bool = True
    #: (thickness mm, weight) choices; slice spacing equals thickness.
    slice_thickness: tuple[tuple[float, float], ...] = ((5.0, 0.6), (3.0, 0.15), (2.5, 0.15),
                                                        (4.0, 0.1))
    #: quantum noise standard deviation in brain (HU), drawn log-uniformly (low noise is common).
    noise_sigma: Range = (3.0, 10.5)
    #: point-spread blur of the reconstruction kernel (Gaussian sigma in pixels of 0.45 mm);
    #: it also sets the noise grain, as on a scanner.
    kernel_blur: Range = (0.85, 1.8)
    #: edge enhancement of sharp kernels (0 = soft kernel).
    kernel_sharpen: Range = (0.2, 0.8)
    #: share of studies with a sharp (edge-enhancing) kernel.
    p_sharp_kernel: float = 0.25
    #: beam hardening (cupping) amplitude (HU, brain near the skull brighter than the centre).
    beam_hardening: Range = (0.0, 6.0)
    #: dark band between the petrous bones in posterior fossa slices (HU).
    posterior_fossa_band: Range = (0.0, 25.0)
    #: share of studies with streaks, their number per slice and amplitude (HU).
    p_streaks: float = 0.5
    streaks: tuple[int, int] = (1, 3)
    streak_amplitude: Range = (3.0, 15.0)
    p_ring: float = 0.08
    p_motion: float = 0.06
    #: global water calibration offset of soft tissue (HU).
    calibration_offset: Range = (-2.0, 2.0)

    # --- pose ---
    #: in-plane rotation (degrees), small pitch (head flexion) and roll.
    yaw: Range = (-18.0, 18.0)
    pitch: Range = (-12.0, 22.0)
    roll: Range = (-6.0, 6.0)
    #: head centre offset from the isocentre (mm).
    shift: Range = (-18.0, 18.0)
    #: share of studies rotated by a quarter or half turn (mis-oriented exports in the wild).
    p_large_rotation: float = 0.04

    # --- lesions ---
    #: share of positive studies when a study's status is not given.
    prevalence: float = 0.35
    #: relative frequency of each subtype in positive studies (LABELS[1:] order).
    subtype_weights: tuple[float, ...] = (0.10, 0.28, 0.20, 0.28, 0.22)
    #: probability of a second, third, ... distinct subtype in a positive study.
    p_extra_subtype: float = 0.45
    #: contrast factor applied to lesion excess density over brain (1 = textbook acute blood).
    lesion_contrast: Range = (0.35, 1.0)
    #: size factor for lesions (1 = typical; small values make subtle lesions).
    lesion_size: Range = (0.3, 1.25)

    # --- DICOM encoding ---
    p_rsna_ids: float = 0.5
    p_bad_rescale: float = 0.15
    p_padding: float = 0.3
    p_bits12: float = 0.5
    p_gantry_tilt: float = 0.08
    p_reverse_order: float = 0.2

    def with_updates(self, **changes: Any) -> PhantomConfig:
        """A copy with some fields replaced."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-able) for provenance records."""
        return asdict(self)

    @classmethod
    def preset(cls, name: str) -> PhantomConfig:
        """The named preset (see :data:`PRESETS`)."""
        try:
            return PRESETS[name]
        except KeyError:
            raise ValueError(f"unknown phantom preset {name!r}; choose from {sorted(PRESETS)}") from None


def _shifted() -> PhantomConfig:
    """Scanner, pose and lesion settings outside every ``train`` range (held-out domain)."""
    return PhantomConfig(
        name="shifted",
        head_scale=(0.80, 1.15),
        head_aspect=(0.68, 0.94),
        asymmetry=(0.02, 0.04),
        ventricle_scale=(0.55, 2.4),
        gray_matter=(35.0, 45.0),
        white_matter=(20.0, 30.0),
        gray_white=(4.0, 15.0),
        csf=(0.0, 15.0),
        bone=(900.0, 1800.0),
        fov=((170.0, 192.0), (270.0, 330.0)),
        slice_thickness=((1.25, 0.3), (2.0, 0.3), (6.0, 0.2), (7.0, 0.2)),
        noise_sigma=(10.5, 14.0),
        kernel_blur=(1.8, 2.3),
        kernel_sharpen=(0.8, 1.0),
        p_sharp_kernel=0.5,
        beam_hardening=(6.0, 10.0),
        posterior_fossa_band=(25.0, 40.0),
        p_streaks=1.0,
        streaks=(3, 8),
        streak_amplitude=(15.0, 35.0),
        p_ring=0.3,
        p_motion=0.2,
        calibration_offset=(-5.0, 5.0),
        yaw=(-30.0, 30.0),
        pitch=(-20.0, 30.0),
        roll=(-10.0, 10.0),
        shift=(-24.0, 24.0),
        p_large_rotation=0.0,
        lesion_contrast=(0.3, 1.1),
        p_bad_rescale=0.3,
        p_padding=0.5,
    )


#: Named presets: ``train`` (default) and ``shifted`` (held-out scanner/pose/lesion domain).
PRESETS: dict[str, PhantomConfig] = {"train": PhantomConfig(), "shifted": _shifted()}


def resolve_config(config: PhantomConfig | str | None) -> PhantomConfig:
    """A config from an instance, a preset name or None (``train``)."""
    if config is None:
        return PRESETS["train"]
    if isinstance(config, str):
        return PhantomConfig.preset(config)
    return config
