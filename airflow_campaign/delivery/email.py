"""The email composer: recipient rows to personalised RFC 5322 messages (render + fast MIME)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from airflow_campaign.channels.base import Envelope
from airflow_campaign.delivery.mime import MimeSkeleton, check_recipient, message_id
from airflow_campaign.delivery.render import CompiledEmail, RenderError
from airflow_campaign.delivery.unsubscribe import LinkSigner
from airflow_campaign.errors import CampaignError

SEND_TO = "_campaign_send_to"
LOG_ID = "_campaign_log_id"
RECIPIENT = "_campaign_rk"


class EmailComposer:
    """Renders each row with the compiled templates and builds its message on the skeleton.

    :param subject_prefix: put before every subject (``"[PROOF] "`` for proofs).
    """

    def __init__(
        self,
        compiled: CompiledEmail,
        skeleton: MimeSkeleton,
        delivery: str,
        run_key: str,
        signer: LinkSigner | None = None,
        subject_prefix: str = "",
    ) -> None:
        self.compiled = compiled
        self.skeleton = skeleton
        self.delivery = delivery
        self.signer = signer
        self.subject_prefix = subject_prefix
        self.domain = compiled.content.from_addr.rpartition("@")[2] or "localhost"
        # Message-IDs are unique per delivery, run key and log row
        self.id_prefix = hashlib.sha1(f"{delivery}\0{run_key}".encode()).hexdigest()[:12]

    def compose(self, rows: Sequence[dict[str, Any]]) -> tuple[list[Envelope], list[tuple[int, str]]]:
        """Envelopes for ``rows``, and the recipients refused for their own fault (an address
        that cannot go in To:), with the reason. A template that does not render, or a row
        without its recipient, is the delivery's fault: a RenderError (a CampaignError)."""
        envelopes: list[Envelope] = []
        refused: list[tuple[int, str]] = []
        signer, build, render = self.signer, self.skeleton.build, self.compiled.render
        for row in rows:
            log_id = int(row[LOG_ID])
            to = row[SEND_TO]
            recipient = row.get(RECIPIENT)
            if recipient is None:
                raise RenderError(
                    f"ledger row {log_id}: no recipient row to personalise the message with; nothing is sent "
                    "without its own data."
                )
            recipient = str(recipient)
            try:
                check_recipient(to)
            except CampaignError as exc:
                refused.append((log_id, f"invalid address: {exc}"))
                continue
            unsubscribe = signer.unsubscribe_url(recipient) if signer else None
            context = {
                **row,
                "recipient": to,
                "delivery": self.delivery,
                "unsubscribe_url": unsubscribe or "",
                # the mirror link names the ledger row: one message, which the mirror page renders again
                "mirror_url": (signer.mirror_url(str(log_id)) if signer else None) or "",
            }
            try:
                subject, html, text = render(context)
                message = build(
                    to,
                    self.subject_prefix + subject,
                    text,
                    html,
                    message_id(f"{self.id_prefix}.{log_id}", self.domain),
                    list_unsubscribe=unsubscribe,
                )
            except CampaignError as exc:
                raise RenderError(
                    f"{exc} (recipient {recipient[:100]!r}, ledger row {log_id}). Nothing more is sent: fix "
                    "the template (e.g. a default for a missing value) and clear the task; the recipients "
                    "not sent yet are still pending."
                ) from exc
            envelopes.append(Envelope(log_id, to, message, self.skeleton.sender))
        return envelopes, refused
