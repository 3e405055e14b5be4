"""``ichrt ingest`` through click's CliRunner: report, exit codes, no patient data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from dicom_helpers import PATIENT_ID, PATIENT_NAME, STUDY_UID, write_series

from ichrt.runtime.cli import main
from ichrt.runtime.commands.ingest import ingest


@pytest.fixture()
def study(tmp_path: Path) -> Path:
    write_series(tmp_path / "study", 5, series_uid="1.2.3.500", name_order=[4, 2, 0, 1, 3])
    return tmp_path / "study"


def test_all_read_exits_0_with_series_summary(study: Path) -> None:
    result = CliRunner().invoke(ingest, [str(study)])
    assert result.exit_code == 0, result.output
    assert "5 files: 5 CT slices in 1 series, 0 rejected" in result.stdout
    assert STUDY_UID in result.stdout and "1.2.3.500" in result.stdout
    assert "ordered by position" in result.stdout and "HU -1000 .. 1000" in result.stdout
    assert PATIENT_ID not in result.output and "Secret" not in result.output


def test_rejections_exit_3_and_json_report(study: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.txt"
    junk.write_text("not a scan")
    result = CliRunner().invoke(main, ["ingest", str(study), str(junk), "--json", "--workers", "2"])
    assert result.exit_code == 3, result.output
    report = json.loads(result.stdout)
    assert (report["files"], report["slices"], report["rejected"]) == (6, 5, 1)
    (series,) = report["series"]
    assert series["series_uid"] == "1.2.3.500" and series["slices"] == 5
    assert series["ordered_by"] == "position" and series["sizes"] == ["32x32"]
    assert (series["hu_min"], series["hu_max"]) == (-1000.0, 1000.0)
    assert report["rejections"] == [
        {"path": str(junk), "reason": report["rejections"][0]["reason"]}
    ]
    assert report["rejections"][0]["reason"].startswith("not a DICOM file")
    assert PATIENT_ID not in result.output and PATIENT_NAME not in result.output


def test_text_report_lists_rejected_paths(study: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    result = CliRunner().invoke(ingest, [str(study), str(empty)])
    assert result.exit_code == 3
    assert "REJECTED" in result.stdout and f"{empty}  empty file" in result.stdout


@pytest.mark.parametrize("args", [[], ["does-not-exist.dcm"], ["--workers", "0", "."]])
def test_usage_errors_exit_2(args: list[str]) -> None:
    assert CliRunner().invoke(ingest, args).exit_code == 2


def test_empty_folder_is_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(ingest, [str(tmp_path)])
    assert result.exit_code == 2 and "no files found" in result.output
