"""The Storage SCP: C-ECHO, and C-STORE of CT Image Storage into the spool.

An instance is answered with success only after it is safely on disk and in the state: its bytes
(as the peer encoded them) are written to ``tmp/``, fsync'd, checked by the runtime's own ingest
(:func:`ichrt.runtime.dicom.read_or_reject`: the same reasons as ``ichrt score``), renamed into
the spool folder named by a hash of its UIDs, and recorded in SQLite.  Anything else gets a
failure status with the reason in Error Comment, is logged, and the association goes on:

=========  ==========================================================================
``0x0122`` SOP class not supported (anything other than CT Image Storage)
``0xA900`` data set does not match the SOP class (e.g. Modality is not CT)
``0xA700`` out of resources (the spool cannot be written)
``0xC000`` cannot understand (truncated or undecodable pixel data, missing UIDs, ...)
=========  ==========================================================================

Other storage SOP classes are accepted at association time on purpose, so that a non-CT
instance is answered per instance with ``0x0122`` instead of failing the whole association.
Compressed transfer syntaxes are offered only when pydicom has a decoder for them (the
``codecs`` extra).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any

from ichrt.runtime.serve import require
from ichrt.runtime.serve.config import ServeConfig
from ichrt.runtime.serve.logs import log
from ichrt.runtime.serve.spool import Spool, move_durably, uid_key, write_synced
from ichrt.runtime.serve.state import InstanceRecord, State

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
STATUS_SUCCESS = 0x0000
STATUS_SOP_CLASS_NOT_SUPPORTED = 0x0122
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_DATASET_MISMATCH = 0xA900
STATUS_CANNOT_UNDERSTAND = 0xC000

#: Uncompressed transfer syntaxes, always offered.
NATIVE_SYNTAXES = (
    "1.2.840.10008.1.2.1",     # Explicit VR Little Endian
    "1.2.840.10008.1.2",       # Implicit VR Little Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.2",     # Explicit VR Big Endian (retired, still sent by old scanners)
)
#: Compressed transfer syntaxes, offered when a decoder is installed.
COMPRESSED_SYNTAXES = (
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline
    "1.2.840.10008.1.2.4.51",  # JPEG Extended
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.5",     # RLE Lossless
)


def ct_transfer_syntaxes() -> list[str]:
    """The transfer syntaxes offered for CT Image Storage: native ones plus decodable ones."""
    from pydicom.pixels.decoders.base import get_decoder

    offered = list(NATIVE_SYNTAXES)
    for uid in COMPRESSED_SYNTAXES:
        try:
            if get_decoder(uid).is_available:
                offered.append(uid)
        except (NotImplementedError, ValueError):
            continue
    return offered


@dataclass(frozen=True)
class Refusal:
    status: int
    reason: str


def classify_rejection(reason: str) -> int:
    """The C-STORE status for a reason given by the runtime's ingest."""
    text = reason.lower()
    if "only ct is read" in text or "not a grayscale ct" in text or "not an image" in text:
        return STATUS_DATASET_MISMATCH
    return STATUS_CANNOT_UNDERSTAND


class Intake:
    """The event handlers of the Storage SCP (one instance shared by every association)."""

    def __init__(self, config: ServeConfig, spool: Spool, state: State) -> None:
        self.config = config
        self.spool = spool
        self.state = state
        self.stored = 0
        self.refused = 0

    # -- pynetdicom wiring -------------------------------------------------------------------

    def make_ae(self) -> Any:
        """A pynetdicom AE with the SCP's contexts, AE title and limits."""
        pynetdicom = require("pynetdicom")
        from pynetdicom.sop_class import Verification

        ae = pynetdicom.AE(ae_title=self.config.ae_title)
        ae.maximum_associations = self.config.max_associations
        ae.maximum_pdu_size = 0  # no limit on what we receive
        ae.network_timeout = 60
        ae.dimse_timeout = 60
        if self.config.allowed_calling_aets:
            ae.require_calling_aet = list(self.config.allowed_calling_aets)
        ae.add_supported_context(Verification)
        for cx in pynetdicom.AllStoragePresentationContexts:
            if cx.abstract_syntax != CT_IMAGE_STORAGE:
                ae.add_supported_context(cx.abstract_syntax, list(NATIVE_SYNTAXES[:2]))
        ae.add_supported_context(CT_IMAGE_STORAGE, ct_transfer_syntaxes())
        return ae

    def handlers(self) -> list[tuple[Any, Any]]:
        from pynetdicom import evt

        return [
            (evt.EVT_C_ECHO, self.on_echo),
            (evt.EVT_C_STORE, self.on_store),
            (evt.EVT_ACCEPTED, self.on_accepted),
            (evt.EVT_REJECTED, self.on_rejected),
            (evt.EVT_ABORTED, self.on_aborted),
        ]

    # -- events ------------------------------------------------------------------------------

    def on_accepted(self, event: Any) -> None:
        log.info("association_accepted", calling_aet=_calling(event), peer=_peer(event))

    def on_rejected(self, event: Any) -> None:
        calling = _calling(event)
        active = [a for a in event.assoc.ae.active_associations if a.is_acceptor]
        allowed = self.config.allowed_calling_aets
        if allowed and calling not in allowed:
            reason = "calling AE title not allowed"
        elif len(active) > self.config.max_associations:
            reason = f"too many associations ({len(active) - 1} active)"
        else:
            reason = "rejected"
        log.warning("association_rejected", calling_aet=calling, peer=_peer(event),
                    reason=reason)

    def on_aborted(self, event: Any) -> None:
        log.warning("association_aborted", calling_aet=_calling(event), peer=_peer(event))

    def on_echo(self, event: Any) -> int:
        log.info("echo", calling_aet=_calling(event))
        return STATUS_SUCCESS

    def on_store(self, event: Any) -> Any:
        calling = _calling(event)
        request = event.request
        sop_class = str(request.AffectedSOPClassUID or "")
        try:
            outcome = self.store(event, calling, sop_class)
        except Exception as exc:  # noqa: BLE001 - one bad instance never stops the service
            log.error("store_error", exc_info=True, calling_aet=calling, error=str(exc)[:200])
            outcome = Refusal(STATUS_CANNOT_UNDERSTAND, f"internal error: {type(exc).__name__}")
        if isinstance(outcome, Refusal):
            self.refused += 1
            log.warning("store_refused", calling_aet=calling, status=f"0x{outcome.status:04X}",
                        reason=outcome.reason, sop_class=sop_class)
            return _status(outcome.status, outcome.reason)
        return STATUS_SUCCESS

    def store(self, event: Any, calling: str, sop_class: str) -> Refusal | None:
        """Put one C-STORE'd instance on disk and in the state, or say why not."""
        from ichrt.runtime.dicom import read_or_reject
        from ichrt.runtime.slices import Rejected

        if sop_class != CT_IMAGE_STORAGE:
            return Refusal(STATUS_SOP_CLASS_NOT_SUPPORTED,
                           f"SOP class {_sop_name(sop_class)} is not CT Image Storage")
        tmp = self.spool.temporary()
        try:
            try:
                size = write_synced(tmp, [event.encoded_dataset(include_meta=True)])
            except OSError as exc:
                return Refusal(STATUS_OUT_OF_RESOURCES, f"cannot write to the spool: {exc}")
            read = read_or_reject(tmp)
            if isinstance(read, Rejected):
                return Refusal(classify_rejection(read.reason), read.reason)
            ident = read.identity
            if ident.sop_uid != str(request_uid := event.request.AffectedSOPInstanceUID):
                return Refusal(STATUS_DATASET_MISMATCH,
                               f"SOPInstanceUID differs from the request's ({request_uid})")
            path = self.spool.instance_path(ident.study_uid, ident.series_uid, ident.sop_uid)
            try:
                move_durably(tmp, path)
            except OSError as exc:
                return Refusal(STATUS_OUT_OF_RESOURCES, f"cannot write to the spool: {exc}")
        finally:
            tmp.unlink(missing_ok=True)
        try:
            new = self.state.add_instance(InstanceRecord(
                study_uid=ident.study_uid, series_uid=ident.series_uid, sop_uid=ident.sop_uid,
                sop_class=sop_class, path=str(path), size=size, calling_aet=calling,
                accession=ident.accession_number))
        except sqlite3.Error as exc:  # the file stays: the next start indexes it
            return Refusal(STATUS_OUT_OF_RESOURCES, f"cannot record the instance: {exc}")
        self.stored += 1
        fields: dict[str, Any] = {"calling_aet": calling, "study": uid_key(ident.study_uid),
                                  "bytes": size, "new": new}
        if self.config.log_ids:
            fields["accession"] = ident.accession_number
        log.debug("stored", **fields)
        return None


def _status(code: int, reason: str) -> Any:
    """A C-STORE response status with Error Comment (LO: 64 characters, printable ASCII)."""
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.Status = code
    comment = "".join(c if 32 <= ord(c) < 127 and c != "\\" else "?" for c in reason)
    ds.ErrorComment = comment[:64]
    return ds


def _sop_name(uid: str) -> str:
    from pydicom.uid import UID

    name = UID(uid).name
    return f"{name} ({uid})" if name and name != uid else uid or "(none)"


def _calling(event: Any) -> str:
    try:
        return str(event.assoc.requestor.ae_title).strip()
    except AttributeError:
        return ""


def _peer(event: Any) -> str:
    try:
        return f"{event.assoc.requestor.address}:{event.assoc.requestor.port}"
    except AttributeError:
        return ""
