"""The ``ichrt`` command line: a click group whose subcommands are imported only when run.

``ichrt --help`` and ``ichrt score`` never import torch: each subcommand lives in its own module
and is loaded lazily by :class:`LazyGroup`.

Exit codes are the same for every subcommand, defined here once (:data:`EXIT_MEANINGS`); each
command's help lists them with :func:`exit_codes_help`, adding what they mean for it.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping

import click

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_REJECTED = 3

#: What each exit code means, for every subcommand.
EXIT_MEANINGS: dict[int, str] = {
    EXIT_OK: "success: every input was processed",
    EXIT_ERROR: "runtime error (a model that cannot be loaded, an unexpected failure)",
    EXIT_USAGE: "usage error (bad option, missing file or extra)",
    EXIT_REJECTED: "some inputs were rejected; results for the rest were still written",
}

#: subcommand name -> "module:attribute" of its click command, imported on first use.
COMMANDS: dict[str, str] = {
    "synth": "ichrt.runtime.commands.synth:synth",
    "ingest": "ichrt.runtime.commands.ingest:ingest",
    "score": "ichrt.runtime.commands.score:score",
    "explain": "ichrt.runtime.commands.explain:explain",
    "bench": "ichrt.runtime.commands.bench:bench",
    "serve": "ichrt.runtime.commands.serve:serve",
    "status": "ichrt.runtime.commands.serve:status",
    "ui": "ichrt.runtime.commands.ui:ui",
    "train": "ichrt.export.commands:train",
    "export": "ichrt.export.commands:export",
    "calibrate": "ichrt.calibration.commands:calibrate",
    "evaluate": "ichrt.calibration.commands:evaluate",
}

#: One-line help shown by ``ichrt --help`` without importing the subcommand modules.
SHORT_HELP: dict[str, str] = {
    "synth": "Generate labelled head-CT phantom studies (RSNA 2019 layout).",
    "ingest": "Read DICOM files into HU series and report what was rejected.",
    "score": "Score DICOM studies and write the prioritized worklist.",
    "explain": "Write heat maps and overlays for slices (CAM, Grad-CAM, h-Shap).",
    "bench": "Measure latency and throughput of the runtime (JSON with --json).",
    "serve": "DICOM edge service: receive studies, score, send SR to PACS ('serve' extra).",
    "status": "Show the edge service's state: studies, results, sending queue.",
    "ui": "Serve the worklist page over the results of 'ichrt score' ('ui' extra).",
    "train": "Train a hemorrhage model (needs the 'export' extra).",
    "export": "Export a training run to an ONNX model with its contract.",
    "calibrate": "INT8 quantization and probability/threshold calibration.",
    "evaluate": "Evaluate a model on labelled data (AUC, sensitivity, ECE).",
}


def exit_codes_help(details: Mapping[int, str] | None = None) -> str:
    """The ``Exit codes:`` block of a command's help (click ``\\b`` keeps its lines).

    ``details`` replaces the meaning of some codes with what they mean for one command.
    """
    meanings = {**EXIT_MEANINGS, **(details or {})}
    lines = ["\b", "Exit codes:"]
    for code in sorted(meanings):
        first, *rest = meanings[code].split("\n")
        lines.append(f"  {code}  {first}")
        lines.extend(f"     {line}" for line in rest)
    return "\n".join(lines) + "\n"


class LazyGroup(click.Group):
    """A click group that imports a subcommand's module only when that subcommand runs."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        if ctx.resilient_parsing or _listing_help(ctx):
            return click.Command(cmd_name, help=SHORT_HELP[cmd_name], short_help=SHORT_HELP[cmd_name])
        module_name, attr = target.split(":")
        return getattr(importlib.import_module(module_name), attr)


def _listing_help(ctx: click.Context) -> bool:
    """True while click formats the group's own help (subcommands must not be imported)."""
    return ctx.meta.get("ichrt.listing", False)


class _Root(LazyGroup):
    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        ctx.meta["ichrt.listing"] = True
        try:
            super().format_commands(ctx, formatter)
        finally:
            ctx.meta["ichrt.listing"] = False


@click.group(cls=_Root, context_settings={"help_option_names": ["-h", "--help"]},
             epilog=exit_codes_help())
@click.version_option(package_name="ichrt")
@click.pass_context
def main(ctx: click.Context) -> None:
    """ichrt: triage head CT for intracranial hemorrhage at the edge.

    Files -> slices (HU) -> tensors -> probabilities -> studies -> worklist.
    """
    from ichrt.runtime.environment import fewer_gc_passes, passive_openmp, quiet_pydicom

    passive_openmp()
    fewer_gc_passes()
    ctx.with_resource(quiet_pydicom())
