"""OutboxChannel: each message as one ``.eml`` file in a local folder, or counted and dropped (null mode).

The file of log row ``N`` is ``<folder>/N.eml`` (a proof's ``proof-1.eml``, ``proof-2.eml`` …): sending the same row again replaces it, never
adds a second file. Each file is written under a temporary name in the same folder and renamed
into place, so a reader never sees half a message. Null mode (``folder=None`` or ``null=True``)
accepts every message and writes nothing, for measuring the engine without a transport.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path

from airflow_campaign.channels.base import OPEN, Envelope, Gate, Result, held
from airflow_campaign.errors import CampaignError

#: Read when the Airflow option ``[campaign] outbox_folder`` is not set (the older way).
FOLDER_ENV = "CAMPAIGN_OUTBOX_DIR"
#: The folder when neither is set: relative to the worker's working directory.
BUILTIN_FOLDER = ".campaign/outbox"


def file_name(log_id: int, extension: str = "eml") -> str:
    """``<log id>.eml``; a proof (no ledger row, a negative id) is ``proof-<n>.eml``."""
    return f"{log_id}.{extension}" if log_id >= 0 else f"proof-{-log_id}.{extension}"


def default_folder(delivery: str) -> str:
    """The outbox folder of ``delivery`` when its channel options give no ``folder``: ``<base>/<delivery>``.

    ``<base>`` is the first set of: the Airflow option ``[campaign] outbox_folder``
    (``AIRFLOW__CAMPAIGN__OUTBOX_FOLDER``), the environment variable ``$CAMPAIGN_OUTBOX_DIR``,
    and ``.campaign/outbox``. A ``folder`` in the channel options always wins.
    """
    from airflow.sdk import conf

    configured = (conf.get("campaign", "outbox_folder", fallback=None) or "").strip()
    base = configured or os.environ.get(FOLDER_ENV) or BUILTIN_FOLDER
    return os.path.join(base, delivery)


class OutboxChannel:
    """Messages as files: ``<folder>/<log id>.eml``.

    :param folder: where the files go (created if missing); ``None`` for null mode.
    :param null: accept and discard every message, writing nothing (``folder`` is then ignored).
    :param extension: the files' extension: ``eml`` for email (the default), ``json`` for SMS
        and push payloads (set by the delivery).

    ``messages`` and ``bytes`` count what was accepted, in both modes.
    """

    name = "outbox"
    concurrency = 1
    resend_safe = True  # a message sent again replaces its file (null mode: nothing is kept)

    def __init__(
        self, folder: str | os.PathLike[str] | None = None, null: bool = False, extension: str = "eml"
    ) -> None:
        if extension not in ("eml", "json"):
            raise CampaignError(f"extension={extension!r}: the outbox writes 'eml' or 'json' files.")
        self.extension = extension
        self.null = null or folder is None
        self.folder = None if self.null or folder is None else Path(folder)
        self.messages = 0
        self.bytes = 0

    def check(self) -> None:
        self.open()

    def open(self) -> None:
        if self.folder is None:
            return
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CampaignError(
                f"folder={str(self.folder)!r}: cannot create the outbox folder ({exc.strerror}). Choose a "
                "folder the worker may write to."
            ) from exc
        if not os.access(self.folder, os.W_OK | os.X_OK):
            raise CampaignError(
                f"folder={str(self.folder)!r}: the worker may not write in it. Fix its permissions or choose "
                "another folder."
            )

    def send_batch(self, envelopes: Sequence[Envelope], gate: Gate = OPEN) -> list[Result]:
        results = []
        for envelope in envelopes:
            if not gate.before(envelope):
                result = held(envelope)
            elif self.folder is None:
                result = self._accept(envelope)
            else:
                result = self._write(self.folder, envelope)
            gate.after(result)
            results.append(result)
        return results

    def close(self) -> None:
        pass

    def __enter__(self) -> OutboxChannel:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept(self, envelope: Envelope) -> Result:
        self.messages += 1
        self.bytes += len(envelope.message)
        return Result(envelope.log_id, "sent")

    def _write(self, folder: Path, envelope: Envelope) -> Result:
        name = file_name(envelope.log_id, self.extension)
        temporary = folder / f".{name}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            with open(temporary, "wb") as file:
                file.write(envelope.message)
            os.replace(temporary, folder / name)
        except OSError as exc:  # a full disk, a folder removed underneath us: worth trying again later
            temporary.unlink(missing_ok=True)
            return Result(
                envelope.log_id, "transient", error=f"cannot write {folder / name}: {exc.strerror or exc}"
            )
        self.messages += 1
        self.bytes += len(envelope.message)
        return Result(envelope.log_id, "sent", provider_id=name)
