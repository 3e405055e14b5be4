"""Helpers defined once in the runtime and reused by calibration and export: extras, exit codes,
file hashes, the sigmoid with temperatures, the gray-to-HU inverse."""

from __future__ import annotations

import hashlib

import click
import numpy as np
import pytest

from ichrt.runtime.cli import EXIT_MEANINGS, EXIT_USAGE, exit_codes_help
from ichrt.runtime.contract import LABELS, ModelContract
from ichrt.runtime.extras import ExtraNotInstalled, install_hint, needs_extra
from ichrt.runtime.hashing import file_sha256
from ichrt.runtime.pictures import hu_from_gray8, window_gray8
from ichrt.runtime.probability import sigmoid, tempered_sigmoid


def test_extra_messages_name_the_extra_and_the_command() -> None:
    assert install_hint("codecs") == 'pip install "ichrt[codecs]"'
    assert needs_extra("Grad-CAM", "explain", "torch is missing") == (
        "Grad-CAM needs the 'explain' extra: pip install \"ichrt[explain]\" (torch is missing)")


def test_every_missing_extra_error_shares_one_base() -> None:
    from ichrt.calibration.parts import real_parts_provider  # noqa: F401  (imports lean)
    from ichrt.runtime.explain import ExplainError, ExplainExtraMissing
    from ichrt.runtime.serve import ServeExtraMissing
    from ichrt.runtime.ui import UIUnavailable

    for cls in (ExplainExtraMissing, ServeExtraMissing, UIUnavailable):
        assert issubclass(cls, ExtraNotInstalled) and issubclass(cls, ImportError)
    assert issubclass(ExplainExtraMissing, ExplainError)  # callers catching ExplainError still do


def test_export_extra_error_is_a_usage_error() -> None:
    from ichrt.export.commands import ExportExtraMissing

    err = ExportExtraMissing(needs_extra("training", "export"))
    assert isinstance(err, click.ClickException) and isinstance(err, ExtraNotInstalled)
    assert err.exit_code == EXIT_USAGE and "ichrt[export]" in err.format_message()


def test_exit_codes_help_lists_every_code_with_command_details() -> None:
    text = exit_codes_help({EXIT_USAGE: "usage error (first line\nsecond line)"})
    lines = text.splitlines()
    assert lines[:2] == ["\b", "Exit codes:"]
    assert [line.split()[0] for line in lines[2:] if not line.startswith("     ")] == [
        str(code) for code in sorted(EXIT_MEANINGS)]
    assert "  2  usage error (first line" in lines and "     second line)" in lines


def test_file_sha256_is_the_sha256_of_the_bytes(tmp_path) -> None:
    path = tmp_path / "blob"
    data = np.random.default_rng(0).bytes(3 << 20)  # several read blocks
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()


def test_sigmoid_is_stable_and_exact() -> None:
    z = np.array([-800.0, -30.0, -1.0, 0.0, 2.5, 40.0, 800.0])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        p = sigmoid(z)
    assert p.dtype == np.float64 and p[0] == 0.0 and p[-1] == 1.0 and p[3] == 0.5
    np.testing.assert_allclose(p[1:-1], 1.0 / (1.0 + np.exp(-z[1:-1])), rtol=1e-15)
    assert sigmoid(-30.0) > 0  # small probabilities keep their relative precision
    np.testing.assert_allclose(tempered_sigmoid([[2.0, 2.0]], [2.0, 0.5]),
                               [[sigmoid(1.0), sigmoid(4.0)]])


def test_calibration_and_scoring_turn_logits_into_the_same_probabilities() -> None:
    from ichrt.calibration.temperature import calibrated_probs
    from ichrt.runtime.aggregate import calibrated_probabilities

    temps = {"any": 1.7, "subdural": 0.6}
    logits = np.random.default_rng(1).normal(0, 4, (50, len(LABELS)))
    ours = calibrated_probabilities(logits, ModelContract(temperatures=temps))
    theirs = calibrated_probs(logits, temps, LABELS)
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)


@pytest.mark.parametrize("level,width", [(40.0, 80.0), (600.0, 2800.0)])
def test_gray_to_hu_inverts_the_8_bit_window(level: float, width: float) -> None:
    hu = np.linspace(level - width / 2, level + width / 2, 1001, dtype=np.float32)
    back = hu_from_gray8(window_gray8(hu, level, width), level, width)
    assert back.dtype == np.float32
    assert np.abs(back - hu).max() <= width / 255 / 2 + 1e-3 * width / 255
    assert hu_from_gray8(np.array([0, 255], np.uint8), level, width).tolist() == pytest.approx(
        [level - width / 2, level + width / 2])
