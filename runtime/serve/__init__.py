"""``ichrt serve``: a DICOM edge service that receives head CT and sends its findings back to PACS.

An application is small operators wired together, with state passed through SQLite rather than
through shared objects (the MONAI Deploy pattern)::

    intake (Storage SCP) -> spool (durable files) -> state (SQLite, WAL)
        -> worker: study completion (quiet period) -> scoring (the same Scorer as ``ichrt score``)
        -> results (DICOM SR + Secondary Capture heat maps) -> sender (C-STORE, HTTP notify)

One module per step:

* :mod:`.config` - the TOML file and the flags that override it.
* :mod:`.spool` - durable, hash-named instance files (temporary name, fsync, rename).
* :mod:`.state` - the SQLite database: studies, instances, results, the outbox.
* :mod:`.intake` - the pynetdicom Storage SCP (C-ECHO, C-STORE of CT Image Storage).
* :mod:`.worker` - quiet-period completion and scoring in a worker thread.
* :mod:`.results` - the SR and SC objects, with UIDs derived from the study and the model hash.
* :mod:`.sender` - C-STORE to destinations and the HTTP notification, retried with backoff.
* :mod:`.service` - wires them together; start, stop on SIGTERM.
* :mod:`.logs` - structured (JSON) log lines without patient names.

The DICOM network and SR libraries (pynetdicom, highdicom) come with the ``serve`` extra and are
imported only inside the functions that use them: ``import ichrt.runtime.serve`` stays lean.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ichrt.runtime.extras import ExtraNotInstalled, needs_extra


class ServeExtraMissing(ExtraNotInstalled):
    """pynetdicom or highdicom (the ``serve`` extra) is not installed."""


def require(module: str) -> ModuleType:
    """Import ``module`` (pynetdicom, highdicom) or raise :class:`ServeExtraMissing`."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ServeExtraMissing(needs_extra("ichrt serve", "serve",
                                            f"{module.split('.')[0]} is missing")) from exc
