"""What VPMADDUBSW saturation would do to an INT8 model on x86 CPUs without VNNI.

ONNX Runtime's U8S8 convolution kernels for AVX2 without VNNI multiply uint8 activations by int8
weights with VPMADDUBSW, which adds each ADJACENT pair of products (along the reduction axis) into
a SATURATING int16 before widening: ``a0 * w0 + a1 * w1`` is clipped to [-32768, 32767]. With
8-bit weights, two large products of the same sign overflow (255 * (|w0| + |w1|) > 32767 as soon
as |w0| + |w1| > 128); with 7-bit weights (``reduce_range``) they never can. CPUs with VNNI or
AMX (VPDPBUSD) accumulate in int32 and never saturate, so a model built and checked on such a CPU
can still misbehave on an AVX2-only edge box. S8 activations take the same kernel after a +128
shift.

Two measures, both independent of the CPU this runs on:

* :func:`saturation_pairs`: the share of adjacent weight pairs that CAN overflow (static);
* :func:`saturated_outputs`: the share of convolution outputs that DO hit an overflow on given
  inputs, computed exactly from the model's own uint8 activations (only at-risk pairs are
  evaluated, so it is cheap).

Pairs are taken in both layouts ONNX Runtime may pack the reduction axis in (channel-major OIHW
and channel-minor OHWI); the larger figure is reported.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

INT16_MAX = 32767
LAYOUTS = ("OIHW", "OHWI")


def _flat(w: np.ndarray, layout: str) -> np.ndarray:
    """(O, K) weights with the reduction axis in ``layout`` order."""
    ordered = w if layout == "OIHW" else w.transpose(0, 2, 3, 1)
    return ordered.reshape(w.shape[0], -1).astype(np.int32)


def risky_pairs(w: np.ndarray, layout: str) -> tuple[np.ndarray, np.ndarray]:
    """(output channel, first K index) of the pairs that can overflow at full-scale activations."""
    flat = _flat(w, layout)
    k = flat.shape[1] - flat.shape[1] % 2
    a, b = flat[:, 0:k:2], flat[:, 1:k:2]
    o, pair = np.nonzero((a * b > 0) & (np.abs(a) + np.abs(b) > INT16_MAX // 255))
    return o, 2 * pair


def _quantized_convs(model) -> list[tuple]:
    """(conv node, int8 weight array, activation tensor name, activation zero-point name)."""
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    convs = []
    for node in model.graph.node:
        if node.op_type != "Conv" or len(node.input) < 2:
            continue
        x_dq, w_dq = producers.get(node.input[0]), producers.get(node.input[1])
        if not (x_dq and w_dq and x_dq.op_type == w_dq.op_type == "DequantizeLinear"):
            continue
        if w_dq.input[0] not in inits:
            continue
        w = numpy_helper.to_array(inits[w_dq.input[0]])
        if w.dtype == np.int8 and w.ndim == 4:
            convs.append((node, w, x_dq.input[0], x_dq.input[2] if len(x_dq.input) > 2 else None))
    return convs


def saturation_pairs(model_path: str | Path) -> float:
    """Share of adjacent int8 conv weight pairs that can saturate (0 for reduce_range models)."""
    import onnx

    risky = total = 0
    for _, w, _, _ in _quantized_convs(onnx.load(str(model_path))):
        risky += max(risky_pairs(w, layout)[0].size for layout in LAYOUTS)
        total += w.shape[0] * (w[0].size // 2)
    return float(risky / total) if total else 0.0


def conv_attributes(node) -> dict:
    """Kernel, strides and pads of a Conv node (grouped/dilated ones raise NotImplementedError)."""
    from onnx import helper

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if attrs.get("group", 1) != 1 or any(d != 1 for d in attrs.get("dilations", [1, 1])):
        raise NotImplementedError("grouped or dilated convolution")
    return {"strides": tuple(attrs.get("strides", [1, 1])),
            "pads": tuple(attrs.get("pads", [0, 0, 0, 0]))}


def layer_saturation(x: np.ndarray, pad_value: int, w: np.ndarray, strides=(1, 1),
                     pads=(0, 0, 0, 0)) -> tuple[int, int]:
    """(outputs, outputs with an overflowing pair) of one convolution, worst layout.

    ``x``: unsigned activations (N, C, H, W) as stored (0..255); ``pad_value``: what padding
    reads as (the activation zero point); ``w``: int8 weights (O, C, kh, kw).
    """
    kh, kw = w.shape[2:]
    pt, pl, pb, pr = pads
    padded = np.pad(np.asarray(x, np.int32), ((0, 0), (0, 0), (pt, pb), (pl, pr)),
                    constant_values=pad_value)
    windows = np.lib.stride_tricks.sliding_window_view(padded, (kh, kw), axis=(2, 3))
    patches = windows[:, :, ::strides[0], ::strides[1]]
    n, _, ho, wo = patches.shape[:4]
    worst = 0
    for layout in LAYOUTS:
        flat_w = _flat(w, layout)
        hit = np.zeros((w.shape[0], n, ho, wo), bool)
        for o, k in zip(*risky_pairs(w, layout)):
            a0, a1 = (_patch_column(patches, k + d, layout, kh, kw) for d in (0, 1))
            s = a0 * flat_w[o, k] + a1 * flat_w[o, k + 1]
            hit[o] |= (s > INT16_MAX) | (s < -INT16_MAX - 1)
        worst = max(worst, int(hit.sum()))
    return n * ho * wo * w.shape[0], worst


def saturated_outputs(model_path: str | Path, tensor: np.ndarray) -> dict[str, float]:
    """Share of int8 convolution outputs whose U8S8 sum would saturate on ``tensor``.

    Runs the QDQ model (unfused, so its uint8 activations can be read) and, for each at-risk
    weight pair, checks on every output position whether ``a0 * w0 + a1 * w1`` leaves int16.
    Returns ``{"outputs", "affected", "share"}``; grouped or dilated convolutions are skipped.
    """
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    model = onnx.load(str(model_path))
    convs = _quantized_convs(model)
    inits = {t.name: t for t in model.graph.initializer}
    wanted = sorted({c[2] for c in convs})
    existing = {o.name for o in model.graph.output}
    for name in wanted:
        if name not in existing:
            model.graph.output.append(onnx.ValueInfoProto(name=name))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), opts,
                                   providers=["CPUExecutionProvider"])
    acts = dict(zip(wanted, session.run(wanted, {"image": np.asarray(tensor, np.float32)})))
    outputs = affected = 0
    for node, w, act_name, zp_name in convs:
        x = acts[act_name].astype(np.int32)
        zp = int(numpy_helper.to_array(inits[zp_name]).ravel()[0]) if zp_name in inits else 0
        if acts[act_name].dtype == np.int8:  # s8 activations run the u8 kernel shifted by 128
            x, zp = x + 128, zp + 128
        try:
            attrs = conv_attributes(node)
        except NotImplementedError:
            continue
        n_out, n_hit = layer_saturation(x, zp, w, **attrs)
        outputs += n_out
        affected += n_hit
    return {"outputs": outputs, "affected": affected,
            "share": affected / outputs if outputs else 0.0}


def _patch_column(patches: np.ndarray, k: int, layout: str, kh: int, kw: int) -> np.ndarray:
    """Activation ``k`` of the reduction axis at every output position: (N, Ho, Wo)."""
    if layout == "OIHW":
        c, rest = divmod(k, kh * kw)
        i, j = divmod(rest, kw)
    else:
        c_in = patches.shape[1]
        i, rest = divmod(k, kw * c_in)
        j, c = divmod(rest, c_in)
    return patches[:, c, :, :, i, j]
