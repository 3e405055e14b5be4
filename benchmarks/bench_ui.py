"""The worklist page with 500 studies: render time and page weight.

Run with ``pytest benchmarks/bench_ui.py --benchmark-enable -s`` (figures are printed and put in
the benchmark's ``extra_info``).  Nothing here asserts a wall-clock time (goal: under 1 s).

A round reads an ``ichrt score`` output folder holding 500 studies (``worklist.json`` as the
scorer writes it, 40 flagged) and renders the whole worklist page from it: the work a browser's
first request costs (the thumbnails are separate, lazily loaded requests).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("jinja2", reason="needs the 'ui' extra")

from ichrt.runtime.contract import LABELS
from ichrt.runtime.ui.app import Pages
from ichrt.runtime.ui.sources import ResultsSource

STUDIES = 500
FLAGGED = 40


def write_results(folder: Path, n: int = STUDIES, flagged: int = FLAGGED, seed: int = 0) -> Path:
    """An output folder of ``ichrt score`` with ``n`` studies (no DICOM files behind it)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    studies = []
    for i in range(n):
        hot = i < flagged
        p_any = float(rng.uniform(0.96, 1.0) if hot else rng.uniform(0.0, 0.9))
        record = {"rank": i + 1, "study_instance_uid": f"2.25.{10**30 + i * 7919}",
                  "accession_number": f"PH{i:08d}", "n_slices": int(rng.integers(24, 41)),
                  "n_rejected": int(rng.integers(0, 2)), "scored": True, "p_any": round(p_any, 6)}
        record.update({f"p_{label}": round(float(rng.uniform(0, p_any)), 6)
                       for label in LABELS[1:]})
        record.update(flagged=hot, volume_ml=round(float(rng.uniform(1, 60)), 2) if hot else None,
                      key_slice_sop_instance_uid=f"2.25.{10**31 + i}",
                      key_slice_instance_number=int(rng.integers(1, 25)),
                      arrival=f"2026-11-{1 + i // 48:02d}T{(i // 2) % 24:02d}:{i % 60:02d}:00",
                      arrival_source="study")
        studies.append(record)
    model = {"name": "ichrt-resnet10-160", "sha256": "0" * 64, "arch": "resnet10",
             "pinned": False}
    counts = {"inputs": n * 32, "scored_slices": n * 32, "rejected": 0, "studies": n,
              "flagged": flagged, "not_scored_studies": 0}
    doc = {"model": model, "labels": list(LABELS), "threshold": 0.958, "counts": counts,
           "studies": studies, "rejected": [], "explanations": []}
    (folder / "worklist.json").write_text(json.dumps(doc, indent=2))
    (folder / "run.json").write_text(json.dumps({"model": model, "counts": counts,
                                                 "finished": "2026-11-29T12:00:00+00:00"}))
    return folder


def test_worklist_page_with_500_studies(benchmark, tmp_path) -> None:
    results = write_results(tmp_path / "results")

    def render() -> str:  # a cold source each round: the JSON is parsed again
        return Pages(ResultsSource(results, [tmp_path])).worklist()

    html = benchmark(render)
    assert html.count('<tr class=') == STUDIES
    raw = len(html.encode())
    zipped = len(gzip.compress(html.encode(), 6))
    benchmark.extra_info.update(studies=STUDIES, page_bytes=raw, page_bytes_gzip=zipped)
    stats = getattr(benchmark, "stats", None)
    mean = f"{stats.stats.mean * 1000:.1f} ms" if stats else "(benchmark disabled)"
    print(f"\nworklist page, {STUDIES} studies: {mean}; {raw} bytes ({zipped} gzip)")
