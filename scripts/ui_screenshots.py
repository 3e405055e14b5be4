"""Screenshots of the worklist page for the README: docs/ui-worklist.png and docs/ui-study.png.

A real run: ``ichrt synth`` phantoms (seed 90210, the demo's seed), ``ichrt score`` with the
shipped model, the page served over its output folder, and headless Chromium (Selenium)
photographing the worklist and the study view of the top flagged study.

    python scripts/ui_screenshots.py [--out docs]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from ui_helpers import chrome, serving

from ichrt.runtime.environment import quiet_pydicom
from ichrt.runtime.ui.app import create_app
from ichrt.runtime.ui.sources import ResultsSource, model_contract


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    ichrt = str(Path(sys.executable).with_name("ichrt"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        subprocess.run([ichrt, "synth", "--out", str(tmp / "ph"), "--studies", "8", "--seed",
                        "90210", "--size", "256", "--slices", "16-20", "--prevalence", "0.5"],
                       check=True, stdout=subprocess.DEVNULL)
        done = subprocess.run([ichrt, "score", str(tmp / "ph" / "stage_2_train"), "--out",
                               str(tmp / "results")], check=False)
        assert done.returncode in (0, 3), done.returncode
        source = ResultsSource(tmp / "results", [tmp])
        model = source.snapshot().model
        app = create_app(source, contract=lambda: model_contract(model.get("path"),
                                                                 model.get("sha256")))
        with quiet_pydicom(), serving(app) as base, chrome(tmp / "profile", 1280, 760) as browser:
            browser.get(base + "/")
            time.sleep(1.5)  # thumbnails
            browser.save_screenshot(str(args.out / "ui-worklist.png"))
            top = source.snapshot().studies[0]
            browser.set_window_size(1280, 800)
            browser.get(f"{base}/study/{top.key}")
            time.sleep(1.5)
            browser.save_screenshot(str(args.out / "ui-study.png"))
    print(f"wrote {args.out / 'ui-worklist.png'} and {args.out / 'ui-study.png'}")


if __name__ == "__main__":
    main()
