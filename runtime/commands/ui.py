"""``ichrt ui``: the worklist page over the output folder of ``ichrt score`` (a thin wrapper)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

EPILOG = """\b
Pages: / the worklist (flagged first by p(any), then arrival order; live: a new run of
'ichrt score' into --results shows without reloading), /study/... the slices with window
presets and the heat map overlay, /status the model, counts, last errors and disk space.
\b
Access: binds to 127.0.0.1 by default. Bound to any other address it needs a token (--token,
env ICHRT_UI_TOKEN, or one made up and printed at start): open the printed address once, the
browser then keeps it in a cookie; scripts send 'Authorization: Bearer TOKEN'. No UID, path or
patient data appears in URLs or logs; patient names never appear, PatientID only with
--show-patient-id (and results written with 'ichrt score --show-phi').
\b
Exit codes:
  0  stopped
  2  usage error (bad option, the 'ui' extra not installed)
"""


@click.command(epilog=EPILOG)
@click.option("--results", required=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="The --out folder of 'ichrt score' (may not exist yet).")
@click.option("--inputs", multiple=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder the scored DICOM files lie in; repeatable. Only files inside "
                   "these are read  [default: the current folder].")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; any but loopback needs a token.")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535),
              help="TCP port.")
@click.option("--token", envvar="ICHRT_UI_TOKEN", default=None,
              help="Access token [env ICHRT_UI_TOKEN; made up when --host is not loopback].")
@click.option("--show-patient-id", is_flag=True,
              help="Show PatientID where the results have it (never the patient's name).")
def ui(results: Path, inputs: tuple[Path, ...], host: str, port: int, token: str | None,
       show_patient_id: bool) -> None:
    """Serve the worklist page over the results of 'ichrt score' ('ui' extra)."""
    from ichrt.runtime.ui import UIUnavailable, require_ui

    try:
        require_ui()
    except UIUnavailable as exc:
        raise click.UsageError(str(exc)) from None
    from ichrt.runtime.ui.app import create_app, is_loopback, make_token, run_server
    from ichrt.runtime.ui.sources import ResultsSource, model_contract

    if not is_loopback(host) and not token:
        token = make_token()
    source = ResultsSource(results, inputs, show_patient_id=show_patient_id)

    def contract() -> dict:
        model = source.snapshot().model
        return model_contract(model.get("path"), model.get("sha256"))

    app = create_app(source, token=token, show_patient_id=show_patient_id, contract=contract)
    shown = f"[{host}]" if ":" in host else host
    address = f"http://{shown}:{port}/" + (f"?token={token}" if token else "")
    print(f"worklist page: {address} (Ctrl-C stops)", file=sys.stderr, flush=True)
    run_server(app, host=host, port=port)
