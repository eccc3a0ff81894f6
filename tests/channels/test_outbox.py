"""OutboxChannel: one .eml file per log row, replaced on a re-send; null mode writes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from airflow_campaign.channels.base import Envelope
from airflow_campaign.channels.outbox import OutboxChannel
from airflow_campaign.errors import CampaignError
from tests.channels.conftest import RecordingGate, envelopes, written


def test_one_file_per_message(tmp_path: Path) -> None:
    folder = tmp_path / "outbox" / "2026-01-01"  # created on open
    batch = envelopes(25)
    gate = RecordingGate()
    with OutboxChannel(folder) as channel:
        results = channel.send_batch(batch, gate)
    assert written(folder) == {f"{e.log_id}.eml": e.message for e in batch}
    assert [(r.log_id, r.outcome, r.provider_id) for r in results] == [
        (e.log_id, "sent", f"{e.log_id}.eml") for e in batch
    ]
    assert (channel.messages, channel.bytes) == (25, sum(len(e.message) for e in batch))
    gate.check(results)


def test_a_message_the_gate_holds_back_is_not_written(tmp_path: Path) -> None:
    gate = RecordingGate(refuse=(2,))
    with OutboxChannel(tmp_path) as channel:
        results = channel.send_batch(envelopes(3), gate)
    assert sorted(written(tmp_path)) == ["1.eml", "3.eml"]
    assert {r.log_id: r.outcome for r in results} == {1: "sent", 2: "held", 3: "sent"}
    gate.check(results)


def test_a_resend_replaces_the_file(tmp_path: Path) -> None:
    with OutboxChannel(tmp_path) as channel:
        channel.send_batch(envelopes(3))
        channel.send_batch([Envelope(2, "customer2@example.org", b"Subject: again\r\n\r\nsecond try\r\n")])
    files = written(tmp_path)
    assert sorted(files) == ["1.eml", "2.eml", "3.eml"]  # no temporary file left behind either
    assert files["2.eml"] == b"Subject: again\r\n\r\nsecond try\r\n"


@pytest.mark.parametrize("options", [{"folder": None}, {"null": True}])
def test_null_mode_counts_and_writes_nothing(
    tmp_path: Path, options: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    channel = OutboxChannel(**({"folder": tmp_path / "never"} | options))
    with channel:
        results = channel.send_batch(envelopes(10))
    assert all(r.outcome == "sent" for r in results)
    assert (channel.messages, channel.bytes) == (10, sum(len(e.message) for e in envelopes(10)))
    assert list(tmp_path.iterdir()) == []


def test_a_folder_that_cannot_be_made(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(CampaignError, match="folder=.*file/outbox.*cannot create the outbox folder"):
        OutboxChannel(tmp_path / "file" / "outbox").open()


def test_a_write_failure_is_transient(tmp_path: Path) -> None:
    folder = tmp_path / "outbox"
    with OutboxChannel(folder) as channel:
        folder.rmdir()  # gone under the channel's feet
        results = channel.send_batch(envelopes(2))
    assert [r.outcome for r in results] == ["transient", "transient"]
    assert "cannot write" in (results[0].error or "")
