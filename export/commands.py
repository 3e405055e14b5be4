"""``ichrt train`` and ``ichrt export``: thin click wrappers over :mod:`ichrt.export.train` and
:mod:`ichrt.export.onnx_export`.

torch is imported inside the command functions only, so listing or loading these commands never
imports it; without the ``export`` extra a command stops with exit code 2 and names the extra.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ichrt.export.datasets import FORMATS
from ichrt.runtime.cli import EXIT_USAGE
from ichrt.runtime.extras import ExtraNotInstalled, needs_extra


class ExportExtraMissing(click.ClickException, ExtraNotInstalled):
    """The ``export`` extra (torch, torchvision, onnx) is not installed: a usage error (exit 2)."""

    exit_code = EXIT_USAGE


def _require_export_extra() -> None:
    try:
        import onnx  # noqa: F401
        import torch  # noqa: F401
        import torchvision  # noqa: F401
    except ImportError as exc:
        raise ExportExtraMissing(needs_extra("training and export", "export",
                                             f"{exc.name} is missing")) from exc


def _floats(text: str, what: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError as exc:
        raise click.BadParameter(f"{what}: comma-separated numbers expected, got {text!r}") from exc


def _windows(text: str) -> tuple[tuple[float, float], ...]:
    out = []
    for part in text.split(","):
        level, sep, width = part.partition("/")
        try:
            out.append((float(level), float(width)))
        except ValueError as exc:
            raise click.BadParameter(f"windows: LEVEL/WIDTH pairs expected, got {part!r}",
                                     param_hint="--windows") from exc
        if not sep:
            raise click.BadParameter(f"windows: LEVEL/WIDTH expected, got {part!r}",
                                     param_hint="--windows")
    return tuple(out)


def _command_line() -> str:
    return "ichrt " + " ".join(sys.argv[1:])


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--data", "data", multiple=True, metavar="[FORMAT:]DIR",
              help="Training data folder (repeatable). FORMAT (see --format) overrides "
                   "--format for this folder; each folder is one source for class balancing.")
@click.option("--val-data", multiple=True, metavar="[FORMAT:]DIR",
              help="Validation folder(s); when given, --data is not split and all of it trains.")
@click.option("--format", "fmt", default="rsna", show_default=True,
              type=click.Choice(sorted(FORMATS)),
              help="Layout of --data folders: rsna (stage_2_train.csv + stage_2_train/*.dcm, "
                   "also what 'ichrt synth' writes), imagefolder (hemorrhage/, no_hemorrhage/ "
                   "of 8-bit images, mapped back to HU of the brain window), or one of the real "
                   "sources of shared/realtrain (ctich, roboflow, bhsd, rsna200).")
@click.option("--recipe", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="JSON list of stages instead of --data/--epochs, e.g. pretrain on phantoms "
                   "then train on real + phantom data (see ichrt.export.train.load_recipe).")
@click.option("--arch", default="resnet18", show_default=True,
              help="resnet10, resnet18, resnet50, densenet121, efficientnet_b0, "
                   "rsnahemorrhagenet (the seed tutorial's ResNet-18 -> 128 -> 1), or the "
                   "lesion-level resnet10seg / resnet18seg (FPN lesion map at stride 4).")
@click.option("--head", type=click.Choice(["multi", "any"]), default="multi", show_default=True,
              help="multi: any + 5 subtypes; any: binary any-only head (seed parity).")
@click.option("--out", "run_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Run folder: checkpoint.pt, best.pt, metrics.jsonl, run.json.")
@click.option("--epochs", default=10, show_default=True, type=click.IntRange(1),
              help="Epochs (single-stage runs).")
@click.option("--lr", default=1e-3, show_default=True, type=click.FloatRange(0, min_open=True),
              help="Peak learning rate (AdamW).")
@click.option("--weight-decay", default=1e-4, show_default=True, type=float, help="AdamW decay.")
@click.option("--schedule", type=click.Choice(["onecycle", "cosine"]), default="onecycle",
              show_default=True, help="Learning-rate schedule over each stage.")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1))
@click.option("--image-size", default=224, show_default=True, type=click.IntRange(8, 2048),
              help="Model input side in pixels.")
@click.option("--windows", default="40/80,80/200,600/2800", show_default=True,
              help="Input channels as LEVEL/WIDTH HU windows.")
@click.option("--mean", default="0.5,0.5,0.5", show_default=True,
              help="Per-channel normalization mean (after windowing to [0, 1]).")
@click.option("--std", default="0.5,0.5,0.5", show_default=True, help="Per-channel std.")
@click.option("--framing", type=click.Choice(["head", "none"]), default="head",
              show_default=True, help="Crop a square around the head before resizing, or not.")
@click.option("--augment/--no-augment", default=True, show_default=True,
              help="Augment training slices (scale/shift, scanner HU, noise, flips, rotation).")
@click.option("--augment-preset", default="default", show_default=True,
              help="default, strong, or module:attribute of an AugmentConfig.")
@click.option("--balance", type=click.Choice(["none", "class", "source"]), default="class",
              show_default=True,
              help="Sampling: class = balance labels within each source; source = also give "
                   "every source the same weight; none = as loaded.")
@click.option("--pos-weight", default=1.0, show_default=True, type=click.FloatRange(0),
              help="Weight of positive labels in the loss.")
@click.option("--loc-weight", default=0.0, show_default=True, type=click.FloatRange(0),
              help="Weight of the CAM localization loss on slices with masks or boxes.")
@click.option("--seg-weight", default=1.0, show_default=True, type=click.FloatRange(0),
              help="Weight of the lesion-map loss (dense archs resnet10seg/resnet18seg).")
@click.option("--insert-p", default=0.0, show_default=True, type=click.FloatRange(0, 1),
              help="Probability of pasting a real bleed (masked donors) into a negative slice.")
@click.option("--hard-p", default=0.0, show_default=True, type=click.FloatRange(0, 1),
              help="Probability of adding a hard negative (scalp blood, skull defect, "
                   "calcification, streaks, objects around the head).")
@click.option("--appearance", is_flag=True,
              help="Appearance augmentation: gamma, blur/sharpen, JPEG, low resolution, text.")
@click.option("--val-fraction", default=0.2, show_default=True, type=click.FloatRange(0, 1,
              max_open=True), help="Share of groups (studies/patients) held out per source.")
@click.option("--threshold", default=0.5, show_default=True, type=click.FloatRange(0, 1),
              help="Threshold for validation sensitivity/specificity (and the model default).")
@click.option("--seed", default=0, show_default=True, type=int,
              help="Seed of initialization, split, data order and augmentation.")
@click.option("--workers", default=0, show_default=True, type=click.IntRange(0),
              help="Data-loader worker processes (0 = in the training process).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              show_default=True, help="auto = CUDA when available (mixed precision), else CPU.")
@click.option("--no-amp", is_flag=True, help="Full precision on CUDA.")
@click.option("--resume", is_flag=True,
              help="Continue the run in --out from its checkpoint with its saved settings "
                   "(only --max-steps, --workers, --device and --checkpoint-every apply).")
@click.option("--init-weights", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Local weight file to start from (torchvision, RSNAHemorrhageNet or ichrt "
                   "state_dict); nothing is downloaded.")
@click.option("--max-steps", type=click.IntRange(1), default=None,
              help="Stop after this many optimizer steps (smoke runs); resumable.")
@click.option("--checkpoint-every", default=200, show_default=True, type=click.IntRange(0),
              help="Also checkpoint every N steps (0 = only after each epoch).")
@click.option("--name", default="", help="Model name recorded in the contract.")
@click.option("--json", "as_json", is_flag=True, help="Print the final metrics as JSON.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def train(data: tuple[str, ...], val_data: tuple[str, ...], fmt: str, recipe: Path | None,
          arch: str, head: str, run_dir: Path, epochs: int, lr: float, weight_decay: float,
          schedule: str, batch_size: int, image_size: int, windows: str, mean: str, std: str,
          framing: str, augment: bool, augment_preset: str, balance: str, pos_weight: float,
          loc_weight: float, seg_weight: float, insert_p: float, hard_p: float,
          appearance: bool, val_fraction: float, threshold: float, seed: int, workers: int,
          device: str, no_amp: bool, resume: bool, init_weights: Path | None,
          max_steps: int | None, checkpoint_every: int, name: str, as_json: bool,
          quiet: bool) -> None:
    """Train a hemorrhage model on labelled slices (needs the 'export' extra).

    \b
    Examples:
      ichrt train --data phantoms/ --out runs/r18 --arch resnet18 --image-size 160
      ichrt train --data imagefolder:jpgs/ --head any --out runs/seed
      ichrt train --recipe recipe.json --out runs/mixed
      ichrt train --out runs/r18 --resume

    Progress goes to stderr; metrics per epoch to RUN_DIR/metrics.jsonl.
    Exit codes: 0 trained, 1 runtime error, 2 usage error or missing extra.
    """
    _require_export_extra()
    from ichrt.export import train as training
    from ichrt.export.datasets import DataSpec, TrainingDataError

    try:
        if resume:
            result = training.resume_run(run_dir, progress=not quiet, max_steps=max_steps,
                                         workers=workers, device=device,
                                         checkpoint_every=checkpoint_every)
        else:
            if bool(recipe) == bool(data):
                raise click.UsageError("give either --data or --recipe")
            if recipe:
                stages = training.load_recipe(recipe)
            else:
                stages = [training.Stage(
                    data=[DataSpec.parse(d, fmt) for d in data], epochs=epochs,
                    val_data=[DataSpec.parse(d, fmt) for d in val_data])]
            config = training.TrainConfig(
                arch=arch, head=head, image_size=image_size, windows=_windows(windows),
                mean=_floats(mean, "--mean"), std=_floats(std, "--std"), framing=framing,
                lr=lr, weight_decay=weight_decay, batch_size=batch_size, schedule=schedule,
                augment=augment_preset if augment else "none", balance=balance,
                pos_weight=pos_weight, loc_weight=loc_weight, val_fraction=val_fraction,
                seg_weight=seg_weight, insert_p=insert_p, hard_p=hard_p, appearance=appearance,
                seed=seed, workers=workers, device=device, amp=not no_amp, max_steps=max_steps,
                checkpoint_every=checkpoint_every, threshold=threshold,
                init_weights=str(init_weights) if init_weights else None, name=name)
            result = training.train(config, stages, run_dir, command=_command_line(),
                                    progress=not quiet)
    except (TrainingDataError, FileNotFoundError) as exc:
        raise click.UsageError(str(exc)) from exc
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        auc = (result.get("auc") or {}).get("any")
        click.echo(f"trained: {run_dir} (step {result.get('global_step')}, train loss "
                   f"{result.get('train_loss', float('nan')):.4f}, val AUC(any) "
                   f"{'n/a' if auc is None else f'{auc:.4f}'})")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("run", type=click.Path(exists=True, path_type=Path))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="ONNX file to write; labels.json and <name>.pt are written beside it.")
@click.option("--which", type=click.Choice(["last", "best"]), default="last", show_default=True,
              help="Checkpoint of a run folder: the last one or the best by validation AUC(any).")
@click.option("--name", default=None, help="Model name recorded in the contract.")
@click.option("--json", "as_json", is_flag=True, help="Print the contract as JSON.")
def export(run: Path, out: Path, which: str, name: str | None, as_json: bool) -> None:
    """Export a training run (folder or checkpoint file) to ONNX with its contract.

    The model gets outputs probs, logits and features, a dynamic batch axis, and its
    preprocessing contract, CAM weights, provenance and validation metrics in its metadata.
    It is checked with onnx.checker and against torch with ONNX Runtime before it is written.

    Exit codes: 0 exported, 1 export failed its checks, 2 usage error or missing extra.
    """
    _require_export_extra()
    from ichrt.export.onnx_export import ExportError, export_onnx
    from ichrt.runtime.hashing import file_sha256

    try:
        contract = export_onnx(run, out, which=which, name=name)
    except ExportError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(contract.to_json())
        return
    auc = (contract.metrics.get("validation", {}).get("auc") or {}).get("any")
    diffs = contract.provenance.get("parity_max_abs_diff", {})
    worst = max(diffs.get("probs", float("nan")), diffs.get("features", float("nan")))
    click.echo(f"exported {out} (sha256:{file_sha256(out)[:12]}): {contract.arch}, input "
               f"{contract.input_size}, labels {','.join(contract.labels)}, CAM "
               f"{'yes' if contract.cam_weights else 'no'}, val AUC(any) "
               f"{'n/a' if auc is None else f'{auc:.4f}'}, torch/ORT max diff {worst:.1e}")
