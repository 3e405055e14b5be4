"""The preprocessing contract that travels inside every ichrt ONNX model.

A model file carries, in its ``metadata_props``, everything the runtime needs to turn HU slices
into the tensor the model was trained on (windows, input size, framing, normalization) and to read
its outputs (label names, thresholds, temperatures, CAM weights).  The runtime refuses a model
whose contract is missing or invalid, so a model can never be paired with the wrong preprocessing.

Stored as one JSON document under the key :data:`METADATA_KEY`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

METADATA_KEY = "ichrt.contract"
CONTRACT_VERSION = 1

#: Label order of every multi-label ichrt model (the RSNA 2019 order, ``any`` first).
LABELS: tuple[str, ...] = (
    "any",
    "epidural",
    "intraparenchymal",
    "intraventricular",
    "subarachnoid",
    "subdural",
)
SUBTYPES: tuple[str, ...] = LABELS[1:]

#: The seed's three windows (level, width): brain, subdural, bone.
DEFAULT_WINDOWS: tuple[tuple[float, float], ...] = ((40.0, 80.0), (80.0, 200.0), (600.0, 2800.0))

#: Framing modes: ``"none"`` resizes the whole slice, ``"head"`` crops a square around the head
#: first (see :func:`ichrt.runtime.framing.head_boxes`), so that field of view does not matter.
FRAMINGS = ("none", "head")


class ContractError(ValueError):
    """A model's preprocessing contract is missing or invalid."""


@dataclass(frozen=True)
class ModelContract:
    """What a model expects as input and what its outputs mean.

    Attributes:
        labels: output label names, in output order.
        windows: one (level, width) pair in HU per input channel.
        input_size: the square side of the model input, in pixels.
        mean, std: per-channel normalization applied after windowing to [0, 1].
        framing: ``"none"`` or ``"head"`` (crop a square around the head before resizing).
        thresholds: operating threshold per label (``any`` drives the study flag).
        temperatures: per-label temperature applied to the logits (1.0 = uncalibrated).
        arch: architecture name, e.g. ``"resnet18"``.
        cam_weights: classifier weights (labels x channels) when the head is global average
            pooling followed by one linear layer, so CAM can be computed without torch;
            ``None`` when the head is of another form.
        cam_bias: the classifier bias (labels) that goes with ``cam_weights``.
        lesion_stride: for lesion-level models, the stride of the ``lesion`` output (lesion
            logits, N x 1 x S/stride x S/stride) on the model input; None when there is none.
        study_model: the study aggregator over per-slice outputs (see
            :mod:`ichrt.runtime.studymodel`); None = maximum over slices.
        name: a human name for the model.
        provenance: where it came from (data, command, parent model hash, ...).
        metrics: validation metrics recorded at export or calibration time.
        versions: library versions used to produce it.
    """

    labels: tuple[str, ...] = LABELS
    windows: tuple[tuple[float, float], ...] = DEFAULT_WINDOWS
    input_size: int = 224
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    framing: str = "head"
    thresholds: dict[str, float] = field(default_factory=lambda: {"any": 0.5})
    temperatures: dict[str, float] = field(default_factory=dict)
    arch: str = "unknown"
    cam_weights: tuple[tuple[float, ...], ...] | None = None
    cam_bias: tuple[float, ...] | None = None
    lesion_stride: int | None = None
    study_model: dict[str, Any] | None = None
    name: str = "ichrt-model"
    provenance: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    version: int = CONTRACT_VERSION

    def __post_init__(self) -> None:
        self.validate()

    # -- validation -------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise :class:`ContractError` when the contract cannot drive preprocessing."""
        if self.version != CONTRACT_VERSION:
            raise ContractError(f"unsupported contract version {self.version!r}")
        if not self.labels or "any" not in self.labels:
            raise ContractError("labels must be non-empty and contain 'any'")
        if len(set(self.labels)) != len(self.labels):
            raise ContractError("labels must be unique")
        n = len(self.windows)
        if n < 1:
            raise ContractError("at least one window is required")
        for level, width in self.windows:
            if not (width > 0):
                raise ContractError(f"window width must be > 0, got {width!r}")
        if len(self.mean) != n or len(self.std) != n:
            raise ContractError("mean and std need one value per window channel")
        if any(not (s > 0) for s in self.std):
            raise ContractError("std values must be > 0")
        if not (isinstance(self.input_size, int) and 8 <= self.input_size <= 2048):
            raise ContractError(f"input_size must be an int in [8, 2048], got {self.input_size!r}")
        if self.framing not in FRAMINGS:
            raise ContractError(f"framing must be one of {FRAMINGS}, got {self.framing!r}")
        for key in {**self.thresholds, **self.temperatures}:
            if key not in self.labels:
                raise ContractError(f"threshold/temperature for unknown label {key!r}")
        for t in self.thresholds.values():
            if not (0.0 <= t <= 1.0):
                raise ContractError(f"thresholds must lie in [0, 1], got {t!r}")
        for t in self.temperatures.values():
            if not (t > 0):
                raise ContractError(f"temperatures must be > 0, got {t!r}")
        if self.lesion_stride is not None and not (
                isinstance(self.lesion_stride, int) and 1 <= self.lesion_stride <= self.input_size):
            raise ContractError(f"lesion_stride must be an int in [1, input_size], "
                                f"got {self.lesion_stride!r}")
        if self.cam_weights is not None:
            if len(self.cam_weights) != len(self.labels):
                raise ContractError("cam_weights needs one row per label")
            if len({len(r) for r in self.cam_weights}) != 1:
                raise ContractError("cam_weights rows must have equal length")
            if self.cam_bias is not None and len(self.cam_bias) != len(self.labels):
                raise ContractError("cam_bias needs one value per label")

    # -- convenience --------------------------------------------------------------------------
    @property
    def channels(self) -> int:
        """Number of input channels (one per window)."""
        return len(self.windows)

    def threshold(self, label: str = "any") -> float:
        """Operating threshold of ``label`` (0.5 when none was recorded)."""
        return float(self.thresholds.get(label, 0.5))

    def temperature(self, label: str) -> float:
        """Temperature of ``label`` (1.0 when uncalibrated)."""
        return float(self.temperatures.get(label, 1.0))

    def with_updates(self, **changes: Any) -> ModelContract:
        """A validated copy with some fields replaced."""
        return replace(self, **changes)

    # -- serialization ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def to_metadata(self) -> dict[str, str]:
        """The ``metadata_props`` entries that carry this contract."""
        return {METADATA_KEY: self.to_json()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelContract:
        """Build from :meth:`to_dict` output; unknown keys are an error, not ignored."""
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ContractError(f"unknown contract fields: {sorted(unknown)}")
        d = dict(data)
        try:
            if "labels" in d:
                d["labels"] = tuple(d["labels"])
            if "windows" in d:
                d["windows"] = tuple((float(lv), float(w)) for lv, w in d["windows"])
            for key in ("mean", "std"):
                if key in d:
                    d[key] = tuple(float(v) for v in d[key])
            if d.get("cam_weights") is not None:
                d["cam_weights"] = tuple(tuple(float(v) for v in row) for row in d["cam_weights"])
            if d.get("cam_bias") is not None:
                d["cam_bias"] = tuple(float(v) for v in d["cam_bias"])
            return cls(**d)
        except ContractError:
            raise
        except (TypeError, ValueError) as exc:
            raise ContractError(f"malformed contract: {exc}") from exc

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, str], source: str = "model") -> ModelContract:
        """Read the contract from an ONNX model's metadata map.

        Raises:
            ContractError: naming ``source`` when the key is absent or the JSON is invalid.
        """
        raw = metadata.get(METADATA_KEY)
        if raw is None:
            raise ContractError(
                f"{source}: no ichrt preprocessing contract in the model metadata "
                f"(key {METADATA_KEY!r}); export it with 'ichrt export'"
            )
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ContractError(f"{source}: contract metadata is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ContractError(f"{source}: contract metadata must be a JSON object")
        try:
            return cls.from_dict(data)
        except ContractError as exc:
            raise ContractError(f"{source}: {exc}") from exc
