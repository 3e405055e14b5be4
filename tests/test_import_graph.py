"""The one-way import graph: runtime <- calibration, runtime <- export, never back.

Every module file under ``runtime/`` and ``calibration/`` is parsed with :mod:`ast` (nothing is
imported, so lazy imports inside functions count too): the runtime imports nothing from
``ichrt.export`` or ``ichrt.calibration``, calibration nothing from ``ichrt.export``, and
``ichrt.nets`` (the torch networks shared by export and the runtime's Grad-CAM twin) nothing
from ichrt at all.
"""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Source folder -> the package it is installed as (pyproject.toml's package-dir).
PACKAGES = {"runtime": "ichrt.runtime", "calibration": "ichrt.calibration", "ichrt": "ichrt"}
#: Package -> the ichrt packages it may not import.
FORBIDDEN = {
    "ichrt.runtime": ("ichrt.export", "ichrt.calibration"),
    "ichrt.calibration": ("ichrt.export",),
    "ichrt.nets": ("ichrt",),
}


def module_name(path: Path) -> str:
    """``runtime/explain/cam.py`` -> ``ichrt.runtime.explain.cam``."""
    folder, *rest = path.relative_to(ROOT).with_suffix("").parts
    parts = [PACKAGES[folder], *rest]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``source``, relative ones resolved."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            # ``from pkg import mod`` may import a submodule: count pkg.mod as well as pkg.
            found += [(node.lineno, name)]
            found += [(node.lineno, f"{name}.{alias.name}") for alias in node.names]
    return found


def violations(path: Path) -> list[str]:
    module = module_name(path)
    forbidden = [bad for owner, rule in FORBIDDEN.items()
                 if module == owner or module.startswith(owner + ".") for bad in rule]
    text = path.read_text(encoding="utf-8")
    return [f"{path.relative_to(ROOT)}:{line}: imports {name}"
            for line, name in imported_modules(text, module, path.name == "__init__.py")
            if any(name == b or name.startswith(b + ".") for b in forbidden)]


def module_files(folder: str) -> list[Path]:
    return sorted(p for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts)


@pytest.mark.parametrize("folder", ["runtime", "calibration"])
def test_lower_layers_never_import_upper_ones(folder: str) -> None:
    files = module_files(folder)
    assert len(files) > 10, f"{folder}: the walk found only {len(files)} files"
    found = [v for path in files for v in violations(path)]
    assert found == [], "imports against the dependency direction:\n" + "\n".join(found)


def test_the_shared_torch_networks_import_nothing_from_ichrt() -> None:
    assert violations(ROOT / "ichrt" / "nets.py") == []


def test_the_check_sees_every_kind_of_import() -> None:
    source = (
        "import ichrt.export.models\n"
        "from ichrt.export import train\n"
        "def lazy():\n"
        "    from ichrt.calibration.fit import calibrate_model\n"
        "from ..export import onnx_export\n"
        "from . import cam\n"
    )
    names = [n for _, n in imported_modules(source, "ichrt.runtime.explain")]
    assert "ichrt.export.models" in names and "ichrt.export.train" in names
    assert "ichrt.calibration.fit" in names
    assert "ichrt.export.onnx_export" in names  # relative, two levels up from runtime/x.py
    assert "ichrt.runtime.cam" in names


def test_the_real_sources_reach_calibration_as_a_declared_plugin() -> None:
    """``--real`` finds export's loader through the entry point pyproject.toml declares."""
    if sys.version_info < (3, 11):
        pytest.skip("tomllib needs Python 3.11")
    import tomllib

    from ichrt.calibration.parts import ENTRY_POINT_GROUP

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    target = project["entry-points"][ENTRY_POINT_GROUP]["real"]
    module, _, attr = target.partition(":")
    assert module.startswith("ichrt.export.")
    pytest.importorskip("torch")  # export's loaders belong to the 'export' extra
    assert callable(getattr(importlib.import_module(module), attr))


def test_without_the_plugin_real_is_a_usage_error_naming_the_extra(tmp_path, monkeypatch) -> None:
    from click.testing import CliRunner

    from ichrt.calibration import parts
    from ichrt.runtime.cli import main
    from ichrt.runtime.extras import ExtraNotInstalled

    monkeypatch.setattr(parts, "entry_points", lambda group: [])
    with pytest.raises(ExtraNotInstalled, match=r"ichrt\[export\]"):
        parts.real_parts_provider()
    model = tmp_path / "m.onnx"
    model.write_bytes(b"")
    result = CliRunner().invoke(main, ["calibrate", "threshold", str(model), "--data",
                                       str(tmp_path), "--real", str(tmp_path), "--out",
                                       str(tmp_path / "out.onnx")])
    assert result.exit_code == 2 and "'export' extra" in result.output, result.output
