"""The service's settings: one TOML file, with command-line flags overriding its values.

Example (every key optional; the values shown are the defaults)::

    [serve]
    ae_title = "ICHRT"            # our AE title
    host = "0.0.0.0"              # address to listen on
    port = 11112
    spool = "/var/lib/ichrt"      # instances, results and the state database
    allowed_calling_aets = []     # calling AE titles accepted; empty = any
    max_associations = 8          # concurrent associations
    quiet_period_s = 5.0          # a study is complete when nothing arrived for this long
    model = ""                    # ONNX model; empty = the shipped default
    threshold = -1                # p(any) that flags a study; < 0 = the model's own
    max_sc_images = 8             # Secondary Capture heat maps per flagged study
    log_ids = false               # log AccessionNumber (never patient names)
    log_level = "info"            # debug logs every stored instance
    status_port = 0               # HTTP /healthz on 127.0.0.1; 0 = off
    http_port = 0                 # the worklist page (ichrt[ui]); 0 = off
    http_host = "127.0.0.1"       # elsewhere than loopback it needs http_token
    http_token = ""               # token the page asks for (header, cookie or ?token= once)

    [[destinations]]              # where the SR and SC results go (C-STORE)
    ae_title = "PACS"
    host = "10.0.0.5"
    port = 104

    [notify]                      # optional HTTP POST for each flagged study; off when url empty
    url = ""
    timeout_s = 5.0

    [retry]                       # sending: exponential backoff, then "failed"
    max_attempts = 20
    base_s = 2.0
    max_s = 300.0
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

DEFAULT_PORT = 11112
DEFAULT_AE_TITLE = "ICHRT"
DEFAULT_SPOOL = "/var/lib/ichrt"
#: An AE title: 1-16 characters of the default character repertoire, no backslash.
_AET = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")
_DESTINATION = re.compile(r"^(?P<aet>[^@]{1,16})@(?P<host>\[[0-9A-Fa-f:.]+\]|[^:@\s]+):(?P<port>\d+)$")


class ConfigError(ValueError):
    """A setting that cannot be used (bad TOML, unknown key, bad value)."""


@dataclass(frozen=True)
class Destination:
    """A DICOM peer the results are sent to."""

    ae_title: str
    host: str
    port: int

    def __post_init__(self) -> None:
        check_ae_title(self.ae_title, "destination AE title")
        check_port(self.port, "destination port")
        if not self.host:
            raise ConfigError("destination host is empty")

    @property
    def key(self) -> str:
        """``AET@HOST:PORT``: how a destination is named in the state and the logs."""
        return f"{self.ae_title}@{self.host}:{self.port}"

    @classmethod
    def parse(cls, text: str) -> Destination:
        """``AET@HOST:PORT`` (an IPv6 host in brackets)."""
        match = _DESTINATION.match(text.strip())
        if not match:
            raise ConfigError(f"destination {text!r} is not AET@HOST:PORT")
        return cls(match["aet"], match["host"].strip("[]"), int(match["port"]))


@dataclass(frozen=True)
class Retry:
    max_attempts: int = 20
    base_s: float = 2.0
    max_s: float = 300.0

    def delay(self, attempts: int) -> float:
        """Seconds to wait after the ``attempts``-th failed try (1, 2, ...)."""
        return min(self.max_s, self.base_s * 2.0 ** max(0, attempts - 1))


@dataclass(frozen=True)
class Notify:
    url: str = ""
    timeout_s: float = 5.0

    @property
    def enabled(self) -> bool:
        return bool(self.url)


@dataclass(frozen=True)
class ServeConfig:
    ae_title: str = DEFAULT_AE_TITLE
    host: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    spool: Path = Path(DEFAULT_SPOOL)
    allowed_calling_aets: tuple[str, ...] = ()
    max_associations: int = 8
    quiet_period_s: float = 5.0
    model: str = ""
    threshold: float = -1.0
    max_sc_images: int = 8
    log_ids: bool = False
    log_level: str = "info"
    status_port: int = 0
    http_port: int = 0
    http_host: str = "127.0.0.1"
    http_token: str = ""
    destinations: tuple[Destination, ...] = ()
    notify: Notify = field(default_factory=Notify)
    retry: Retry = field(default_factory=Retry)
    #: Seconds between the worker's and the sender's polls of the state.
    poll_s: float = 0.2

    def __post_init__(self) -> None:
        check_ae_title(self.ae_title, "ae_title")
        check_port(self.port, "port", allow_zero=True)
        check_port(self.http_port, "http_port", allow_zero=True)
        for aet in self.allowed_calling_aets:
            check_ae_title(aet, "allowed calling AE title")
        if self.max_associations < 1:
            raise ConfigError(f"max_associations must be >= 1, got {self.max_associations}")
        if self.quiet_period_s < 0:
            raise ConfigError(f"quiet_period_s must be >= 0, got {self.quiet_period_s}")
        if self.threshold > 1.0:
            raise ConfigError(f"threshold must be <= 1, got {self.threshold}")
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise ConfigError(f"log_level must be debug, info, warning or error, "
                              f"got {self.log_level!r}")
        if self.max_sc_images < 0:
            raise ConfigError(f"max_sc_images must be >= 0, got {self.max_sc_images}")
        if self.retry.max_attempts < 1 or self.retry.base_s < 0 or self.retry.max_s < 0:
            raise ConfigError(f"bad retry settings {self.retry}")
        keys = [d.key for d in self.destinations]
        if len(set(keys)) != len(keys):
            raise ConfigError(f"a destination is listed twice: {keys}")

    @property
    def db_path(self) -> Path:
        return self.spool / "state.sqlite"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings (for the start-up log line and ``ichrt status``)."""
        return {
            "ae_title": self.ae_title, "host": self.host, "port": self.port,
            "spool": str(self.spool), "allowed_calling_aets": list(self.allowed_calling_aets),
            "max_associations": self.max_associations, "quiet_period_s": self.quiet_period_s,
            "model": self.model, "threshold": self.threshold,
            "max_sc_images": self.max_sc_images, "log_ids": self.log_ids,
            "log_level": self.log_level,
            "status_port": self.status_port, "http_port": self.http_port,
            "http_host": self.http_host,
            "destinations": [d.key for d in self.destinations],
            "notify": bool(self.notify.url), "retry": vars(self.retry),
        }


def check_ae_title(value: str, what: str) -> None:
    if not isinstance(value, str) or not _AET.match(value) or not value.strip():
        raise ConfigError(f"{what} {value!r} is not a valid AE title (1-16 characters)")


def check_port(value: int, what: str, allow_zero: bool = False) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not (
        (0 if allow_zero else 1) <= value <= 65535
    ):
        raise ConfigError(f"{what} must be an integer port number, got {value!r}")


def _read_toml(path: Path) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - the serve extra brings tomli on 3.10
        import tomli as tomllib
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read the config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"the config file {path} is not valid TOML: {exc}") from None


_SERVE_KEYS = {f.name for f in fields(ServeConfig)} - {"destinations", "notify", "retry"}


def _section(doc: Mapping[str, Any], name: str, allowed: Iterable[str]) -> dict[str, Any]:
    section = doc.get(name, {})
    if not isinstance(section, Mapping):
        raise ConfigError(f"[{name}] must be a table")
    unknown = sorted(set(section) - set(allowed))
    if unknown:
        raise ConfigError(f"unknown key(s) in [{name}]: {', '.join(unknown)}")
    return dict(section)


def config_from_dict(doc: Mapping[str, Any], base_dir: Path | None = None) -> ServeConfig:
    """A :class:`ServeConfig` from a parsed TOML document (relative spool/model paths are
    taken relative to ``base_dir``, the config file's folder)."""
    unknown = sorted(set(doc) - {"serve", "destinations", "notify", "retry"})
    if unknown:
        raise ConfigError(f"unknown table(s): {', '.join(unknown)}")
    serve = _section(doc, "serve", _SERVE_KEYS)
    try:
        if "spool" in serve:
            serve["spool"] = _resolve(serve["spool"], base_dir)
        if serve.get("model"):
            serve["model"] = str(_resolve(serve["model"], base_dir))
        if "allowed_calling_aets" in serve:
            serve["allowed_calling_aets"] = tuple(serve["allowed_calling_aets"])
        for key in ("quiet_period_s", "threshold", "poll_s"):
            if key in serve:
                serve[key] = float(serve[key])
        destinations = doc.get("destinations", [])
        if not isinstance(destinations, list):
            raise ConfigError("destinations must be an array of tables ([[destinations]])")
        dests = tuple(
            Destination(**_section({"d": d}, "d", ("ae_title", "host", "port")))
            for d in destinations
        )
        notify = Notify(**_section(doc, "notify", ("url", "timeout_s")))
        retry_doc = _section(doc, "retry", ("max_attempts", "base_s", "max_s"))
        retry = Retry(**{k: (int(v) if k == "max_attempts" else float(v))
                         for k, v in retry_doc.items()})
        return ServeConfig(**serve, destinations=dests, notify=notify, retry=retry)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"bad setting: {exc}") from None


def _resolve(value: Any, base_dir: Path | None) -> Path:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"expected a path, got {value!r}")
    path = Path(value).expanduser()
    return path if path.is_absolute() or base_dir is None else base_dir / path


def load_config(
    path: str | Path | None = None, **overrides: Any
) -> ServeConfig:
    """The settings of ``path`` (or the defaults) with ``overrides`` applied.

    Overrides that are None are ignored (a flag not given); ``destinations`` given as
    ``AET@HOST:PORT`` strings replace the file's list.
    """
    config = ServeConfig()
    if path is not None:
        path = Path(path)
        config = config_from_dict(_read_toml(path), path.resolve().parent)
    given = {k: v for k, v in overrides.items() if v is not None}
    if "destinations" in given:
        dests = given.pop("destinations")
        if dests:
            given["destinations"] = tuple(
                d if isinstance(d, Destination) else Destination.parse(d) for d in dests)
    if "spool" in given:
        given["spool"] = Path(given["spool"])
    if "allowed_calling_aets" in given:
        given["allowed_calling_aets"] = tuple(given["allowed_calling_aets"])
    unknown = sorted(set(given) - {f.name for f in fields(ServeConfig)})
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(unknown)}")
    return replace(config, **given)
