"""``ichrt explain``: heat maps, overlays and summaries for the slices a model flags."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from ichrt.runtime.cli import EXIT_ERROR, EXIT_OK, EXIT_REJECTED
from ichrt.runtime.contract import ContractError
from ichrt.runtime.explain.base import METHODS, ExplainError
from ichrt.runtime.explain.hshap import BACKGROUNDS
from ichrt.runtime.session import PROVIDERS, ModelError, ProviderUnavailable
from ichrt.runtime.slices import Rejected

EPILOG = """\b
Outputs in --out, per explained slice (named after its SOPInstanceUID, sanitized):
  <name>.npy   the heat map on the slice pixels, scaled to [0, 1]
  <name>.png   the slice in the brain window with the map, its Otsu contour (white)
  <name>.json  method, peak (y, x), area above the Otsu threshold, seconds, p(label)
and explanations.json (all summaries, rejected inputs, model).
\b
Methods: cam (free, needs a GAP + Linear head), gradcam and gradcampp (need the 'explain'
extra and the model.pt checkpoint that 'ichrt export' writes beside the model), hshap (ONNX
Runtime only; 15 model calls per explored quadrant, a few hundred per slice, 25 times more
with --cycle).

\b
Exit codes:
  0  every input file was read and explained as asked
  1  runtime error (e.g. a model that cannot be loaded)
  2  usage error (bad option, no input files, method unavailable: missing extra, checkpoint
     or CAM weights)
  3  some inputs were rejected; explanations for the rest were written
"""


@click.command("explain", epilog=EPILOG)
@click.argument("paths", nargs=-1, required=True,
                type=click.Path(exists=True, path_type=Path))
@click.option("--method", type=click.Choice(("auto", *METHODS)), default="auto",
              show_default=True,
              help="Explanation method; auto = the model's lesion map when it has one (lesion), "
                   "else cam.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder (created if needed).")
@click.option("--model", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="ONNX model with an ichrt contract "
                   "[default: the shipped INT8 model; the FP32 one for gradcam/gradcampp].")
@click.option("--all-slices", is_flag=True,
              help="Explain every slice, not only those whose p(label) reaches the threshold.")
@click.option("--label", default="any", show_default=True,
              help="Label to explain (one of the model's labels).")
@click.option("--threshold", type=click.FloatRange(0.0, 1.0),
              help="p(label) at which a slice is explained [default: the model's threshold].")
@click.option("--batch-size", type=click.IntRange(1, 1024), default=16, show_default=True,
              help="Slices read, scored and explained together.")
@click.option("--provider", type=click.Choice(PROVIDERS), default="auto", show_default=True,
              help="ONNX Runtime execution provider.")
@click.option("--threads", type=click.IntRange(1, 1024),
              help="ONNX Runtime intra-op threads [default: physical cores].")
@click.option("--min-size", type=click.IntRange(1, 4096),
              help="h-Shap: smallest feature side in model-input pixels [default: input/16].")
@click.option("--relevance", type=float, default=0.0, show_default=True,
              help="h-Shap: explore quadrants whose Shapley value exceeds this.")
@click.option("--background", type=click.Choice(BACKGROUNDS), default="blur", show_default=True,
              help="h-Shap: reference for absent quadrants (blurred slice, normalized zero, air).")
@click.option("--cycle", is_flag=True,
              help="h-Shap: cycle spinning with the seed's 4 radii x 8 angles (25 maps averaged).")
@click.option("--json", "as_json", is_flag=True,
              help="Print the summaries as JSON on stdout instead of a table.")
@click.pass_context
def explain(
    ctx: click.Context, paths: tuple[Path, ...], method: str, out_dir: Path, model: Path | None,
    all_slices: bool, label: str, threshold: float | None, batch_size: int, provider: str,
    threads: int | None, min_size: int | None, relevance: float, background: str, cycle: bool,
    as_json: bool,
) -> None:
    """Explain where the model sees a bleed in DICOM files and folders (searched recursively).

    By default only slices whose p(label) reaches the threshold are explained, so normal
    slices cost one inference each; progress goes to stderr.
    """
    from ichrt.runtime.dicom import iter_files
    from ichrt.runtime.session import default_model_for, load_model

    try:
        loaded = load_model(model if model is not None else default_model_for(method),
                            provider=provider, threads=threads)
    except ProviderUnavailable as exc:
        raise click.UsageError(str(exc)) from exc
    except (ModelError, ContractError) as exc:
        click.echo(f"ichrt explain: {exc}", err=True)
        ctx.exit(EXIT_ERROR)
    contract = loaded.contract
    if label not in contract.labels:
        raise click.UsageError(f"--label {label!r} is not one of {', '.join(contract.labels)}")
    if method == "auto":
        method = "lesion" if contract.lesion_stride is not None else "cam"
    try:
        explainer = _make(method, loaded, min_size, relevance, background, cycle)
    except ExplainError as exc:
        raise click.UsageError(str(exc)) from exc
    files = iter_files(list(paths))
    if not files:
        raise click.UsageError("no input files found under the given paths")
    out_dir.mkdir(parents=True, exist_ok=True)
    cut = contract.threshold(label) if threshold is None else threshold
    click.echo(f"model: {loaded.display_name}; method {method}; explaining "
               f"{'every slice' if all_slices else f'p({label}) >= {cut:.3f}'}", err=True)
    try:
        summaries, rejected = _explain_with_bar(
            files, loaded, explainer, out_dir, label, None if all_slices else cut, batch_size)
    except ExplainError as exc:
        click.echo(f"ichrt explain: {exc}", err=True)
        ctx.exit(EXIT_ERROR)
    document = {
        "model": {"name": contract.name, "sha256": loaded.sha256, "path": str(loaded.path)},
        "method": method, "label": label, "threshold": None if all_slices else cut,
        "inputs": len(files), "explained": summaries,
        "rejected": [{"path": r.path, "reason": r.reason} for r in rejected],
    }
    (out_dir / "explanations.json").write_text(json.dumps(document, indent=2))
    if as_json:
        click.echo(json.dumps(document, indent=2))
    else:
        _print_table(summaries, len(files), rejected, out_dir)
    ctx.exit(EXIT_REJECTED if rejected else EXIT_OK)


def _make(method: str, model, min_size: int | None, relevance: float, background: str,
          cycle: bool):
    """The explainer of ``method`` with the command's h-Shap options."""
    from ichrt.runtime.explain.batch import make_explainer

    if method != "hshap":
        return make_explainer(method, model)
    from ichrt.runtime.explain.hshap import cycle_defaults

    radii, angles = cycle_defaults(model.contract.input_size) if cycle else ((0.0,), (0.0,))
    return make_explainer(method, model, min_size=min_size, threshold=relevance,
                          background=background, radii=radii, angles=angles)


def _explain_with_bar(
    files: list[Path], model, explainer, out_dir: Path, label: str, cut: float | None,
    batch_size: int,
) -> tuple[list[dict[str, Any]], list[Rejected]]:
    """:func:`~ichrt.runtime.explain.files.explain_files` with a progress bar on stderr."""
    from tqdm import tqdm

    from ichrt.runtime.explain.files import explain_files

    with tqdm(total=len(files), unit="file", desc="explaining", file=sys.stderr,
              disable=None) as bar:
        return explain_files(files, model, explainer, out_dir, label, cut, batch_size,
                             progress=lambda done, _: bar.update(done - bar.n))


def _print_table(summaries: list[dict[str, Any]], n_inputs: int, rejected: list[Rejected],
                 out_dir: Path) -> None:
    click.echo(f"{'slice':<40} {'p':>6} {'peak (y, x)':>12} {'area %':>7} {'ms':>8}")
    for s in summaries:
        peak = "-" if s["peak"] is None else f"{s['peak'][0]},{s['peak'][1]}"
        click.echo(f"{s['sop_instance_uid'][-40:]:<40} {s['probability']:>6.3f} {peak:>12} "
                   f"{100 * s['area_fraction']:>7.2f} {1000 * s['seconds']:>8.1f}")
    for r in rejected:
        click.echo(f"rejected: {r.path}: {r.reason}", err=True)
    click.echo(f"{len(summaries)} slices explained of {n_inputs} input files; "
               f"{len(rejected)} rejected; written to {out_dir}")
