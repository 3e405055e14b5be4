"""``ichrt bench``: latency, end-to-end time, seed-style baseline, memory and start time.

The measurements live in :mod:`ichrt.runtime.benchmark`; this command loads the model, runs them
and prints the figures.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from ichrt.runtime.benchmark import format_report, run_bench
from ichrt.runtime.cli import EXIT_ERROR
from ichrt.runtime.contract import ContractError
from ichrt.runtime.session import ModelError, load_model


@click.command("bench")
@click.option("--model", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="ONNX model with an ichrt contract [default: the shipped model].")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@click.pass_context
def bench(ctx: click.Context, model: Path | None, as_json: bool) -> None:
    """Measure latency (batch 1, 8, 32), end-to-end time against pure model time, the seed-style
    baseline (when torch is installed), start time and peak memory on a phantom study.

    Takes about a minute with the shipped model on a 2-core CPU; use an otherwise idle machine.

    \b
    Exit codes: 0 measured, 1 runtime error (e.g. the model cannot be loaded), 2 usage error.
    """
    try:
        loaded = load_model(model)
    except (ModelError, ContractError) as exc:
        click.echo(f"ichrt bench: {exc}", err=True)
        ctx.exit(EXIT_ERROR)
    report = run_bench(loaded)
    click.echo(json.dumps(report, indent=2) if as_json else format_report(report))
