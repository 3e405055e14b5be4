"""A tiny ichrt-shaped ONNX model built with ``onnx.helper`` (no torch), for fast tests.

Same interface as an exported model: input ``image`` (N, C, S, S) float32; outputs ``probs`` and
``logits`` (N, labels) and ``features`` (N, K, h, w); head = global average pooling + one linear
layer, whose weights are stored in the contract as ``cam_weights`` / ``cam_bias``.

Its ``any`` logit grows with the mean of the first (brain-window) channel inside a bright blob, so
tests can build inputs it flags and inputs it does not.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ichrt.runtime.contract import ModelContract


def make_tiny_model(
    path: str | Path,
    contract: ModelContract | None = None,
    features: int = 4,
    stride: int = 4,
    seed: int = 0,
    with_contract: bool = True,
    lesion: bool = False,
) -> ModelContract:
    """Write a tiny model to ``path`` and return the contract stored in it.

    With ``lesion`` it is a lesion-level model: an extra output ``lesion`` (N, 1, S/stride,
    S/stride) whose logits rise with the brain-window channel (contract ``lesion_stride``).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    base = contract or ModelContract(input_size=32, name="tiny-test-model", arch="tiny")
    c_in, n_lab = base.channels, len(base.labels)
    conv_w = (rng.normal(0, 0.3, (features, c_in, 3, 3))).astype(np.float32)
    conv_w[0] = 0.0
    conv_w[0, 0, 1, 1] = 1.0  # feature 0 = brain-window channel (normalized), sampled
    conv_b = np.zeros(features, np.float32)
    fc_w = rng.normal(0, 0.5, (n_lab, features)).astype(np.float32)
    fc_w[:, 0] = 4.0  # every label rises with the brain-window mean
    fc_b = np.full(n_lab, -2.0, np.float32)
    contract = base.with_updates(
        cam_weights=tuple(tuple(float(v) for v in row) for row in fc_w),
        cam_bias=tuple(float(v) for v in fc_b),
        lesion_stride=stride if lesion else base.lesion_stride,
    )
    nodes = [
        helper.make_node("Conv", ["image", "conv_w", "conv_b"], ["conv"], kernel_shape=[3, 3],
                         strides=[stride, stride], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["features"]),
        helper.make_node("GlobalAveragePool", ["features"], ["pooled4"]),
        helper.make_node("Flatten", ["pooled4"], ["pooled"], axis=1),
        helper.make_node("Gemm", ["pooled", "fc_w", "fc_b"], ["logits"], transB=1),
        helper.make_node("Sigmoid", ["logits"], ["probs"]),
    ]
    outputs = [
        helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", n_lab]),
        helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", n_lab]),
        helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", features, "h", "w"]),
    ]
    inits = [(conv_w, "conv_w"), (conv_b, "conv_b"), (fc_w, "fc_w"), (fc_b, "fc_b")]
    if lesion:
        les_w = np.zeros((1, features, 1, 1), np.float32)
        les_w[0, 0] = 8.0
        nodes.append(helper.make_node("Conv", ["features", "les_w", "les_b"], ["lesion"],
                                      kernel_shape=[1, 1]))
        outputs.append(helper.make_tensor_value_info("lesion", TensorProto.FLOAT,
                                                     ["N", 1, "h", "w"]))
        inits += [(les_w, "les_w"), (np.array([-4.0], np.float32), "les_b")]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", c_in, "S", "S"])],
        outputs,
        [numpy_helper.from_array(a, n) for a, n in inits],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if with_contract:
        for key, value in contract.to_metadata().items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return contract

