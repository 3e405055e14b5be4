"""Windowing speed: the Numba kernel against three baselines, in the same process.

On a batch of 64 stored-value int16 slices of 512 x 512 (a head phantom, intercept -1024),
two cases: resized to 224 (the default contract) and kept at 512 (no resize). Methods:

* ``kernel``: :func:`ichrt.runtime.windowing.window_batch`, one fused pass;
* ``reference``: :func:`ichrt.runtime.windowing.window_reference`, plain NumPy;
* ``seed``: the seed's way, slice by slice: cast to float, clip with boolean masks, one copy
  per window, a simple NumPy bilinear resize per channel, normalize;
* ``memcpy``: ``np.copyto`` of as many bytes as the kernel writes (the float32 output), the
  floor for any implementation.

Each entry records ms per slice (the fastest round: the CPU is shared) in ``extra_info``; the
kernel's entry also holds its ratios, and a summary table is printed at the end of the session.
Goals: kernel at least 20x faster than ``seed``; at most 3x slower than ``memcpy``.

With ``--benchmark-disable`` (the default in this project) every method runs once on 4 slices
and only the agreement between the kernel and the seed-style loop is checked.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from ichrt.runtime.contract import ModelContract
from ichrt.runtime.windowing import window_batch, window_reference

SLICES = 64
SIDE = 512
INTERCEPT = -1024.0
CASES = {"resize-224": 224, "native-512": 512}
#: Benchmark order within a case: the kernel last, so that its entry can hold the ratios.
METHODS = ("memcpy", "seed", "reference", "kernel")
ROUNDS = {"memcpy": 20, "seed": 3, "reference": 3, "kernel": 20}
#: (case, method) -> ms per slice, filled as the benchmarks run.
RESULTS: dict[tuple[str, str], float] = {}


@pytest.fixture(scope="module")
def quick(request: pytest.FixtureRequest) -> bool:
    """True when benchmarks are disabled: run each method once on a few slices."""
    config = request.config
    return bool(config.getoption("benchmark_disable") and not config.getoption("benchmark_enable"))


@pytest.fixture(scope="module")
def raw(quick: bool, request: pytest.FixtureRequest) -> np.ndarray:
    """Stored values (HU + 1024) of a noisy elliptic head phantom, int16 (N, 512, 512)."""
    if not quick:
        request.config.pluginmanager.register(_Summary(), "ichrt-bench-windowing-summary")
    n = 4 if quick else SLICES
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:SIDE, :SIDE]
    r = np.hypot((yy - 250) / 190.0, (xx - 256) / 160.0)
    hu = np.where(r < 1.0, 900.0, -1000.0)
    hu[r < 0.93] = 35.0
    stored = hu + 1024 + rng.normal(0.0, 12.0, (n, SIDE, SIDE))
    return np.clip(stored, 0, 4095).astype(np.int16)


def seed_style(raw: np.ndarray, contract: ModelContract) -> np.ndarray:
    """The seed's per-slice windowing: masks, a copy per window, NumPy bilinear resize."""
    size = contract.input_size
    batch = []
    for image in raw:
        hu = image.astype(np.float32) + INTERCEPT
        channels = []
        for (level, width), mean, std in zip(contract.windows, contract.mean, contract.std):
            low, high = level - width / 2, level + width / 2
            window = hu.copy()
            window[window < low] = low
            window[window > high] = high
            window = (window - low) / width
            if window.shape != (size, size):
                window = _resize_bilinear(window, size)
            channels.append((window - mean) / std)
        batch.append(np.stack(channels).astype(np.float32))
    return np.stack(batch)


def _resize_bilinear(image: np.ndarray, size: int) -> np.ndarray:
    """A simple per-slice bilinear resize (pixel centres aligned, edges clamped)."""
    h, w = image.shape
    y = np.clip((np.arange(size) + 0.5) * h / size - 0.5, 0, h - 1)
    x = np.clip((np.arange(size) + 0.5) * w / size - 0.5, 0, w - 1)
    y0, x0 = np.floor(y).astype(int), np.floor(x).astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    fy, fx = (y - y0)[:, None], (x - x0)[None, :]
    top = image[y0][:, x0] * (1 - fx) + image[y0][:, x1] * fx
    bottom = image[y1][:, x0] * (1 - fx) + image[y1][:, x1] * fx
    return top * (1 - fy) + bottom * fy


def _method(name: str, raw: np.ndarray, contract: ModelContract) -> Callable[[], np.ndarray]:
    size = contract.input_size
    out = np.empty((raw.shape[0], contract.channels, size, size), np.float32)
    if name == "kernel":
        return lambda: window_batch(raw, contract, intercepts=INTERCEPT, out=out)
    if name == "reference":
        return lambda: window_reference(raw, contract, intercepts=INTERCEPT, out=out)
    if name == "seed":
        return lambda: seed_style(raw, contract)
    source = np.ones_like(out)
    return lambda: np.copyto(out, source)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("method", METHODS)
def test_windowing_speed(benchmark, quick: bool, raw: np.ndarray, case: str, method: str) -> None:
    contract = ModelContract(input_size=CASES[case], framing="none")
    run = _method(method, raw, contract)
    benchmark.group = f"windowing {case}: {raw.shape[0]} int16 slices {SIDE}x{SIDE}"
    result = benchmark.pedantic(
        run, rounds=1 if quick else ROUNDS[method], warmup_rounds=0 if quick else 1
    )
    if method in ("kernel", "reference", "seed"):
        assert result.shape == (raw.shape[0], 3, CASES[case], CASES[case])
    if method == "seed":
        # Like for like: the seed's loop computes the kernel's tensor (away from the border,
        # where the seed clamps and the kernel reads air).
        kernel = window_batch(raw, contract, intercepts=INTERCEPT)
        np.testing.assert_allclose(result[..., 1:-1, 1:-1], kernel[..., 1:-1, 1:-1], atol=1e-4)
    if quick:
        return
    ms = benchmark.stats.stats.min / raw.shape[0] * 1e3
    RESULTS[case, method] = ms
    benchmark.extra_info["ms_per_slice"] = round(ms, 4)
    if method == "kernel":
        benchmark.extra_info.update(_ratios(case))


def _ratios(case: str) -> dict[str, float]:
    """The kernel's speed-ups over the slower methods and its cost over the memory copy."""
    kernel = RESULTS[case, "kernel"]
    ratios = {
        f"speedup_vs_{m}": RESULTS[case, m] / kernel
        for m in ("seed", "reference")
        if (case, m) in RESULTS
    }
    if (case, "memcpy") in RESULTS:
        ratios["cost_vs_memcpy"] = kernel / RESULTS[case, "memcpy"]
    return {k: round(v, 2) for k, v in ratios.items()}


class _Summary:
    """Prints the ms per slice and the ratios at the end of the session."""

    def pytest_terminal_summary(self, terminalreporter) -> None:
        write = terminalreporter.write_line
        write("")
        write(f"windowing, {SLICES} int16 slices {SIDE}x{SIDE}: ms/slice (fastest round)")
        for case in CASES:
            times = "  ".join(
                f"{m} {RESULTS[case, m]:.3f}" for m in METHODS if (case, m) in RESULTS
            )
            write(f"  {case}: {times}")
            if (case, "kernel") in RESULTS:
                ratios = _ratios(case)
                write(
                    "    "
                    + "  ".join(f"{k} {v:.2f}x" for k, v in ratios.items())
                    + "   (goals: speedup_vs_seed >= 20, cost_vs_memcpy <= 3)"
                )
