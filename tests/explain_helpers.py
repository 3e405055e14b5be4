"""Helpers for the explanation tests: a torch model with its ONNX twin, brute-force Shapley values.

:func:`export_twin` writes what ``ichrt export`` ships (``<arch>.onnx`` with its contract and the
torch twin ``<arch>.pt`` beside it) from a randomly initialized IchNet.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from math import factorial
from pathlib import Path

import numpy as np

from ichrt.runtime.contract import ModelContract


def export_twin(folder: Path, arch: str = "resnet18", size: int = 96, seed: int = 0,
                framing: str = "none"):
    """(onnx path, torch net in eval mode, contract) of a random ``arch`` at ``size`` pixels.

    Goes through the real ``ichrt export`` path (:func:`ichrt.export.onnx_export.export_onnx`)
    from a minimal training checkpoint, so the ONNX file and its torch twin are the shipped kind.
    """
    import torch

    from ichrt.export.onnx_export import export_onnx
    from ichrt.nets import build_model

    torch.manual_seed(seed)
    net = build_model(arch, 6).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so export folding matters
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    base = ModelContract(input_size=size, framing=framing, arch=arch, name=f"twin-{arch}")
    checkpoint = Path(folder) / "checkpoint.pt"
    torch.save({"meta": {"contract": base.to_dict(), "config": {"arch": arch}},
                "model": net.state_dict()}, checkpoint)
    path = Path(folder) / f"{arch}.onnx"
    contract = export_onnx(checkpoint, path)
    return path, net, contract


def brute_shapley(value: Callable[[frozenset], float], players: int) -> np.ndarray:
    """Exact Shapley values by averaging marginal contributions over all player orders."""
    phi = np.zeros(players)
    for order in itertools.permutations(range(players)):
        present: set[int] = set()
        for p in order:
            before = value(frozenset(present))
            present.add(p)
            phi[p] += value(frozenset(present)) - before
    return phi / factorial(players)


def compose(x: np.ndarray, background: np.ndarray, boxes: Sequence[tuple[int, int, int, int]],
            coalition: frozenset) -> np.ndarray:
    """``x`` inside the boxes of the coalition's players, ``background`` everywhere else."""
    out = background.copy()
    for p in coalition:
        y0, x0, y1, x1 = boxes[p]
        out[..., y0:y1, x0:x1] = x[..., y0:y1, x0:x1]
    return out


def read_png(path: Path) -> np.ndarray:
    """Decode an 8-bit gray/RGB PNG written without row filters (as ichrt writes them)."""
    import struct
    import zlib

    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG file"
    pos, chunks = 8, {}
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        chunks[kind] = chunks.get(kind, b"") + data[pos + 8:pos + 8 + length]
        pos += 12 + length
    width, height, depth, colour = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    channels = {0: 1, 2: 3}[colour]
    assert depth == 8
    raw = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), np.uint8).reshape(height, -1)
    assert not raw[:, 0].any(), "row filters are not supported by this test reader"
    image = raw[:, 1:].reshape(height, width, channels)
    return image[..., 0] if channels == 1 else image
