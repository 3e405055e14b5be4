"""``ichrt ingest``: read DICOM files into HU series and report what was rejected and why."""

from __future__ import annotations

import json
import sys
import warnings

import click
import numpy as np

from ichrt.runtime.cli import EXIT_OK, EXIT_REJECTED
from ichrt.runtime.dicom import IngestResult, group_series, iter_files, read_paths
from ichrt.runtime.slices import Series


def summarize(result: IngestResult, n_files: int) -> dict:
    """The JSON-able report: counts, an entry per series and per rejected file. No patient data."""
    return {
        "files": n_files,
        "slices": len(result.slices),
        "rejected": len(result.rejected),
        "series": [_series_entry(series) for series in group_series(result.slices)],
        "rejections": [{"path": item.path, "reason": item.reason} for item in result.rejected],
    }


def _series_entry(series: Series) -> dict:
    shapes = sorted({item.hu.shape for item in series.slices})
    return {
        "study_uid": series.study_uid,
        "series_uid": series.series_uid,
        "slices": len(series.slices),
        "ordered_by": series.ordered_by,
        "hu_min": float(min(np.min(item.hu) for item in series.slices)),
        "hu_max": float(max(np.max(item.hu) for item in series.slices)),
        "sizes": [f"{rows}x{columns}" for rows, columns in shapes],
    }


def _print_text(report: dict) -> None:
    click.echo(
        f"{report['files']} files: {report['slices']} CT slices in {len(report['series'])} series, "
        f"{report['rejected']} rejected"
    )
    if report["series"]:
        click.echo("\nSERIES")
        for entry in report["series"]:
            click.echo(f"  study  {entry['study_uid']}")
            click.echo(
                f"  series {entry['series_uid']}\n"
                f"         {entry['slices']} slices ({', '.join(entry['sizes'])}), ordered by "
                f"{entry['ordered_by']}, HU {entry['hu_min']:.0f} .. {entry['hu_max']:.0f}"
            )
    if report["rejections"]:
        click.echo("\nREJECTED")
        width = max(len(item["path"]) for item in report["rejections"])
        for item in report["rejections"]:
            click.echo(f"  {item['path']:<{width}}  {item['reason']}")


@click.command("ingest")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Reader threads (default: the number of CPU cores, at most 8).",
)
def ingest(paths: tuple[str, ...], as_json: bool, workers: int | None) -> None:
    """Read DICOM files, folders (recursively) or both into CT series in Hounsfield units.

    Prints, per series, its study and series UIDs, slice count, how the slices were ordered
    (position along the scan axis, InstanceNumber, or file order) and the HU range; then every
    rejected file with the reason. Patient names and IDs are never printed. Progress goes to
    stderr.

    \b
    Exit codes:
      0  every file was read as a CT slice
      2  usage error (no path, a path that does not exist, no files found)
      3  some files were rejected (the report lists them)
    """
    from tqdm import tqdm

    files = iter_files(paths)
    if not files:
        raise click.UsageError(f"no files found in {', '.join(paths)}")
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore"
        )  # pydicom warns about every oddity; rejections say what matters
        with tqdm(
            total=len(files), desc="reading", unit="file", file=sys.stderr, disable=None
        ) as bar:
            result = read_paths(files, workers=workers, progress=bar.update)
    report = summarize(result, len(files))
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        _print_text(report)
    sys.exit(EXIT_REJECTED if result.rejected else EXIT_OK)
