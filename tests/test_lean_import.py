"""The lean runtime: ``ichrt.runtime`` and its CLI never import the training stack.

Each check runs a fresh interpreter as on a lean install: a ``sitecustomize`` makes torch,
torchvision, PIL, cv2, scipy, sklearn and the web packages (starlette, jinja2, uvicorn,
selenium) unimportable and records who tried to import them.

* Every module under ``ichrt.runtime`` is walked and imported, nothing skipped: torch-only
  features (Grad-CAM in ``ichrt.runtime.explain.gradcam``) import torch inside the functions
  that need it, so their modules import on a lean install too.
* The ``ichrt`` console script's ``--help`` and the help of each runtime subcommand
  (``score --help`` among them) must succeed.

In both, no ``ichrt`` module may even try a heavy import, so none of them can end up in
``sys.modules``. Two runtime dependencies probe optional packages on import when present
(pydicom tries Pillow for its JPEG decoder, Numba tries SciPy); those attempts, and only
those, are allowed (:data:`THIRD_PARTY_PROBES`): without the packages both work as usual.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ichrt.runtime.cli import COMMANDS

#: Packages the lean runtime must not import (the web packages of the ``ui`` extra among them:
#: ``ichrt.runtime.ui`` imports them only when a page is served).
HEAVY = ("torch", "torchvision", "PIL", "cv2", "scipy", "sklearn",
         "starlette", "jinja2", "uvicorn", "selenium")
#: (heavy package, importing package) probes that runtime dependencies make on their own.
THIRD_PARTY_PROBES = frozenset({("PIL", "pydicom"), ("scipy", "numba")})
#: Subcommands implemented in the lean runtime.
RUNTIME_COMMANDS = sorted(n for n, t in COMMANDS.items() if t.startswith("ichrt.runtime."))

_SITECUSTOMIZE = textwrap.dedent(
    """
    import atexit, importlib.abc, json, os, sys

    HEAVY = set(os.environ["ICHRT_TEST_HEAVY"].split(","))
    attempts = []

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] not in HEAVY:
                return None
            frame = sys._getframe(1)
            while frame and frame.f_globals.get("__name__", "").startswith("importlib"):
                frame = frame.f_back
            attempts.append([name, frame.f_globals.get("__name__", "?") if frame else "?"])
            raise ModuleNotFoundError(f"No module named {name!r} (blocked: lean install)")

    sys.meta_path.insert(0, Block())

    @atexit.register
    def _dump():
        with open(os.environ["ICHRT_TEST_ATTEMPTS"], "w") as f:
            json.dump(attempts, f)
    """
)

_WALK = textwrap.dedent(
    """
    import importlib, json, pkgutil, sys, traceback

    failed = {}

    def record(name):
        failed[name] = traceback.format_exc(limit=4)

    import ichrt.runtime
    names = ["ichrt.runtime"]
    for info in pkgutil.walk_packages(ichrt.runtime.__path__, "ichrt.runtime.", onerror=record):
        names.append(info.name)
        try:
            importlib.import_module(info.name)
        except BaseException:
            record(info.name)
    print(json.dumps({"names": names, "failed": failed}))
    """
)


def _run_lean(command: list[str], tmp_path: Path) -> tuple[subprocess.CompletedProcess, list]:
    """Run ``command`` with the heavy packages blocked; returns it and the import attempts."""
    (tmp_path / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    attempts = tmp_path / "attempts.json"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
        "ICHRT_TEST_HEAVY": ",".join(HEAVY),
        "ICHRT_TEST_ATTEMPTS": str(attempts),
    }
    done = subprocess.run(
        command, check=False, capture_output=True, text=True, timeout=300, env=env
    )
    assert attempts.is_file(), f"sitecustomize did not run: {done.stderr[-2000:]}"
    return done, json.loads(attempts.read_text())


def _assert_lean(attempts: list) -> None:
    by_ichrt = [a for a in attempts if a[1].startswith("ichrt")]
    assert by_ichrt == [], f"ichrt modules import heavy packages: {by_ichrt}"
    others = [
        a for a in attempts if (a[0].split(".")[0], a[1].split(".")[0]) not in THIRD_PARTY_PROBES
    ]
    assert others == [], f"unexpected heavy imports by dependencies: {others}"


def test_every_runtime_module_imports_without_heavy_packages(tmp_path) -> None:
    done, attempts = _run_lean([sys.executable, "-c", _WALK], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    # The walk is not vacuous: it reaches modules known to exist.
    for name in (
        "ichrt.runtime.cli",
        "ichrt.runtime.windowing",
        "ichrt.runtime.framing",
        "ichrt.runtime.pictures",
        "ichrt.runtime.contract",
    ):
        assert name in report["names"]
    assert report["failed"] == {}, "\n".join(f"{k}:\n{v}" for k, v in report["failed"].items())
    _assert_lean(attempts)


@pytest.mark.parametrize("args", [["--help"]] + [[name, "--help"] for name in RUNTIME_COMMANDS])
def test_cli_help_is_lean(args, tmp_path) -> None:
    script = Path(sys.executable).with_name("ichrt")
    assert script.is_file(), f"console script not installed at {script} (pip install -e .)"
    done, attempts = _run_lean([str(script), *args], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Usage:" in done.stdout
    _assert_lean(attempts)
