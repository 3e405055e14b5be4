"""FP32 versus INT8 (static QDQ) on a ResNet-18-shaped model: ms per slice, speed-up, fidelity.

Run with ``pytest benchmarks/bench_quantize.py --benchmark-enable``. The model is ResNet-18 as
torchvision builds it (7x7 stem, max pool, 4 stages of 2 basic blocks, 64-512 channels, batch
norm folded into the convolutions) with the ichrt head (``features`` -> global average pooling ->
linear -> sigmoid), written with ``onnx.helper`` and He-initialized random weights, so it needs
no torch and no download. Calibration and timing use windowed phantom slices.

Each INT8 format (``u8s8``, ``u8s8-rr``, ``s8s8``, ``u8u8``; MinMax ranges, per-channel weights)
is benchmarked by pytest-benchmark, and its ``extra_info`` records the speed-up over FP32 measured
in the same process with interleaved rounds, the maximum probability difference, the CAM
correlation, and what VPMADDUBSW saturation would do on CPUs without VNNI (the share of weight
pairs that can overflow, and the share of convolution outputs that do on the held-out slices).
Nothing asserts a wall-clock time.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ichrt.calibration.quantize import (
    FORMATS,
    CamAgreement,
    QuantSpec,
    cpu_has_vnni,
    ms_per_slice,
    prepare_model,
    quantize,
)
from ichrt.calibration.reader import SliceCalibrationReader
from ichrt.calibration.saturation import saturated_outputs, saturation_pairs
from ichrt.runtime.contract import ModelContract
from ichrt.runtime.session import LoadedModel, load_model

INPUT_SIZE = 224
BATCH = 8
SEED = 20250


def make_resnet18(path: Path, input_size: int = INPUT_SIZE, seed: int = 0, width: float = 1.0
                  ) -> ModelContract:
    """Write a ResNet-18-shaped ichrt model with random weights; return its contract.

    ``width`` scales every channel count (1.0 = ResNet-18's 64-512).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits, nodes = [], []

    def conv(x: str, cin: int, cout: int, k: int, stride: int, relu: bool = True,
             gain: float = 1.0) -> str:
        i = len(nodes)
        w = rng.normal(0, gain * np.sqrt(2.0 / (cin * k * k)), (cout, cin, k, k))
        inits.append(numpy_helper.from_array(w.astype(np.float32), f"w{i}"))
        inits.append(numpy_helper.from_array(rng.normal(0, 0.05, cout).astype(np.float32),
                                             f"b{i}"))
        nodes.append(helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], name=f"conv{i}",
                                      kernel_shape=[k, k], strides=[stride] * 2,
                                      pads=[k // 2] * 4))
        if not relu:
            return f"c{i}"
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}"))
        return f"r{i}"

    stem, *stages = (max(4, round(c * width)) for c in (64, 64, 128, 256, 512))
    x = conv("image", 3, stem, 7, 2)
    nodes.append(helper.make_node("MaxPool", [x], ["pool"], name="pool", kernel_shape=[3, 3],
                                  strides=[2, 2], pads=[1, 1, 1, 1]))
    x, cin = "pool", stem
    for stage, cout in enumerate(stages):
        for block in range(2):
            stride = 2 if stage and not block else 1
            h = conv(conv(x, cin, cout, 3, stride), cout, cout, 3, 1, relu=False, gain=0.5)
            skip = conv(x, cin, cout, 1, stride, relu=False) if stride > 1 or cin != cout else x
            out = "features" if (stage, block) == (3, 1) else f"s{stage}b{block}"
            nodes.append(helper.make_node("Add", [h, skip], [out + "_sum"], name=out + "_add"))
            nodes.append(helper.make_node("Relu", [out + "_sum"], [out], name=out + "_relu"))
            x, cin = out, cout
    n_labels = 6
    fc_w = rng.normal(0, 0.05, (n_labels, cin)).astype(np.float32)
    fc_b = np.full(n_labels, -1.0, np.float32)
    inits += [numpy_helper.from_array(fc_w, "fc_w"), numpy_helper.from_array(fc_b, "fc_b")]
    nodes += [
        helper.make_node("GlobalAveragePool", ["features"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["pooled"], name="flatten", axis=1),
        helper.make_node("Gemm", ["pooled", "fc_w", "fc_b"], ["logits"], name="fc", transB=1),
        helper.make_node("Sigmoid", ["logits"], ["probs"], name="sigmoid"),
    ]
    graph = helper.make_graph(
        nodes, "resnet18",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, input_size,
                                                                    input_size])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", n_labels]),
         helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", n_labels]),
         helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", cin, "h", "w"])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    contract = ModelContract(
        input_size=input_size, arch="resnet18-random", name=f"bench-resnet18-w{width:g}",
        cam_weights=tuple(tuple(float(v) for v in row) for row in fc_w),
        cam_bias=tuple(float(v) for v in fc_b),
    )
    for key, value in contract.to_metadata().items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))
    return contract


def phantom_hu(seed: int, n_slices: int) -> list[np.ndarray]:
    """Slices of one phantom study (256 x 256 HU) from the runtime's generator."""
    from ichrt.runtime.synth import generate_study

    return list(generate_study(seed, n_slices=n_slices, size=256).hu)


@pytest.fixture(scope="module")
def models(request, tmp_path_factory) -> dict[str, LoadedModel]:
    """The FP32 model and one INT8 model per format, calibrated on 16 phantom slices.

    Full width when benchmarks run; a quarter of the channels in ordinary test runs, where
    only the code path is checked.
    """
    config = request.config
    enabled = config.getoption("benchmark_enable") or not config.getoption("benchmark_disable")
    work = tmp_path_factory.mktemp("bench-quant")
    contract = make_resnet18(work / "fp32.onnx", width=1.0 if enabled else 0.25)
    reader = SliceCalibrationReader.from_hu(phantom_hu(SEED, 16), contract, batch_size=BATCH)
    prepared = prepare_model(work / "fp32.onnx", work / "prepared.onnx")
    loaded = {"fp32": load_model(work / "fp32.onnx", provider="cpu")}
    for fmt in FORMATS:
        path = quantize(prepared, reader, work / f"{fmt}.onnx", QuantSpec("minmax", fmt),
                        cache=work / "ranges.json")
        loaded[fmt] = load_model(path, provider="cpu")
    return loaded


@pytest.fixture(scope="module")
def heldout() -> np.ndarray:
    """A held-out batch of windowed phantom slices (another study, another seed)."""
    from ichrt.calibration.batches import hu_batches

    return next(hu_batches(phantom_hu(SEED + 1, BATCH), ModelContract(input_size=INPUT_SIZE),
                           batch_size=BATCH))


@pytest.mark.parametrize("fmt", ["fp32", *FORMATS])
def test_fp32_vs_int8(benchmark, models: dict[str, LoadedModel], heldout: np.ndarray,
                      fmt: str) -> None:
    model = models[fmt]
    out = benchmark(model.run, heldout, ("logits",))
    assert out["logits"].shape == (BATCH, 6)
    info: dict = {"format": fmt, "batch": BATCH, "input_size": INPUT_SIZE,
                  "cpu_vnni": cpu_has_vnni(), "model": models["fp32"].contract.name}
    if fmt != "fp32":
        ref, cand = models["fp32"].run(heldout), model.run(heldout)
        cams = CamAgreement()
        cams.add(ref, cand, models["fp32"].contract)
        speeds = ms_per_slice({"fp32": models["fp32"], fmt: model}, heldout, repeats=5)
        max_dp = float(np.abs(ref["probs"] - cand["probs"]).max())
        assert cand["features"].shape == ref["features"].shape  # CAM input survives
        assert max_dp < 0.2
        info.update(ms_per_slice_fp32=speeds["fp32"], ms_per_slice_int8=speeds[fmt],
                    speedup=speeds["fp32"] / speeds[fmt], max_prob_diff=max_dp,
                    saturation_pairs=saturation_pairs(model.path),
                    saturation_share=saturated_outputs(model.path, heldout)["share"],
                    **cams.summary())
    benchmark.extra_info.update(info)
