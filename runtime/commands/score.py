"""``ichrt score``: DICOM files in, prioritized worklist out (a thin wrapper over the scorer)."""

from __future__ import annotations

import json
import math
import os
import stat
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from ichrt.runtime.cli import EXIT_ERROR, EXIT_OK, EXIT_REJECTED
from ichrt.runtime.contract import LABELS, ContractError
from ichrt.runtime.dicom import MAX_PIXELS
from ichrt.runtime.explain import ExplainError
from ichrt.runtime.outputs import (
    OutputError,
    OutputLock,
    OutputRefused,
    check_output_folder,
    internal_paths,
)
from ichrt.runtime.scorer import EXPLAIN_METHODS, OWNED_ENTRIES, Scorer, ScoreResult, write_result
from ichrt.runtime.session import PIN_ENV, PROVIDERS, ModelError, ProviderUnavailable, parse_pins
from ichrt.runtime.worklist import summary_table

#: The ``--demo`` dataset: a few phantom studies, some with bleeds, from a seed used nowhere else.
DEMO_STUDIES = 6
DEMO_SEED = 90210
DEMO_SLICES = (16, 20)
DEMO_PREVALENCE = 0.5

EPILOG = """\b
Outputs in --out: worklist.csv and worklist.json (rank, StudyInstanceUID, AccessionNumber,
slices, rejected files, scored, p(any) and p(subtype), flagged, key slice, arrival, model
SHA-256), slices.csv (every scored slice), rejected.csv (path, reason, study), explanations/
(heat maps of slices at the threshold), run.json (model, SHA-256, counts). A run replaces the
folder's files all at once (the previous results stay if it fails); one run at a time.
\b
Order: flagged studies first by p(any), highest first; the others in arrival order
(StudyDate/Time, else AcquisitionDate/Time, else file time). No study is ever dropped:
a study whose files were all rejected is listed as not scored.
\b
Exit codes:
  0  every input file was scored
  1  runtime error (e.g. a model that cannot be loaded or is not the pinned one, results
     that cannot be written, --out in use by another run)
  2  usage error (bad option, missing path, no input files, provider not installed,
     explanation method unavailable: missing extra, checkpoint or CAM weights; --model not
     a regular file; --out not a folder, holding a symbolic link or files ichrt did not write)
  3  some inputs were rejected (see rejected.csv); results for the rest were written
"""


def _finite_threshold(ctx: click.Context, param: click.Parameter,
                      value: float | None) -> float | None:
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a number between 0 and 1")
    return value


def _model_file(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    """A regular file (stat only: opening a FIFO would hang, reading /dev/zero never ends)."""
    if value is not None and not stat.S_ISREG(os.stat(value).st_mode):
        raise click.BadParameter(f"{value} is not a regular file (a device, FIFO or socket)")
    return value


def _pins(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[str, ...]:
    try:
        return parse_pins(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command("score", epilog=EPILOG)
@click.argument("paths", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Output folder (created if needed). Required unless --demo.")
@click.option("--model", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              callback=_model_file,
              help="ONNX model with an ichrt contract [default: the shipped INT8 model; "
                   "the FP32 one for --explain gradcam/gradcampp].")
@click.option("--require-sha256", "pins", metavar="SHA256[,SHA256...]", envvar=PIN_ENV,
              callback=_pins,
              help=f"Run only a model file with this SHA-256 (the model the site validated); "
                   f"any other is refused [env {PIN_ENV}].")
@click.option("--batch-size", type=click.IntRange(1, 1024), default=16, show_default=True,
              help="Slices per inference call (at most 32, fewer for images over 512 x 512).")
@click.option("--provider", type=click.Choice(PROVIDERS), default="auto", show_default=True,
              help="ONNX Runtime execution provider; auto = TensorRT, CUDA, then CPU, "
                   "whichever is installed (GPU ones need the 'gpu' extra).")
@click.option("--threads", type=click.IntRange(1, 1024),
              help="ONNX Runtime intra-op threads [default on a CPU: 1 per run, one run per "
              "physical core at once; else physical cores]. Given, one run at a time.")
@click.option("--threshold", type=click.FloatRange(0.0, 1.0), callback=_finite_threshold,
              help="p(any) at which a study is flagged [default: the model's calibrated one].")
@click.option("--json", "as_json", is_flag=True,
              help="Print the worklist as JSON on stdout instead of the table.")
@click.option("--show-phi", is_flag=True,
              help="Include PatientID in the outputs (patient names are never shown).")
@click.option("--explain", type=click.Choice(EXPLAIN_METHODS), default="auto", show_default=True,
              help="Heat maps for slices at the threshold: auto = the model's lesion map when it "
                   "has one (lesion), else cam; both are free during scoring; "
                   "gradcam/gradcampp need the 'explain' extra (torch); hshap is slower.")
@click.option("--max-pixels", type=click.IntRange(64, 1 << 31), default=MAX_PIXELS,
              show_default=True, envvar="ICHRT_MAX_PIXELS",
              help="Largest Rows x Columns x frames of an input image; larger ones are rejected "
                   "before decoding (decompression bombs) [env ICHRT_MAX_PIXELS].")
@click.option("--wait", is_flag=True,
              help="If another run is writing to --out, wait for it instead of failing.")
@click.option("--demo", is_flag=True,
              help=f"Generate {DEMO_STUDIES} phantom studies (some with bleeds) in a temporary "
                   "folder and score them; --out is then optional.")
@click.pass_context
def score(
    ctx: click.Context, paths: tuple[Path, ...], out_dir: Path | None, model: Path | None,
    batch_size: int, provider: str, threads: int | None, threshold: float | None,
    as_json: bool, show_phi: bool, explain: str, demo: bool, pins: tuple[str, ...],
    max_pixels: int, wait: bool,
) -> None:
    """Score head-CT DICOM files and folders (searched recursively) for hemorrhage.

    Writes the worklist, suspected bleeds first, and prints a summary table (or JSON with
    --json); progress and the model's name and hash go to stderr.
    """
    if demo == bool(paths):
        raise click.UsageError("give PATH... to score, or --demo (not both)")
    if out_dir is None and not demo:
        raise click.UsageError("--out DIR is required")
    if out_dir is not None:
        try:
            check_output_folder(out_dir, OWNED_ENTRIES)
        except OutputRefused as exc:
            raise click.UsageError(str(exc)) from None
    try:
        scorer = Scorer(model, provider=provider, threads=threads, batch_size=batch_size,
                        threshold=threshold, explain=explain, require_sha256=pins or None,
                        max_pixels=max_pixels)
    except ProviderUnavailable as exc:  # a ModelError, but the user's choice of provider
        raise click.UsageError(str(exc)) from exc
    except (ModelError, ContractError) as exc:  # (ContractError is a ValueError)
        click.echo(f"ichrt score: {exc}", err=True)
        ctx.exit(EXIT_ERROR)
    except (ExplainError, ValueError) as exc:
        raise click.UsageError(str(exc)) from exc
    click.echo(f"model: {scorer.model.display_name} on {', '.join(scorer.model.providers)}; "
               f"threshold p(any) >= {scorer.threshold:.3f}", err=True)
    if scorer.explain == "cam" and scorer.model.contract.cam_weights is None:
        click.echo("warning: this model has no CAM weights; no heat maps will be written", err=True)
    with _locked(ctx, out_dir, wait):
        if demo:
            with tempfile.TemporaryDirectory(prefix="ichrt-demo-") as tmp:
                dataset = Path(tmp)
                result = _run(scorer, [_write_demo(dataset)])
                _finish(ctx, scorer, result, out_dir, as_json, show_phi,
                        _demo_truth(result, dataset))
        else:
            exclude = internal_paths(out_dir) if out_dir is not None else []
            result = _run(scorer, list(paths), exclude)
            _finish(ctx, scorer, result, out_dir, as_json, show_phi)


@contextmanager
def _locked(ctx: click.Context, out_dir: Path | None, wait: bool) -> Iterator[None]:
    """Hold --out's lock for the whole run (fail fast, or wait with --wait)."""
    if out_dir is None:
        yield
        return
    lock = OutputLock(out_dir, wait=wait)
    try:
        lock.acquire()
    except OutputError as exc:
        click.echo(f"ichrt score: {exc}", err=True)
        ctx.exit(EXIT_ERROR)
    try:
        yield
    finally:
        lock.release()


def _run(scorer: Scorer, paths: list[Path], exclude: list[Path] | None = None) -> ScoreResult:
    from tqdm import tqdm

    with tqdm(unit="file", desc="scoring", file=sys.stderr, disable=None) as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        result = scorer.score(paths, progress=progress, exclude=exclude or ())
    if not result.n_inputs:
        raise click.UsageError("no input files found under the given paths")
    return result


def _finish(ctx: click.Context, scorer: Scorer, result: ScoreResult, out_dir: Path | None,
            as_json: bool, show_phi: bool, truth: dict[str, list[str]] | None = None) -> None:
    """Write the files, print the summary, and exit with the documented code."""
    if out_dir is not None:
        try:
            document = write_result(result, out_dir, show_phi=show_phi,
                                    explainer=scorer.explainer)
        except OutputError as exc:
            click.echo(f"ichrt score: {exc}", err=True)
            ctx.exit(EXIT_ERROR)
    else:
        document = result.to_dict(show_phi)
    if truth is not None:
        document["demo_truth"] = truth
    if as_json:
        click.echo(json.dumps(document, indent=2))
    else:
        click.echo(f"model: {result.model.display}")
        click.echo(summary_table(result.studies, result.threshold, show_phi))
        if truth is not None:
            click.echo("phantom ground truth by rank: " + "; ".join(
                f"{rank} {'+'.join(truth.get(s.study_uid, [])) or 'normal'}"
                for rank, s in enumerate(result.studies, start=1)))
        if result.rejected:
            where = f" (see {document['outputs']['rejected.csv']})" if out_dir else ""
            click.echo(f"{len(result.rejected)} of {result.n_inputs} input files rejected{where}")
        if out_dir is not None:
            click.echo(f"worklist written to {document['outputs']['worklist.csv']}")
    ctx.exit(EXIT_REJECTED if result.rejected else EXIT_OK)


def _write_demo(folder: Path) -> Path:
    """Write the demo phantom studies (RSNA layout) into ``folder``; return the DICOM folder."""
    from ichrt.runtime.rsna_layout import IMAGES_DIR
    from ichrt.runtime.synth import write_dataset

    click.echo(f"demo: generating {DEMO_STUDIES} phantom studies (seed {DEMO_SEED})", err=True)
    write_dataset(folder, studies=DEMO_STUDIES, seed=DEMO_SEED, slices=DEMO_SLICES,
                  prevalence=DEMO_PREVALENCE)
    return folder / IMAGES_DIR


def _demo_truth(result: ScoreResult, folder: Path) -> dict[str, list[str]]:
    """The phantom labels present on any slice of each study (from the dataset's label file)."""
    from ichrt.runtime.rsna_layout import LABELS_FILE, read_labels_csv

    labels = read_labels_csv(folder / LABELS_FILE)
    truth: dict[str, set[str]] = {s.study_uid: set() for s in result.studies}
    for item in result.slices:
        values = labels.get(Path(item.identity.path).stem)
        if values is not None:
            present = [name for name, v in zip(LABELS, values) if v >= 0.5]
            subtypes = [name for name in present if name != "any"]
            truth[item.identity.study_uid].update(subtypes or present)
    return {uid: sorted(found) for uid, found in truth.items()}
