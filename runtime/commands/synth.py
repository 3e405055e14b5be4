"""``ichrt synth``: write labelled head-CT phantom studies in the RSNA 2019 layout."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import click
from tqdm import tqdm

from ichrt.runtime.cli import EXIT_OK
from ichrt.runtime.extras import ExtraNotInstalled
from ichrt.runtime.synth import PRESETS, write_dataset

EPILOG = """\b
Writes in --out: stage_2_train.csv (ID_<id>_<subtype>,Label), stage_2_train/ID_<id>.dcm,
masks/ID_<id>.npz (positive slices), boxes.csv (one box per bleed and slice), studies.csv
(study -> image ids, for grouped splits), synth.json (summary and config); with --jpg also
hemorrhage/ and no_hemorrhage/ three-window jpgs.
\b
Exit codes:
  0  dataset written
  1  runtime error
  2  usage error (bad option, a dataset already in --out, --jpg without Pillow)
"""


class SliceRange(click.ParamType):
    """``N`` or ``MIN-MAX`` (also ``MIN,MAX``, ``MIN:MAX`` or ``"MIN MAX"``), inclusive."""

    name = "N|MIN-MAX"

    def convert(self, value: object, param: click.Parameter | None,
                ctx: click.Context | None) -> tuple[int, int]:
        if isinstance(value, tuple):
            return value  # type: ignore[return-value]
        parts = [p for p in re.split(r"[-,: ]+", str(value).strip()) if p]
        try:
            numbers = [int(p) for p in parts]
        except ValueError:
            numbers = []
        if len(numbers) == 1:
            numbers *= 2
        if len(numbers) != 2 or not 1 <= numbers[0] <= numbers[1]:
            self.fail(f"{value!r} is not N or MIN-MAX with 1 <= MIN <= MAX", param, ctx)
        return numbers[0], numbers[1]


@click.command("synth", epilog=EPILOG)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder (created if needed).")
@click.option("--studies", type=click.IntRange(0), default=10, show_default=True,
              help="Number of studies.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed: the same seed and options give the same files.")
@click.option("--slices", type=SliceRange(), default="24-40", show_default=True,
              help="Slices per study: N, or MIN-MAX drawn per study.")
@click.option("--size", type=click.IntRange(16, 2048), default=512, show_default=True,
              help="Matrix size (rows = columns).")
@click.option("--prevalence", type=click.FloatRange(0.0, 1.0), default=0.35, show_default=True,
              help="Share of positive studies (exactly rounded); in a positive study only the "
                   "slices a bleed spans are positive.")
@click.option("--preset", type=click.Choice(sorted(PRESETS)), default="train", show_default=True,
              help="Population of patients and scanners: train, or shifted (held-out scanner, "
                   "pose and artefact settings never used for training).")
@click.option("--jpg", is_flag=True,
              help="Also write the seed's ImageFolder of three-window jpgs (needs Pillow).")
@click.option("--overwrite", is_flag=True, help="Write into a folder that already holds a dataset.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
@click.pass_context
def synth(ctx: click.Context, out_dir: Path, studies: int, seed: int, slices: tuple[int, int],
          size: int, prevalence: float, preset: str, jpg: bool, overwrite: bool,
          as_json: bool) -> None:
    """Generate labelled head-CT phantom studies (with masks and boxes) as DICOM files."""
    with tqdm(total=studies, unit="study", desc="synth", file=sys.stderr,
              disable=None) as bar:
        def advance(n_slices: int) -> None:
            bar.update(1)

        try:
            summary = write_dataset(out_dir, studies, seed, slices=slices, size=size,
                                    prevalence=prevalence, jpg=jpg, config=preset,
                                    progress=advance, overwrite=overwrite)
        except FileExistsError as exc:
            raise click.UsageError(str(exc)) from None
        except ExtraNotInstalled as exc:
            raise click.UsageError(str(exc)) from None
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        click.echo(f"{summary['studies']} studies ({summary['positive_studies']} positive), "
                   f"{summary['slices']} slices ({summary['positive_slices']} positive) "
                   f"written to {out_dir} in {summary['seconds']:.1f} s")
        per = ", ".join(f"{k} {v}" for k, v in summary["slices_per_label"].items())
        click.echo(f"positive slices per label: {per}")
    ctx.exit(EXIT_OK)
