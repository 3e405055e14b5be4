"""INT8 static quantization (QDQ) of an ichrt model, compared, gated on accuracy, and written.

How a model is quantized:

* ``onnxruntime.quantization.quantize_static`` in QDQ format with per-channel weights; the
  activation ranges come from a :class:`~ichrt.calibration.reader.SliceCalibrationReader` (the
  runtime's own windowed slices), by MinMax, Entropy or Percentile (99.999%) calibration.
* Only the convolutional body is quantized: every node downstream of ``features`` (global
  pooling, the linear head, the sigmoid) stays FP32, so ``features`` remains a float graph
  output that the runtime's CAM can use, and logits are not rounded to 8-bit steps.
* Formats (activation x weight): ``u8s8``, ``u8s8-rr`` (the same with 7-bit weights,
  ``reduce_range``), ``s8s8`` and ``u8u8``. On x86 CPUs without VNNI, ONNX Runtime's U8S8 kernels
  multiply with VPMADDUBSW, which adds two u8*s8 products into a saturating int16: with 8-bit
  weights two large products overflow (255 * (|w1| + |w2|) > 32767 as soon as |w1| + |w2| > 128),
  with 7-bit weights they never can (see :mod:`ichrt.calibration.saturation`, which measures
  both the weight pairs at risk and the share of convolution outputs that do saturate on
  held-out slices, whatever CPU this runs on). ``u8s8-rr`` and ``u8u8`` are saturation-safe.
* The accuracy gate: a candidate is accepted only if AUC(any) on held-out labelled slices drops by
  at most :data:`MAX_AUC_DROP` against the FP32 model. Among accepted candidates, the
  saturation-safe ones come first, then the fastest (measured in this process on held-out
  batches; within 10 % counts as equally fast, and then the smallest probability change wins),
  so the shipped INT8 model is safe on AVX2-only edge boxes even when it was built on a CPU with
  VNNI.

``ichrt calibrate quantize`` is :func:`quantize_model` (data folders in, report out), which
reads the calibration set and calls :func:`run_quantization` (a calibration reader in).
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ichrt.calibration.batches import Progress
from ichrt.calibration.report import jsonable
from ichrt.calibration.saturation import saturated_outputs, saturation_pairs
from ichrt.runtime.metrics import roc_auc

if TYPE_CHECKING:
    import onnx

    from ichrt.calibration.dataset import LabelledSet
    from ichrt.calibration.reader import SliceCalibrationReader
    from ichrt.runtime.contract import ModelContract
    from ichrt.runtime.slices import Rejected

#: name -> (activation type, weight type, reduce_range), as onnxruntime QuantType names.
FORMATS: dict[str, tuple[str, str, bool]] = {
    "u8s8": ("QUInt8", "QInt8", False),
    "u8s8-rr": ("QUInt8", "QInt8", True),
    "s8s8": ("QInt8", "QInt8", False),
    "u8u8": ("QUInt8", "QUInt8", False),
}
#: Formats whose integer products cannot saturate on AVX2 CPUs without VNNI.
SATURATION_SAFE = frozenset({"u8s8-rr", "u8u8"})
METHODS = ("minmax", "entropy", "percentile")
DEFAULT_FORMAT = "u8s8-rr"
DEFAULT_METHOD = "minmax"
PERCENTILE = 99.999
MAX_AUC_DROP = 0.005
FEATURES = "features"

Note = Callable[[str], None]
#: ``bar(description)``: a context manager around one stage of the work that yields the
#: ``progress(done, total)`` callback of that stage (or None for no progress).
ProgressBar = Callable[[str], contextlib.AbstractContextManager[Progress | None]]


class QuantizationRejected(RuntimeError):
    """No INT8 candidate passed the accuracy gate; ``report`` says by how much each failed."""

    def __init__(self, message: str, report: QuantizationReport) -> None:
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class QuantSpec:
    """One way to quantize: calibration method, integer format, per-channel weights."""

    method: str = DEFAULT_METHOD
    fmt: str = DEFAULT_FORMAT
    per_channel: bool = True

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown calibration method {self.method!r}; choose from {METHODS}")
        if self.fmt not in FORMATS:
            raise ValueError(f"unknown format {self.fmt!r}; choose from {tuple(FORMATS)}")

    @property
    def name(self) -> str:
        return f"{self.method}/{self.fmt}"


def all_specs(methods: Sequence[str] = METHODS, formats: Sequence[str] = tuple(FORMATS)
              ) -> list[QuantSpec]:
    """Every method x format combination (what ``--compare`` measures)."""
    return [QuantSpec(m, f) for m in methods for f in formats]


def prepare_model(model_path: str | Path, out_path: str | Path, note: Note = lambda s: None
                  ) -> Path:
    """Shape inference + graph optimization (``quant_pre_process``), and a name for every node.

    Nodes need names because the FP32 head is excluded from quantization by name. If the
    pre-processing fails on an unusual graph, the model is used as it is (and ``note`` says so).
    """
    import onnx
    from onnxruntime.quantization import quant_pre_process

    out_path = Path(out_path)
    try:
        quant_pre_process(str(model_path), str(out_path))
        model = onnx.load(str(out_path))
    except Exception as exc:  # noqa: BLE001 - ORT's shape inference raises many kinds
        note(f"pre-processing skipped ({type(exc).__name__}: {exc})")
        model = onnx.load(str(model_path))
    used = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in used:
                name += "_"
            node.name = name
            used.add(name)
    onnx.save(model, str(out_path))
    return out_path


def head_node_names(model: onnx.ModelProto, tensor: str = FEATURES) -> list[str]:
    """Names of the nodes that consume ``tensor`` directly or indirectly (the FP32 head)."""
    reached = {tensor}
    head: list[str] = []
    for node in model.graph.node:  # ONNX graphs are topologically sorted
        if reached.intersection(node.input):
            head.append(node.name)
            reached.update(node.output)
    return head


def quantize(
    prepared: str | Path,
    reader: SliceCalibrationReader,
    out: str | Path,
    spec: QuantSpec,
    cache: str | Path | None = None,
) -> Path:
    """Quantize a :func:`prepare_model` output to ``out`` with ``spec``.

    ``cache`` (a JSON file per calibration method) lets several formats reuse one calibration
    pass: activation ranges do not depend on the integer format.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    model = onnx.load(str(prepared))
    if FEATURES not in {o.name for o in model.graph.output}:
        raise ValueError(f"{prepared}: no {FEATURES!r} output; not an ichrt model")
    act, weight, reduce_range = FORMATS[spec.fmt]
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[spec.method]
    extra: dict[str, Any] = {"CalibStridedMinMax": 1}  # one batch at a time: bounded memory
    if spec.method == "percentile":
        extra["CalibPercentile"] = PERCENTILE
    reader.rewind()
    with contextlib.redirect_stdout(sys.stderr):  # onnxruntime prints progress on stdout
        quantize_static(
            str(prepared),
            str(out),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=spec.per_channel,
            reduce_range=reduce_range,
            activation_type=getattr(QuantType, act),
            weight_type=getattr(QuantType, weight),
            calibrate_method=method,
            nodes_to_exclude=head_node_names(model),
            extra_options=extra,
            calibration_cache_path=None if cache is None else str(cache),
        )
    return Path(out)


def ms_per_slice(models: Mapping[str, Any], tensor: np.ndarray, repeats: int = 7
                 ) -> dict[str, float]:
    """Median milliseconds per slice of each model on ``tensor``, timed in interleaved rounds."""
    times: dict[str, list[float]] = {name: [] for name in models}
    for model in models.values():
        model.run(tensor, ("logits",))  # warm-up: first-run allocations
    for _ in range(repeats):
        for name, model in models.items():
            start = time.perf_counter()
            model.run(tensor, ("logits",))
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t) * 1e3 / len(tensor)) for name, t in times.items()}


def cpu_has_vnni() -> bool | None:
    """Whether this CPU has an 8-bit dot-product instruction (VNNI or AMX); None if unknown."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines()
                  if line.startswith("flags")), [])
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"}.intersection(flags))


def accuracy_gate(auc_reference: float, auc_candidate: float, max_drop: float = MAX_AUC_DROP
                  ) -> bool:
    """True when the candidate's AUC is at most ``max_drop`` below the reference (NaN fails)."""
    if np.isnan(auc_reference) or np.isnan(auc_candidate):
        return False
    return bool(auc_reference - auc_candidate <= max_drop + 1e-12)


def map_outputs(contract: ModelContract) -> tuple[str, ...]:
    """The model outputs :func:`explanation_maps` needs."""
    return ("lesion",) if contract.lesion_stride is not None else (FEATURES,)


def explanation_maps(outputs: dict[str, np.ndarray], contract: ModelContract) -> np.ndarray:
    """(N, h, w) maps of the model's default explanation from its outputs."""
    if contract.lesion_stride is not None:
        from ichrt.runtime.lesion import lesion_probabilities

        return lesion_probabilities(outputs["lesion"])
    from ichrt.runtime.explain.cam import cam_maps

    return cam_maps(outputs[FEATURES], contract)


@dataclass
class CamAgreement:
    """Running agreement of ``any`` CAM maps between the FP32 model and a candidate."""

    correlations: list[float] = field(default_factory=list)
    peaks_equal: int = 0
    slices: int = 0

    def add(self, ref_out: dict[str, np.ndarray], out: dict[str, np.ndarray],
            contract: ModelContract) -> None:
        """Compare the default explanation maps: the lesion map of lesion-level models, else
        CAM (from ``features``)."""
        ref, cand = explanation_maps(ref_out, contract), explanation_maps(out, contract)
        for r, c in zip(ref.reshape(len(ref), -1), cand.reshape(len(cand), -1)):
            self.slices += 1
            self.peaks_equal += int(np.argmax(r) == np.argmax(c))
            if r.std() > 0 and c.std() > 0:
                self.correlations.append(float(np.corrcoef(r, c)[0, 1]))

    def summary(self) -> dict[str, float]:
        return {
            "cam_correlation": float(np.mean(self.correlations)) if self.correlations else
            float("nan"),
            "cam_peak_agreement": self.peaks_equal / self.slices if self.slices else float("nan"),
        }


@dataclass
class CandidateResult:
    """How one INT8 candidate compares with the FP32 model on held-out data."""

    spec: QuantSpec
    auc_any: float
    auc_drop: float
    max_prob_diff: float
    ms_per_slice: float
    speedup: float
    cam_correlation: float
    cam_peak_agreement: float
    saturation_pairs: float
    saturation_share: float
    accepted: bool

    @property
    def saturation_safe(self) -> bool:
        return self.spec.fmt in SATURATION_SAFE

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["spec"] = {**asdict(self.spec), "name": self.spec.name}
        d["saturation_safe"] = self.saturation_safe
        return d


#: Candidates within this factor of the fastest count as equally fast (timing noise).
SPEED_TOLERANCE = 1.10


def choose(results: Sequence[CandidateResult]) -> CandidateResult | None:
    """The accepted candidate to ship (None if none): saturation-safe first; among those as fast
    as the fastest (within :data:`SPEED_TOLERANCE`), the one that moves probabilities least."""
    accepted = [r for r in results if r.accepted]
    if not accepted:
        return None
    pool = [r for r in accepted if r.saturation_safe] or accepted
    fastest = min(r.ms_per_slice for r in pool)
    near = [r for r in pool if r.ms_per_slice <= fastest * SPEED_TOLERANCE]
    return min(near, key=lambda r: (r.max_prob_diff, r.ms_per_slice, r.auc_drop))


@dataclass
class QuantizationReport:
    """Everything :func:`run_quantization` measured and decided, JSON-ready.

    :func:`quantize_model` adds the input files the runtime rejected to ``calibration``.
    """

    parent: dict[str, str]
    reference: dict[str, float]
    candidates: list[CandidateResult]
    chosen: str | None
    calibration: dict[str, Any]
    heldout: dict[str, Any]
    cpu_vnni: bool | None
    max_auc_drop: float
    out: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "parent": self.parent,
            "reference_fp32": self.reference,
            "candidates": [c.to_dict() for c in self.candidates],
            "chosen": self.chosen,
            "accepted": self.chosen is not None,
            "max_auc_drop": self.max_auc_drop,
            "calibration": self.calibration,
            "heldout": self.heldout,
            "cpu_vnni": self.cpu_vnni,
            "out": self.out,
        }

    @property
    def files_rejected(self) -> int:
        """Input files the runtime rejected, calibration and held-out sets together."""
        return len(self.calibration.get("rejected", ())) + int(self.heldout.get("rejected", 0))


def compare_candidates(
    reference: Any,
    candidates: Mapping[str, Any],
    heldout: LabelledSet,
    files: Sequence[Path],
    batch_size: int = 16,
    max_drop: float = MAX_AUC_DROP,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[dict[str, float], dict[str, dict[str, float]], dict[str, Any]]:
    """Run the FP32 ``reference`` and every candidate (LoadedModels) over held-out ``files``.

    Returns the reference's figures, each candidate's figures (AUC(any), drop, max probability
    difference, CAM agreement, ms/slice, speed-up, saturation measures on the first held-out
    batch, accepted) and a summary of the held-out set.
    """
    from ichrt.calibration.dataset import DatasetError
    from ichrt.calibration.predictions import predict

    contract = reference.contract
    models = {"fp32": reference, **candidates}
    cams = {name: CamAgreement() for name in candidates}
    timing_batch: list[np.ndarray] = []

    def on_batch(batch, outs) -> None:
        if not timing_batch:
            timing_batch.append(batch.tensor)
        for name in candidates:
            cams[name].add(outs["fp32"], outs[name], contract)

    preds = predict(models, files, contract, batch_size,
                    outputs=("logits", *map_outputs(contract)),
                    on_batch=on_batch, progress=progress)
    if not preds.identities:
        raise DatasetError("no held-out slice could be read: cannot check the INT8 accuracy")
    labels = heldout.labels_of(preds.identities)[:, contract.labels.index("any")]
    any_idx = contract.labels.index("any")
    probs = {name: preds.probs(name, contract) for name in models}
    speeds = ms_per_slice(models, timing_batch[0])
    auc_ref = roc_auc(labels, probs["fp32"][:, any_idx])
    figures: dict[str, dict[str, float]] = {}
    for name, model in candidates.items():
        auc = roc_auc(labels, probs[name][:, any_idx])
        figures[name] = {
            "auc_any": auc,
            "auc_drop": auc_ref - auc,
            "max_prob_diff": float(np.abs(probs[name] - probs["fp32"]).max()),
            "ms_per_slice": speeds[name],
            "speedup": speeds["fp32"] / speeds[name],
            "accepted": accuracy_gate(auc_ref, auc, max_drop),
            "saturation_pairs": saturation_pairs(model.path),
            "saturation_share": saturated_outputs(model.path, timing_batch[0])["share"],
            **cams[name].summary(),
        }
    known = labels[~np.isnan(labels)]
    summary = {
        "slices": len(preds.identities),
        "studies": len(set(preds.studies)),
        "positives": int((known > 0.5).sum()),
        "negatives": int((known <= 0.5).sum()),
        "rejected": len(preds.rejected),
    }
    return {"auc_any": auc_ref, "ms_per_slice": speeds["fp32"]}, figures, summary


def run_quantization(
    model_path: str | Path,
    reader: SliceCalibrationReader,
    heldout: LabelledSet,
    heldout_files: Sequence[Path],
    out: str | Path,
    specs: Sequence[QuantSpec] = (QuantSpec(),),
    max_drop: float = MAX_AUC_DROP,
    batch_size: int = 16,
    threads: int | None = None,
    note: Note = lambda s: None,
    progress: Callable[[int, int], None] | None = None,
) -> QuantizationReport:
    """Quantize with every spec, measure all candidates, gate, and write the chosen one to ``out``.

    The written model carries the parent's contract (thresholds, temperatures, CAM weights) with
    provenance naming the parent's SHA-256 and the INT8 figures in ``metrics["int8"]``.

    Raises:
        QuantizationRejected: no candidate passed the gate (nothing is written).
    """
    import onnx
    import onnxruntime

    from ichrt.calibration.model_io import derive_contract, file_sha256, write_model
    from ichrt.runtime.session import load_model

    model_path = Path(model_path)
    reference = load_model(model_path, provider="cpu", threads=threads)
    parent_sha = file_sha256(model_path)
    with tempfile.TemporaryDirectory(prefix="ichrt-quant-") as tmp:
        work = Path(tmp)
        note("preparing the FP32 graph (shape inference, optimization)")
        prepared = prepare_model(model_path, work / "prepared.onnx", note)
        paths: dict[str, Path] = {}
        for i, spec in enumerate(specs):
            note(f"quantizing {spec.name} ({i + 1}/{len(specs)})")
            paths[spec.name] = quantize(prepared, reader, work / f"cand{i}.onnx", spec,
                                        cache=work / f"ranges-{spec.method}.json")
        note(f"comparing {len(paths)} candidate(s) with FP32 on {len(heldout_files)} held-out files")
        loaded = {name: load_model(p, provider="cpu", threads=threads)
                  for name, p in paths.items()}
        ref_figures, figures, held_summary = compare_candidates(
            reference, loaded, heldout, heldout_files, batch_size, max_drop, progress)
        results = [
            CandidateResult(spec=spec, **figures[spec.name]) for spec in specs
        ]
        best = choose(results)
        report = QuantizationReport(
            parent={"path": str(model_path), "sha256": parent_sha,
                    "name": reference.contract.name},
            reference=ref_figures,
            candidates=results,
            chosen=best.spec.name if best else None,
            calibration={"slices": reader.slices},
            heldout=held_summary,
            cpu_vnni=cpu_has_vnni(),
            max_auc_drop=max_drop,
        )
        if best is None:
            drops = ", ".join(f"{r.spec.name}: {r.auc_drop:+.4f}" for r in results)
            raise QuantizationRejected(
                f"INT8 rejected: AUC(any) dropped by more than {max_drop} for every candidate "
                f"({drops}); the FP32 model stays the one to use", report)
        parent = reference.contract
        contract = derive_contract(
            parent, parent_sha, "ichrt calibrate quantize",
            details={"quantization": {**asdict(best.spec), "format": "QDQ",
                                      "calibration_slices": reader.slices,
                                      "excluded_head": True}},
            name=f"{parent.name}-int8",
            metrics={**parent.metrics, "int8": jsonable({
                "reference_fp32": ref_figures, "heldout": held_summary,
                **{k: v for k, v in best.to_dict().items() if k != "spec"}})},
            versions={**parent.versions, "onnxruntime": onnxruntime.__version__,
                      "onnx": onnx.__version__},
        )
        out_sha = write_model(onnx.load(str(paths[best.spec.name])), contract, out,
                              parent_path=model_path)
    report.out = {"path": str(out), "sha256": out_sha, "name": contract.name}
    return report


@contextlib.contextmanager
def no_progress(description: str) -> Iterator[None]:
    """A :data:`ProgressBar` that shows nothing."""
    yield None


def calibration_files(data_dir: str | Path) -> list[Path]:
    """The slices of an RSNA-layout folder, or every file under any other folder."""
    from ichrt.calibration.dataset import DatasetError, open_labelled
    from ichrt.runtime.dicom import iter_files

    try:
        return open_labelled(data_dir).files
    except DatasetError:
        return iter_files([data_dir])


def quantize_model(
    model_path: str | Path,
    data_dir: str | Path,
    out: str | Path,
    *,
    holdout_dir: str | Path | None = None,
    specs: Sequence[QuantSpec] = (QuantSpec(),),
    calibration_slices: int = 256,
    max_drop: float = MAX_AUC_DROP,
    seed: int = 0,
    batch_size: int = 16,
    threads: int | None = None,
    note: Note = lambda s: None,
    bar: ProgressBar = no_progress,
) -> QuantizationReport:
    """What ``ichrt calibrate quantize`` does, from data folders to the written INT8 model.

    The accuracy gate runs on ``holdout_dir`` (labelled; ``data_dir`` may then be any folder of
    DICOM files), else on half of the studies of the labelled ``data_dir`` (split with ``seed``)
    while the other half calibrates. At most ``calibration_slices`` slices, sampled with ``seed``
    and read through the runtime's ingest, set the activation ranges; then
    :func:`run_quantization` builds, measures, gates and writes. The report's ``calibration``
    lists the input files the runtime rejected (:attr:`QuantizationReport.files_rejected`).

    Raises:
        DatasetError: a folder in no readable layout, or nothing to calibrate or gate with.
        ModelError, ContractError: the model cannot be loaded.
        QuantizationRejected: no candidate passed the gate (nothing is written; its report,
            with the rejected files, says by how much each failed).
    """
    from ichrt.calibration.dataset import DatasetError, open_labelled, split_by_study
    from ichrt.calibration.reader import SliceCalibrationReader
    from ichrt.runtime.session import load_model

    if holdout_dir is not None:
        heldout = open_labelled(holdout_dir)
        calib_files, held_files = calibration_files(data_dir), heldout.files
    else:
        heldout = open_labelled(data_dir)
        calib_files, held_files = split_by_study(heldout.files, 0.5, seed)
    if not calib_files:
        raise DatasetError(f"{data_dir}: no files to calibrate with")
    contract = load_model(model_path, provider="cpu").contract
    rejected: list[Rejected] = []
    with bar("calibration slices") as progress:
        reader = SliceCalibrationReader.from_files(
            calib_files, contract, batch_size=min(batch_size, 8), limit=calibration_slices,
            seed=seed, rejected=rejected, progress=progress)
        reader.rewind()  # read the calibration set once, with its progress bar
    note(f"calibration set: {reader.slices} slices ({len(rejected)} files rejected)")
    if not reader.slices:
        raise DatasetError(f"{data_dir}: no calibration slice could be read")
    calibration = {"slices": reader.slices,
                   "rejected": [{"path": r.path, "reason": r.reason} for r in rejected]}
    try:
        with bar("held-out slices") as progress:
            report = run_quantization(model_path, reader, heldout, held_files, out, specs,
                                      max_drop, batch_size, threads, note, progress)
    except QuantizationRejected as exc:
        exc.report.calibration = calibration
        raise
    report.calibration = calibration
    return report
