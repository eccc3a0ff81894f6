"""email_channel(): the channel chosen by name, its options checked."""

from __future__ import annotations

from pathlib import Path

import pytest

from airflow_campaign.channels.email import email_channel
from airflow_campaign.channels.outbox import OutboxChannel
from airflow_campaign.channels.ses import SesChannel
from airflow_campaign.channels.smtp import SmtpChannel
from airflow_campaign.errors import CampaignError
from tests.channels.conftest import envelopes, written


def test_each_kind(tmp_path: Path) -> None:
    smtp = email_channel("smtp", smtp_conn_id="relay", connections=2)
    assert isinstance(smtp, SmtpChannel) and (smtp.smtp_conn_id, smtp.connections) == ("relay", 2)
    ses = email_channel("ses", aws_conn_id="aws_mail", threads=3, configuration_set="marketing")
    assert isinstance(ses, SesChannel) and (ses.threads, ses.configuration_set) == (3, "marketing")
    outbox = email_channel("outbox", folder=tmp_path)
    assert isinstance(outbox, OutboxChannel) and outbox.name == "outbox"
    outbox.open()
    outbox.send_batch(envelopes(2))
    outbox.close()
    assert sorted(written(tmp_path)) == ["1.eml", "2.eml"]


def test_unknown_kind_and_options() -> None:
    with pytest.raises(
        CampaignError, match="channel='sms': not an email channel; choose one of smtp, ses, outbox"
    ):
        email_channel("sms")  # type: ignore[arg-type]
    with pytest.raises(CampaignError, match="unknown option.*threads; the smtp channel takes smtp_conn_id"):
        email_channel("smtp", threads=4)
