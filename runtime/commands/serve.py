"""``ichrt serve`` (the DICOM edge service) and ``ichrt status`` (its state), thin wrappers."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ichrt.runtime.cli import EXIT_ERROR, EXIT_OK

SERVE_EPILOG = """\b
Settings come from --config (TOML; see the README, "Deploying the edge box"); the flags
override it. Instances are answered with success only once fsync'd into the spool and
recorded in SPOOL/state.sqlite. Logs: JSON lines on stderr, without patient names.
Stops gracefully on SIGTERM or Ctrl-C.
\b
Exit codes:
  0  stopped on request
  1  runtime error (model cannot be loaded, port in use)
  2  usage error (bad option or config, 'serve' extra not installed)
"""

STATUS_EPILOG = """\b
Exit codes:
  0  the state was read (also when some studies failed: see the output)
  1  no state database in the spool
  2  usage error
"""


def _config(config_file: Path | None, **overrides: object):
    from ichrt.runtime.serve.config import ConfigError, load_config

    try:
        return load_config(config_file, **overrides)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None


@click.command("serve", epilog=SERVE_EPILOG)
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False,
              path_type=Path), help="TOML settings file.")
@click.option("--port", type=click.IntRange(0, 65535), help="Port to listen on [11112].")
@click.option("--host", help="Address to listen on [0.0.0.0].")
@click.option("--ae-title", help="Our AE title [ICHRT].")
@click.option("--spool", type=click.Path(file_okay=False, path_type=Path),
              help="Spool folder: instances, results, state.sqlite [/var/lib/ichrt].")
@click.option("--destination", "destinations", multiple=True, metavar="AET@HOST:PORT",
              help="Where results go (repeatable; replaces the config file's list).")
@click.option("--allow", "allowed", multiple=True, metavar="AET",
              help="Calling AE title to accept (repeatable; default: any).")
@click.option("--quiet-period", type=click.FloatRange(0), help="Seconds without a new instance "
              "after which a study is complete [5].")
@click.option("--model", type=click.Path(exists=True, dir_okay=False),
              help="ONNX model with an ichrt contract [the shipped model].")
@click.option("--threshold", type=click.FloatRange(0.0, 1.0),
              help="p(any) that flags a study [the model's own].")
@click.option("--status-port", type=click.IntRange(0, 65535),
              help="Serve GET /healthz on 127.0.0.1:PORT (0 = off).")
@click.option("--http-port", type=click.IntRange(0, 65535),
              help="Serve the worklist page on this port (needs ichrt[ui]; 0 = off).")
@click.option("--http-host", help="Address of the worklist page [127.0.0.1]; any other needs "
                                  "http_token in the config file.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              help="debug logs every stored instance [info].")
@click.pass_context
def serve(ctx: click.Context, config_file: Path | None, port: int | None, host: str | None,
          ae_title: str | None, spool: Path | None, destinations: tuple[str, ...],
          allowed: tuple[str, ...], quiet_period: float | None, model: str | None,
          threshold: float | None, status_port: int | None, http_port: int | None,
          http_host: str | None, log_level: str | None) -> None:
    """Receive head CT over DICOM, score each study, send SR and heat maps back to PACS."""
    from ichrt.runtime.serve import ServeExtraMissing
    from ichrt.runtime.serve.logs import log, setup_logging
    from ichrt.runtime.serve.service import Service

    config = _config(config_file, port=port, host=host, ae_title=ae_title, spool=spool,
                     destinations=list(destinations) or None,
                     allowed_calling_aets=list(allowed) or None, quiet_period_s=quiet_period,
                     model=model, threshold=threshold, status_port=status_port,
                     http_port=http_port, http_host=http_host, log_level=log_level)
    setup_logging(config.log_level)
    service = Service(config)
    try:
        service.start()
    except ServeExtraMissing as exc:
        raise click.UsageError(str(exc)) from None
    except (ImportError, ValueError) as exc:  # no ichrt[ui], or a public page without a token
        service.stop(drain_s=0)
        raise click.UsageError(str(exc)) from None
    except OSError as exc:
        log.error("serve_failed", error=str(exc))
        service.stop(drain_s=0)
        ctx.exit(EXIT_ERROR)
    service.wait()
    ctx.exit(EXIT_OK)


@click.command("status", epilog=STATUS_EPILOG)
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False,
              path_type=Path), help="The service's TOML settings file.")
@click.option("--spool", type=click.Path(file_okay=False, path_type=Path),
              help="The service's spool folder (instead of, or overriding, --config).")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@click.option("--retry-failed", is_flag=True,
              help="Queue again every result that gave up sending and every study whose "
                   "scoring failed (the running service picks them up).")
@click.option("--studies", "n_studies", type=click.IntRange(0), default=0,
              help="Also list the N most recent studies (key, status, version, slices, times).")
@click.pass_context
def status(ctx: click.Context, config_file: Path | None, spool: Path | None, as_json: bool,
           retry_failed: bool, n_studies: int) -> None:
    """Show what the edge service holds: studies by status, results, sending queue, errors."""
    from ichrt.runtime.serve.state import State

    config = _config(config_file, spool=spool)
    if not config.db_path.is_file():
        click.echo(f"no state database at {config.db_path}", err=True)
        ctx.exit(EXIT_ERROR)
    state = State(config.db_path, readonly=not retry_failed)
    try:
        if retry_failed:
            n = state.retry_failed()
            click.echo(f"{n} result(s) or study(ies) queued again", err=True)
        summary = state.summary()
        recent = state.studies(limit=n_studies) if n_studies else []
    finally:
        state.close()
    rows = [_study_row(s) for s in recent]
    if as_json:
        if n_studies:
            summary["recent_studies"] = rows
        click.echo(json.dumps(summary, indent=2, default=str))
        ctx.exit(EXIT_OK)
    s, o = summary["studies"], summary["outbox"]
    click.echo("studies: " + ", ".join(f"{k} {v}" for k, v in s.items()))
    click.echo(f"instances: {summary['instances']} ({summary['instances_received']} received), "
               f"results: {summary['results']} ({summary['flagged']} flagged)")
    click.echo("outbox: " + ", ".join(f"{k} {v}" for k, v in o.items()))
    for err in summary["recent_send_errors"]:
        click.echo(f"send error: {err['destination']} {err['kind']} after {err['attempts']} "
                   f"tries ({err['status']}): {err['last_error']}")
    for study in summary["failed_studies"]:
        click.echo(f"failed study {study['study_key']} v{study['version']}: {study['error']}")
    for row in rows:
        click.echo(f"{row['study']}  {row['status']:<9}  v{row['version']}  "
                   f"{row['instances']:>4} instances  last {row['last']}"
                   + (f"  scored in {row['turnaround_s']} s" if row["turnaround_s"] else "")
                   + (f"  error: {row['error']}" if row["error"] else ""))
    sys.stdout.flush()
    ctx.exit(EXIT_OK)


def _study_row(study: dict) -> dict:
    """One study for ``ichrt status --studies``: its key (not its UID), never patient data."""
    import datetime as dt

    def when(t: float | None) -> str | None:
        return None if t is None else dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime(
            "%Y-%m-%dT%H:%M:%SZ")

    scored = study["scored_at"]
    return {"study": study["study_key"], "status": study["status"], "version": study["version"],
            "instances": study["n_instances"], "first": when(study["first_at"]),
            "last": when(study["last_at"]), "scored": when(scored), "sent": when(study["sent_at"]),
            "turnaround_s": (round(scored - study["last_at"], 2)
                             if scored and scored >= study["last_at"] else None),
            "error": study["error"]}
