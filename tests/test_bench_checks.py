"""The benchmarks' equivalence checks: they pass on equal outputs and fail on different ones."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest

from benchmarks import channels, deliveries, extract_file, mime


def test_sink_sees_the_same_messages_from_the_channel_and_the_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = channels.recipients(30)
    want = channels.expected(rows)
    with channels.sink(1) as server:
        fields = {"conn_type": "smtp", "host": "127.0.0.1", "port": server.port}
        monkeypatch.setenv("AIRFLOW_CONN_SMTP_BENCH", json.dumps(fields))
        monkeypatch.setenv(
            "AIRFLOW_CONN_SMTP_DEFAULT",
            json.dumps(fields | {"extra": {"disable_ssl": True, "disable_tls": True}}),
        )
        channels.rendered("smtp_bench", rows, 2)
        assert server.received(decoded=True) == want
        channels.hook_loop(rows, 2)
        assert server.received(decoded=True) == want
        channels.hook_loop(rows[:-1], 1)
        fewer = server.received(decoded=True)
        assert fewer.messages == 29 and fewer != want
        monkeypatch.setattr(channels, "HTML_TEMPLATE", channels.HTML_TEMPLATE.replace("points.", "pts."))
        channels.hook_loop(rows, 1)
        changed = server.received(decoded=True)
        assert changed.recipients == want.recipients and changed.content != want.content
        batch = channels.messages(20)
        channels.plain_smtplib(server.port, batch, 2)
        assert server.received() == channels.sent_as(batch)


def test_mime_check_fails_on_a_different_text_part(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = mime.recipients(5)
    check = mime._checker()
    check("ours", -1, mime.ours(rows))
    check("other", -1, mime.standard(rows))
    monkeypatch.setattr(mime, "TEXT", mime.TEXT.replace("New this week", "New this month"))
    with pytest.raises(AssertionError, match="text part"):
        check("other", 0, mime.standard(rows))


def test_engine_fingerprint_ignores_only_what_names_the_run() -> None:
    from airflow_campaign.delivery.mime import MimeSkeleton

    def built(run_key: str, html: str) -> bytes:
        skeleton = MimeSkeleton("news@shop.example", "Shop", None, {}, f"bench/{run_key}")
        return skeleton.build(
            "a@example.org", "Hi", "text", html, f"<{run_key}@shop.example>", "https://u.example/1"
        )

    one, other = built("run1", "<p>x</p>"), built("run2", "<p>x</p>")
    assert one != other
    assert deliveries.normalised(one) == deliveries.normalised(other)
    assert deliveries.normalised(one) != deliveries.normalised(built("run1", "<p>y</p>"))


def test_extract_rows_digest_compares_values(tmp_path: Path) -> None:
    def written(name: str, text: str) -> str:
        path = tmp_path / name
        with gzip.open(path, "wt", encoding="utf-8", newline="") as file:
            file.write(text)
        return os.fspath(path)

    header = "email,loyalty_points,last_purchase_at\r\n"
    copy = written("copy.csv.gz", header + "a@x,12,2025-03-01 10:20:30.5+00\r\nb@x,3,\r\n")
    pandas = written("pandas.csv.gz", header + "b@x,3.0,\r\na@x,12.0,2025-03-01 10:20:30.500000+00:00\r\n")
    other = written("other.csv.gz", header + "a@x,13,2025-03-01 10:20:30.5+00\r\nb@x,3,\r\n")
    assert extract_file.rows_digest(copy) == extract_file.rows_digest(pandas)
    assert extract_file.rows_digest(copy) != extract_file.rows_digest(other)
