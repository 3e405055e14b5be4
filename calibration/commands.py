"""``ichrt calibrate quantize|threshold`` and ``ichrt evaluate``: thin wrappers over the library.

Each command parses options, shows progress on stderr, calls one library function
(:func:`~ichrt.calibration.quantize.quantize_model`,
:func:`~ichrt.calibration.fit.calibrate_model`, :func:`~ichrt.calibration.evaluate.evaluate_model`)
and writes its JSON report.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from ichrt.runtime.cli import EXIT_ERROR, EXIT_OK, EXIT_REJECTED, EXIT_USAGE, exit_codes_help
from ichrt.runtime.extras import needs_extra

EXIT_CODES = exit_codes_help({
    EXIT_ERROR: "runtime error (a model that cannot be loaded; for quantize: INT8 rejected by "
                "the gate)",
    EXIT_USAGE: "usage error (bad option; data not in the RSNA layout, unreadable, or lacking\n"
                "positive and negative labels)",
    EXIT_REJECTED: "some input files were rejected (listed in the report); results for the rest "
                   "were written",
})
DATA_HELP = ("Labelled data in the RSNA 2019 layout: stage_2_train.csv + stage_2_train/*.dcm "
             "(what 'ichrt synth' writes).")
MODEL_ARG = click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
DATA_OPT = click.option("--data", "data_dir", required=True, help=DATA_HELP,
                        type=click.Path(exists=True, file_okay=False, path_type=Path))
BATCH_OPT = click.option("--batch-size", type=click.IntRange(1, 1024), default=16,
                         show_default=True, help="Slices per inference call.")
THREADS_OPT = click.option("--threads", type=click.IntRange(1, 1024),
                           help="ONNX Runtime intra-op threads [default: physical cores].")
JSON_OPT = click.option("--json", "as_json", is_flag=True,
                        help="Print the report as JSON on stdout instead of a summary.")


@contextmanager
def progress_bar(desc: str) -> Iterator[Callable[[int, int], None]]:
    """A ``progress(done, total)`` callback drawing a tqdm bar on stderr."""
    from tqdm import tqdm

    with tqdm(unit="file", desc=desc, file=sys.stderr, disable=None, leave=False) as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        yield progress


def note(message: str) -> None:
    """A progress line on stderr."""
    click.echo(message, err=True)


@contextmanager
def usage_errors() -> Iterator[None]:
    """Turn data-layout and option errors from the library into click usage errors (exit 2)."""
    from ichrt.calibration.dataset import DatasetError

    try:
        yield
    except DatasetError as exc:
        raise click.UsageError(str(exc)) from exc


@contextmanager
def model_errors(ctx: click.Context, command: str) -> Iterator[None]:
    """Report a model that cannot be loaded and exit 1."""
    from ichrt.runtime.contract import ContractError
    from ichrt.runtime.session import ModelError

    try:
        yield
    except (ModelError, ContractError) as exc:
        click.echo(f"ichrt {command}: {exc}", err=True)
        ctx.exit(EXIT_ERROR)


def require_onnx() -> None:
    """Writing models needs the ``onnx`` package (the 'calibration' extra): a usage error if absent."""
    try:
        import onnx  # noqa: F401
    except ImportError as exc:
        raise click.UsageError(needs_extra("this command", "calibration",
                                           f"{exc.name} is missing")) from exc


def beside(out: Path, suffix: str) -> Path:
    """``out`` with its extension replaced by ``suffix`` (e.g. ``model.calibration.json``)."""
    return out.with_name(out.stem + suffix)


@click.group("calibrate", epilog=EXIT_CODES)
def calibrate() -> None:
    """INT8 quantization and probability/threshold calibration of an ichrt model.

    Each subcommand writes a NEW model file; the parent is never modified, and the new
    model's contract records the parent's SHA-256 in its provenance.
    """


@calibrate.command("quantize", epilog=EXIT_CODES)
@MODEL_ARG
@DATA_OPT
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the INT8 model (only if it passes the accuracy gate).")
@click.option("--holdout", "holdout_dir", type=click.Path(exists=True, file_okay=False,
                                                          path_type=Path),
              help="Labelled held-out data for the accuracy gate; --data may then be any "
                   "folder of DICOM files [default: half of the studies of --data, the other "
                   "half calibrates].")
@click.option("--method", type=click.Choice(["minmax", "entropy", "percentile"]),
              default="minmax", show_default=True, help="Activation-range calibration method.")
@click.option("--format", "fmt", type=click.Choice(["u8s8", "u8s8-rr", "s8s8", "u8u8"]),
              default="u8s8-rr", show_default=True,
              help="Activation x weight types; -rr = reduce_range (7-bit weights), which cannot "
                   "saturate on AVX2 CPUs without VNNI.")
@click.option("--compare", is_flag=True,
              help="Build every method x format, measure all, and keep the best accepted one "
                   "(saturation-safe first, then fastest).")
@click.option("--calibration-slices", type=click.IntRange(1), default=256, show_default=True,
              help="Slices (sampled at random) used to calibrate activation ranges.")
@click.option("--max-auc-drop", type=click.FloatRange(0.0, 1.0), default=0.005,
              show_default=True, help="Largest accepted drop of AUC(any) on held-out data.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the calibration sample and the study split.")
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path),
              help="JSON report path [default: OUT with .quantize.json].")
@BATCH_OPT
@THREADS_OPT
@JSON_OPT
@click.pass_context
def quantize(
    ctx: click.Context, model: Path, data_dir: Path, out: Path, holdout_dir: Path | None,
    method: str, fmt: str, compare: bool, calibration_slices: int, max_auc_drop: float,
    seed: int, report: Path | None, batch_size: int, threads: int | None, as_json: bool,
) -> None:
    """Quantize MODEL to INT8 (static, QDQ, per-channel weights) and gate it on accuracy.

    Activation ranges come from windowed slices of --data read through the runtime's own
    ingest and windowing. The INT8 model is written only if AUC(any) on held-out data drops
    by at most --max-auc-drop; the report (always written) gives AUC, the maximum probability
    difference, CAM agreement and FP32/INT8 ms per slice for every candidate.
    """
    from ichrt.calibration.quantize import (
        QuantizationRejected,
        QuantSpec,
        all_specs,
        quantize_model,
    )
    from ichrt.calibration.report import write_json

    require_onnx()
    report = report or beside(out, ".quantize.json")
    specs = all_specs() if compare else [QuantSpec(method, fmt)]
    with usage_errors(), model_errors(ctx, "calibrate quantize"):
        try:
            result = quantize_model(
                model, data_dir, out, holdout_dir=holdout_dir, specs=specs,
                calibration_slices=calibration_slices, max_drop=max_auc_drop, seed=seed,
                batch_size=batch_size, threads=threads, note=note, bar=progress_bar)
        except QuantizationRejected as exc:
            write_json(report, exc.report.to_dict())
            click.echo(f"ichrt calibrate quantize: {exc} (report: {report})", err=True)
            ctx.exit(EXIT_ERROR)
    write_json(report, result.to_dict())
    if as_json:
        click.echo(json.dumps(json.loads(report.read_text()), indent=2))
    else:
        click.echo(quantize_table(result))
        click.echo(f"INT8 model ({result.chosen}) written to {out}; report: {report}")
    ctx.exit(EXIT_REJECTED if result.files_rejected else EXIT_OK)


def quantize_table(result) -> str:
    """One row per candidate, FP32 first."""
    ref = result.reference
    rows = [(f"{'candidate':<22}{'AUC(any)':>9}{'drop':>8}{'max|dp|':>9}{'ms/slice':>10}"
             f"{'speedup':>9}{'CAM r':>7}{'sat.pairs':>10}{'sat.out':>9}  verdict"),
            f"{'fp32':<22}{ref['auc_any']:>9.4f}{'':>8}{'':>9}{ref['ms_per_slice']:>10.3f}"]
    for c in result.candidates:
        mark = "chosen" if c.spec.name == result.chosen else ("ok" if c.accepted else "REJECTED")
        rows.append(f"{c.spec.name:<22}{c.auc_any:>9.4f}{c.auc_drop:>+8.4f}"
                    f"{c.max_prob_diff:>9.4f}{c.ms_per_slice:>10.3f}{c.speedup:>8.2f}x"
                    f"{c.cam_correlation:>7.3f}{c.saturation_pairs:>10.4f}"
                    f"{c.saturation_share:>9.5f}  {mark}")
    return "\n".join(rows)


@calibrate.command("threshold", epilog=EXIT_CODES)
@MODEL_ARG
@DATA_OPT
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the calibrated model.")
@click.option("--target-sensitivity", type=click.FloatRange(0.0, 1.0, min_open=True),
              default=0.95, show_default=True,
              help="Sensitivity the 'any' threshold must reach on the validation data.")
@click.option("--subtype-sensitivity", type=click.FloatRange(0.0, 1.0, min_open=True),
              help="Target for the five subtype thresholds [default: --target-sensitivity].")
@click.option("--level", type=click.Choice(["slice", "study"]), default="slice",
              show_default=True, help="Level at which the target sensitivity is reached "
                                      "(both levels are reported).")
@click.option("--bootstrap", type=click.IntRange(10), default=1000, show_default=True,
              help="Bootstrap resamples for the 95% intervals (slice level resamples studies).")
@click.option("--seed", type=int, default=0, show_default=True, help="Bootstrap seed.")
@click.option("--real", "real_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Also calibrate on the held-out groups of the real sources in this folder "
                   "(shared/realtrain; needs the 'export' extra): temperatures on every slice, "
                   "the study model and the study-level 'any' threshold on whole studies, which "
                   "must reach the target on the real studies and on the phantom studies.")
@click.option("--real-sources", default="ctich,roboflow,bhsd,rsna200", show_default=True,
              help="Comma-separated real sources to use with --real.")
@click.option("--study-model/--no-study-model", default=True, show_default=True,
              help="With --real: fit the neighbour-aware study model (else max over slices).")
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path),
              help="JSON report path [default: OUT with .calibration.json].")
@click.option("--picture", type=click.Path(dir_okay=False, path_type=Path),
              help="Reliability diagram PNG [default: OUT with .reliability.png].")
@BATCH_OPT
@THREADS_OPT
@JSON_OPT
@click.pass_context
def threshold(
    ctx: click.Context, model: Path, data_dir: Path, out: Path, target_sensitivity: float,
    subtype_sensitivity: float | None, level: str, bootstrap: int, seed: int,
    real_dir: Path | None, real_sources: str, study_model: bool,
    report: Path | None, picture: Path | None, batch_size: int, threads: int | None,
    as_json: bool,
) -> None:
    """Fit per-label temperatures and choose thresholds for a target sensitivity.

    Runs MODEL over validation data (never the training data), fits temperature scaling per
    label (NLL), picks the highest threshold reaching the target sensitivity on the calibrated
    probabilities, and writes a new model whose contract carries temperatures, thresholds,
    ECE/Brier before and after and the bootstrap intervals. 'ichrt score' uses them by default.
    """
    from ichrt.calibration.fit import calibrate_model
    from ichrt.calibration.reliability import write_reliability_png
    from ichrt.calibration.report import write_json

    require_onnx()
    report = report or beside(out, ".calibration.json")
    picture = picture or beside(out, ".reliability.png")
    if real_dir is not None:
        with usage_errors(), model_errors(ctx, "calibrate threshold"):
            result = _calibrate_real(model, data_dir, real_dir, real_sources, out,
                                     target_sensitivity, subtype_sensitivity, study_model,
                                     bootstrap, seed, batch_size)
    else:
        with usage_errors(), model_errors(ctx, "calibrate threshold"), \
                progress_bar("validation slices") as progress:
            result = calibrate_model(model, data_dir, out, target_sensitivity,
                                     subtype_sensitivity, level, bootstrap, seed, batch_size,
                                     threads, progress)
    write_json(report, {**result.report, "picture": str(picture)})
    write_reliability_png(picture, result.label_names, result.labels, result.before,
                          result.after)
    if as_json:
        click.echo(json.dumps(json.loads(report.read_text()), indent=2))
    else:
        click.echo(threshold_table(result.report))
        click.echo(f"calibrated model written to {out}; report: {report}; picture: {picture}")
    ctx.exit(EXIT_REJECTED if result.rejected else EXIT_OK)


def _calibrate_real(model: Path, data_dir: Path, real_dir: Path, sources: str, out: Path,
                    target: float, subtype: float | None, study_model: bool, bootstrap: int,
                    seed: int, batch_size: int):
    """Phantom studies of ``data_dir`` + held-out real groups -> calibrated model (see --real)."""
    from ichrt.calibration.fit import calibrate_on_studies
    from ichrt.calibration.parts import phantom_part, real_parts_provider
    from ichrt.runtime.session import load_model

    try:
        real_parts = real_parts_provider()
    except ImportError as exc:
        raise click.UsageError(str(exc)) from exc
    loaded = load_model(model, provider="cpu")
    note("scoring the phantom validation studies")
    parts = [phantom_part(loaded, data_dir, batch_size)]
    note(f"scoring the held-out groups of {sources}")
    parts += real_parts(loaded, real_dir, [s for s in sources.split(",") if s], seed=0)
    return calibrate_on_studies(model, parts, out, target, subtype, study_model, bootstrap, seed)


def threshold_table(report: dict) -> str:
    """Temperature, ECE/Brier before -> after, threshold and its slice/study sensitivity."""
    rows = [(f"{'label':<17}{'T':>6}{'ECE':>15}{'Brier':>15}{'thr':>7}"
             f"{'sens slice [95% CI]':>24}{'spec study [95% CI]':>24}")]
    for name, f in report["labels"].items():
        row = (f"{name:<17}{f['temperature']:>6.2f}{_pair(f['ece_before'], f['ece_after'])}"
               f"{_pair(f['brier_before'], f['brier_after'])}")
        point = f.get("operating_point")
        if point:
            row += (f"{point['threshold']:>7.3f}{_ci(point['slice']['sensitivity'])}"
                    f"{_ci(point['study']['specificity'])}")
        rows.append(row)
    if "parts" in report:  # calibrated on whole studies (--real): the any threshold per part
        sm = report.get("study_model")
        rows.append(f"any: study-level threshold {report['threshold_any']:.3f} "
                    + (f"(study model r={sm['r']:.2f})" if sm else "(max over slices)"))
        for part in report["parts"]:
            level = "study" if "study" in part else "slice"
            figures = part[level]
            rows.append(f"  {part['source']:<16}{level:>6} sens {_ci(figures['sensitivity'])}"
                        f"  spec {_ci(figures['specificity'])}")
    return "\n".join(rows)


def _pair(before: float | None, after: float | None) -> str:
    if before is None or after is None or math.isnan(before) or math.isnan(after):
        return f"{'-':>15}"
    return f"{before:>7.3f}>{after:<7.3f}"


def _ci(interval) -> str:
    est, low, high = interval
    if est is None or math.isnan(est):
        return f"{'-':>24}"
    return f"{est:>8.3f} [{low:.3f}, {high:.3f}]".rjust(24)


@click.command("evaluate", epilog=EXIT_CODES)
@MODEL_ARG
@DATA_OPT
@click.option("--bootstrap", type=click.IntRange(0), default=0, show_default=True,
              help="Bootstrap resamples for 95% AUC intervals (0 = none).")
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the JSON report to this file.")
@click.option("--provider", type=click.Choice(["auto", "cpu", "cuda", "tensorrt"]),
              default="auto", show_default=True, help="ONNX Runtime execution provider.")
@BATCH_OPT
@THREADS_OPT
@JSON_OPT
@click.pass_context
def evaluate(
    ctx: click.Context, model: Path, data_dir: Path, bootstrap: int, report: Path | None,
    provider: str, batch_size: int, threads: int | None, as_json: bool,
) -> None:
    """Evaluate MODEL on labelled data: AUC, sensitivity, specificity, ECE, Brier per label.

    Figures are given at slice level and at study level (max over a study's slices), with the
    model's own temperatures and per-label thresholds, as 'ichrt score' would use them.
    """
    from ichrt.calibration.evaluate import evaluate_model, format_table
    from ichrt.calibration.report import jsonable, write_json
    from ichrt.runtime.session import ProviderUnavailable

    with usage_errors(), model_errors(ctx, "evaluate"):
        try:
            with progress_bar("evaluating") as progress:
                result = evaluate_model(model, data_dir, batch_size, provider, threads,
                                        bootstrap, progress)
        except ProviderUnavailable as exc:
            raise click.UsageError(str(exc)) from exc
    document = result.to_dict()
    if report is not None:
        write_json(report, document)
    if as_json:
        click.echo(json.dumps(jsonable(document), indent=2, allow_nan=False))
    else:
        click.echo(f"model: {result.model['name']} (sha256:{result.model['sha256'][:12]})")
        d = result.data
        click.echo(f"data: {d['slices']} slices, {d['studies']} studies, "
                   f"{d['rejected']} files rejected, {d['unlabelled']} unlabelled")
        click.echo(format_table(result.labels))
    ctx.exit(EXIT_REJECTED if result.rejected else EXIT_OK)
