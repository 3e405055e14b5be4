"""Memory stays flat however many studies are scored (bounded queues, no HU kept).

Each run happens in a fresh subprocess that writes N studies of 4 slices (256 x 256), warms up on
one study, then scores all of them under tracemalloc (NumPy reports its buffers to it).  Holding
the HU of every slice would cost 256 KiB per slice: 40 MiB more for 100 studies than for 10, so
the peak would grow about tenfold; with bounded queues it must stay nearly the same.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent

SCRIPT = r"""
import json, resource, sys, tracemalloc
from pathlib import Path
sys.path.insert(0, sys.argv[4])
from score_helpers import StudySpec, write_study
from ichrt.runtime.scorer import Scorer

root, n, model = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
for i in range(n):
    write_study(root, StudySpec(f"5.{i}", (0.0, 0.6, 0.0, 0.0), size=256), f"s{i:03d}")
scorer = Scorer(model, provider="cpu", threads=1, batch_size=8)
scorer.score([root / "s000"])  # warm-up: Numba, ONNX Runtime arenas, imports
tracemalloc.start()
result = scorer.score([root])
peak = tracemalloc.get_traced_memory()[1]
print(json.dumps({"peak": peak, "slices": len(result.slices), "flagged": len(result.flagged),
                  "rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def measure(tmp: Path, n: int, model: Path) -> dict:
    root = tmp / f"n{n}"
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(root), str(n), str(model), str(TESTS)],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_peak_memory_is_flat_from_10_to_100_studies(tiny_model, tmp_path: Path) -> None:
    small = measure(tmp_path, 10, tiny_model[0])
    large = measure(tmp_path, 100, tiny_model[0])
    assert (small["slices"], large["slices"]) == (40, 400)
    assert (small["flagged"], large["flagged"]) == (10, 100)
    ratio = large["peak"] / small["peak"]
    print(f"tracemalloc peak: 10 studies {small['peak'] / 2**20:.1f} MiB, "
          f"100 studies {large['peak'] / 2**20:.1f} MiB (ratio {ratio:.2f}); "
          f"max RSS {small['rss_kib'] / 1024:.0f} / {large['rss_kib'] / 1024:.0f} MiB")
    assert ratio < 1.5
    # 360 more slices of HU would be 90 MiB; allow well under one tenth of that.
    assert large["peak"] - small["peak"] < 8 * 2**20
