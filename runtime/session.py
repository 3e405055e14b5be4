"""Load an ichrt ONNX model into an ONNX Runtime session, with its preprocessing contract.

The contract in the model's metadata drives preprocessing; a model without a valid contract, or
whose inputs and outputs do not follow the ichrt convention (input ``image``; outputs ``probs``,
``logits``, ``features``), is refused with an error naming the file.

Session settings are chosen for a shared edge box: full graph optimization, intra-op threads =
physical cores (hyper-threads only add contention for convolutions), one inter-op thread, and no
busy spinning so that idle ORT threads do not burn the CPU that decoding and other processes need.
On CUDA/TensorRT, inputs and outputs go through IO binding so ORT copies each batch once.

Pinning: a site that validated one model file sets its SHA-256 (``--require-sha256`` or the
``ICHRT_REQUIRE_SHA256`` environment variable, several hashes comma-separated); any other file is
refused before ONNX Runtime parses it (:class:`ModelNotPinned`), so an edited contract cannot
run under the validated model's name.  Model paths that are not regular files (a device, a
FIFO) are refused without reading them.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ichrt.runtime.contract import ContractError, ModelContract

INPUT_NAME = "image"
OUTPUT_NAMES = ("probs", "logits", "features")

#: ``--provider`` value -> ONNX Runtime execution providers, best first (CPU always last).
PROVIDER_CHAINS: dict[str, tuple[str, ...]] = {
    "tensorrt": ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
    "cuda": ("CUDAExecutionProvider", "CPUExecutionProvider"),
    "cpu": ("CPUExecutionProvider",),
}
PROVIDERS = ("auto", *PROVIDER_CHAINS)
_GPU_PROVIDERS = {"TensorrtExecutionProvider", "CUDAExecutionProvider"}
#: Where the shipped models live (package data).
MODELS_DIR = Path(__file__).resolve().parent / "models"
#: The shipped model that scores by default: the INT8 twin of :data:`DEFAULT_FP32_MODEL`, which
#: passed the INT8 accuracy gate on real held-out and phantom data (docs/eval/int8-gate.json).
DEFAULT_MODEL = MODELS_DIR / "default-int8.onnx"
#: The shipped FP32 model, with its torch twin ``default.pt`` beside it: Grad-CAM's model.
DEFAULT_FP32_MODEL = MODELS_DIR / "default.onnx"
#: Explanation methods that need the FP32 weights (the torch twin): with no model given they
#: get :data:`DEFAULT_FP32_MODEL` (:func:`default_model_for`).
GRADIENT_METHODS = ("gradcam", "gradcampp")
#: Environment variable with the SHA-256 (or comma-separated hashes) of the only model files
#: this installation may run.
PIN_ENV = "ICHRT_REQUIRE_SHA256"
#: Largest model file read (protobuf's limit for one ONNX file).
MAX_MODEL_BYTES = 2 << 30
_SHA256 = re.compile(r"[0-9a-f]{64}")


class ModelError(RuntimeError):
    """A model file that cannot be used (missing, unreadable, or not an ichrt model)."""


class ProviderUnavailable(ModelError):
    """The execution provider asked for is not in this onnxruntime install (a usage error)."""


class ModelNotPinned(ModelError):
    """The model file's SHA-256 is not the one this site requires."""


@dataclass
class LoadedModel:
    """An ONNX Runtime session with the contract and identity of the model file it came from."""

    session: ort.InferenceSession
    contract: ModelContract
    path: Path
    sha256: str
    providers: list[str] = field(default_factory=list)
    #: The SHA-256 values the file was checked against (empty: no pin was required).
    pinned_to: tuple[str, ...] = ()
    #: Batches the scoring pipeline runs at once (each with the session's intra-op threads).
    streams: int = 1

    @property
    def short_hash(self) -> str:
        """The first 12 hex digits of the file's SHA-256, for printing."""
        return self.sha256[:12]

    @property
    def display_name(self) -> str:
        """``name (sha256:abcdef012345)`` for logs and the terminal summary."""
        return f"{self.contract.name} (sha256:{self.short_hash})"

    @property
    def on_gpu(self) -> bool:
        return bool(self.providers) and self.providers[0] in _GPU_PROVIDERS

    def run(
        self, batch: np.ndarray, outputs: tuple[str, ...] = OUTPUT_NAMES
    ) -> dict[str, np.ndarray]:
        """Run one batch (N, C, S, S) float32; returns the requested outputs by name."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if not self.on_gpu:
            return dict(zip(outputs, self.session.run(list(outputs), {INPUT_NAME: batch})))
        binding = self.session.io_binding()
        binding.bind_cpu_input(INPUT_NAME, batch)
        for name in outputs:
            binding.bind_output(name)
        self.session.run_with_iobinding(binding)
        return dict(zip(outputs, binding.copy_outputs_to_cpu()))


def default_model_path(fp32: bool = False) -> Path:
    """A model shipped as package data: the scoring default (``models/default-int8.onnx``), or
    with ``fp32`` the FP32 model (``models/default.onnx``, whose torch twin Grad-CAM needs).

    Raises:
        ModelError: when the package was installed without it.
    """
    path = DEFAULT_FP32_MODEL if fp32 else DEFAULT_MODEL
    if not path.is_file():
        raise ModelError(
            f"the default model is missing from the installation ({path}); "
            "pass --model PATH or reinstall ichrt"
        )
    return path


def default_model_for(explain: str | None = None) -> Path:
    """The shipped model to load when none is given for a run explained with ``explain``: FP32
    for the gradient methods (:data:`GRADIENT_METHODS`), else the INT8 scoring default."""
    return default_model_path(fp32=explain in GRADIENT_METHODS)


def physical_cores() -> int:
    """Physical cores this process may use (hyper-threads counted once; affinity respected)."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    usable = usable or 1
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return usable
    cores, physical = set(), "0"
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "physical id":
            physical = value.strip()
        elif key == "core id":
            cores.add((physical, value.strip()))
    return max(1, min(usable, len(cores) or usable))


def resolve_providers(provider: str = "auto") -> list[str]:
    """The execution providers to ask ONNX Runtime for, best first.

    ``auto`` picks TensorRT, then CUDA, then CPU among those installed (onnxruntime-gpu provides
    the GPU ones).  A named provider that is not installed is an error, not a silent fallback.
    """
    available = set(ort.get_available_providers())
    if provider == "auto":
        return [p for p in PROVIDER_CHAINS["tensorrt"] if p in available]
    if provider not in PROVIDER_CHAINS:
        raise ProviderUnavailable(f"unknown provider {provider!r}; choose one of {', '.join(PROVIDERS)}")
    chain = PROVIDER_CHAINS[provider]
    if chain[0] not in available:
        raise ProviderUnavailable(
            f"provider {provider!r} needs {chain[0]}, which this onnxruntime does not have "
            f"(available: {', '.join(sorted(available))}); install the 'gpu' extra "
            "(onnxruntime-gpu replaces onnxruntime)"
        )
    return [p for p in chain if p in available]


def session_options(threads: int | None = None, spinning: bool = False) -> ort.SessionOptions:
    """Options for a shared edge box (see the module docstring)."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads or physical_cores()
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "1" if spinning else "0")
    return opts


def parse_pins(value: str | Iterable[str] | None) -> tuple[str, ...]:
    """SHA-256 hex digests from ``"abc...,def..."`` or a list (``sha256:`` prefixes allowed).

    Raises:
        ValueError: a value that is not 64 hex digits.
    """
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else list(value)
    pins = []
    for item in (str(i).strip().lower() for i in items):
        item = item.removeprefix("sha256:")
        if not item:
            continue
        if not _SHA256.fullmatch(item):
            raise ValueError(f"not a SHA-256 (64 hex digits): {item[:80]!r}")
        pins.append(item)
    return tuple(pins)


def required_pins(require_sha256: str | Iterable[str] | None = None) -> tuple[str, ...]:
    """The hashes a model must have: ``require_sha256`` if given, else ``$ICHRT_REQUIRE_SHA256``."""
    if require_sha256 is None:
        require_sha256 = os.environ.get(PIN_ENV) or None
    return parse_pins(require_sha256)


def check_pin(sha256: str, pins: tuple[str, ...], path: str | Path) -> None:
    """Refuse a model file whose hash is not among ``pins`` (no pins: anything goes)."""
    if pins and sha256 not in pins:
        wanted = ", ".join(p[:12] for p in pins)
        raise ModelNotPinned(
            f"{path}: model sha256 {sha256} is not the model this site requires "
            f"(sha256 {wanted}..., set by --require-sha256 or {PIN_ENV}); refusing to run it")


def read_model_file(path: Path) -> bytes:
    """The bytes of a model file; devices, FIFOs and files over 2 GiB are refused unread."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ModelError(f"{path}: cannot read the model file: {exc.strerror or exc}") from exc
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ModelError(f"{path}: not a regular file (a device, FIFO or socket): "
                             "not a model")
        if info.st_size > MAX_MODEL_BYTES:
            raise ModelError(f"{path}: {info.st_size} bytes, larger than any ONNX model can be")
        try:
            return fh.read(MAX_MODEL_BYTES + 1)
        except OSError as exc:
            raise ModelError(f"{path}: cannot read the model file: {exc.strerror or exc}") from exc


def load_model(
    path: str | Path | None = None,
    provider: str = "auto",
    threads: int | None = None,
    spinning: bool = False,
    require_sha256: str | Iterable[str] | None = None,
    streams: int | str = 1,
) -> LoadedModel:
    """Load an ichrt model (the shipped scoring default, INT8, when ``path`` is None).

    ``streams``: batches a scoring pipeline may run at once (:attr:`LoadedModel.streams`);
    ``"auto"``: on a CPU without ``threads`` given, one single-threaded run per physical core
    (:func:`run_layout`), else 1.

    ``require_sha256``: the hash(es) the file must have (default: ``$ICHRT_REQUIRE_SHA256``);
    checked before ONNX Runtime sees the file.

    Raises:
        ModelError: the file is missing, not a regular file, not an ONNX model, breaks the I/O
            convention, or (:class:`ModelNotPinned`) is not the pinned model.
        ContractError: its preprocessing contract is missing or invalid (names the file).
        ValueError: ``require_sha256`` is not a SHA-256.
    """
    path = Path(path) if path is not None else default_model_path()
    pins = required_pins(require_sha256)
    data = read_model_file(path)
    sha256 = hashlib.sha256(data).hexdigest()
    check_pin(sha256, pins, path)
    providers = resolve_providers(provider)
    threads, streams = run_layout(providers, threads, streams)
    try:
        session = ort.InferenceSession(
            data, sess_options=session_options(threads, spinning), providers=providers
        )
    except Exception as exc:  # ORT raises its own (non-public) exception types for bad files
        raise ModelError(f"{path}: not a usable ONNX model: {exc}") from exc
    contract = ModelContract.from_metadata(
        session.get_modelmeta().custom_metadata_map, source=str(path)
    )
    check_io(session, contract, path)
    return LoadedModel(
        session=session,
        contract=contract,
        path=path,
        sha256=sha256,
        providers=list(session.get_providers()),
        pinned_to=pins,
        streams=streams,
    )


def run_layout(providers: list[str], threads: int | None, streams: int | str
               ) -> tuple[int | None, int]:
    """(intra-op threads, concurrent runs) for a session on ``providers``.

    ``streams="auto"`` on a CPU with ``threads`` unset gives one thread per run and one run per
    physical core: measured on 2 cores, two single-threaded runs at once score 6-17% more slices
    per second than one run on two threads, and a reader thread that preempts one of them
    delays that run alone, where two threads of one run wait for each other at every step.
    """
    if streams != "auto":
        return threads, max(1, int(streams))
    if threads is not None or providers[:1] != ["CPUExecutionProvider"]:
        return threads, 1
    return 1, physical_cores()


def check_io(session: ort.InferenceSession, contract: ModelContract, path: Path) -> None:
    """Refuse a model whose inputs/outputs do not follow the ichrt convention or its contract."""
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    problems = []
    if list(inputs) != [INPUT_NAME]:
        problems.append(f"expected one input named {INPUT_NAME!r}, found {sorted(inputs)}")
    else:
        shape = inputs[INPUT_NAME].shape
        expected = (contract.channels, contract.input_size, contract.input_size)
        if len(shape) != 4:
            problems.append(f"input {INPUT_NAME!r} must be 4-D (N, C, S, S), found {shape}")
        elif any(isinstance(d, int) and d != e for d, e in zip(shape[1:], expected)):
            problems.append(f"input shape {shape} does not match the contract (N, *{expected})")
    missing = [name for name in OUTPUT_NAMES if name not in outputs]
    if missing:
        problems.append(f"missing outputs {missing} (found {sorted(outputs)})")
    else:
        n_labels = outputs["probs"].shape[-1]
        if isinstance(n_labels, int) and n_labels != len(contract.labels):
            problems.append(f"'probs' has {n_labels} labels, the contract {len(contract.labels)}")
        shape = outputs["features"].shape
        n_feat = shape[1] if len(shape) == 4 else None
        n_cam = len(contract.cam_weights[0]) if contract.cam_weights is not None else n_feat
        if isinstance(n_feat, int) and n_feat != n_cam:
            problems.append(f"'features' has {n_feat} channels, cam_weights {n_cam}")
    if contract.lesion_stride is not None:
        if "lesion" not in outputs:
            problems.append("the contract has a lesion_stride but the model no 'lesion' output")
        else:
            shape = outputs["lesion"].shape
            side = contract.input_size // contract.lesion_stride
            if len(shape) != 4 or any(isinstance(d, int) and d != e
                                      for d, e in zip(shape[1:], (1, side, side))):
                problems.append(f"'lesion' output {shape} is not (N, 1, {side}, {side})")
    if problems:
        raise ModelError(f"{path}: not an ichrt model: " + "; ".join(problems))


__all__ = [
    "ContractError",
    "LoadedModel",
    "ModelError",
    "ModelNotPinned",
    "ProviderUnavailable",
    "default_model_for",
    "default_model_path",
    "load_model",
    "physical_cores",
    "resolve_providers",
    "session_options",
]
