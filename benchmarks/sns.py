"""SnsSmsChannel against a plain boto3 ``publish`` loop, the same threads, the same moto server.

Both sides publish the same ``count`` SMS (E.164 number, text, SMS type attribute) with
``threads`` threads to one moto server in server mode (a child process, real HTTP), one boto3
client shared by the threads on each side, SDK retries off on both. Interleaved, ``REPEAT``
rounds, median; after each call the benchmark reads what moto recorded
(``/moto-api/data.json``) and checks that it holds exactly the messages that side published
(number and text each), then resets moto. Name in results.json: ``SnsSmsChannel vs boto3
publish loop, N msgs, T threads, msgs/s`` (a rate; target ≥ 0.8 of the loop's). Run alone:
``python -m benchmarks.sns``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from typing import Any

CREDENTIALS = {"aws_access_key_id": "bench", "aws_secret_access_key": "bench"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _recorded(endpoint: str) -> list[tuple[str, str]]:
    with urllib.request.urlopen(f"{endpoint}/moto-api/data.json") as response:  # noqa: S310 (local server)
        data = json.load(response)
    return sorted((m["phone_number"], m["message"]) for m in data.get("sns", {}).get("SMS", []))


def _reset(endpoint: str) -> None:
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")).close()  # noqa: S310


def bench_sns(results: list[dict[str, Any]], count: int = 2000, threads: int = 4) -> None:
    import boto3
    from botocore.config import Config

    from airflow_campaign.channels.base import Envelope
    from airflow_campaign.channels.sns import SnsSmsChannel, sms_attributes
    from benchmarks.run import REPEAT, interleaved, record

    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                _reset(endpoint)
                break
            except OSError:
                time.sleep(0.05)
        os.environ["AIRFLOW_CONN_AWS_BENCH_SNS"] = json.dumps(
            {
                "conn_type": "aws",
                "login": CREDENTIALS["aws_access_key_id"],
                "password": CREDENTIALS["aws_secret_access_key"],
                "extra": {"endpoint_url": endpoint, "region_name": "us-east-1"},
            }
        )
        payloads = [
            {"to": f"+3361{i:07d}", "text": f"Hi Name{i}, {i % 9000} points", "message_type": "promotional"}
            for i in range(count)
        ]
        envelopes = [Envelope(i, p["to"], json.dumps(p).encode()) for i, p in enumerate(payloads)]
        expected = sorted((p["to"], p["text"]) for p in payloads)
        channel = SnsSmsChannel("aws_bench_sns", threads=threads)
        channel.open()
        client = boto3.client(
            "sns",
            endpoint_url=endpoint,
            region_name="us-east-1",
            config=Config(max_pool_connections=threads, retries={"total_max_attempts": 1}),
            **CREDENTIALS,
        )

        def ours(i: int) -> int:
            done = channel.send_batch(envelopes)
            return sum(1 for r in done if r.outcome == "sent")

        def loop(i: int) -> int:
            sent = [0] * threads

            def work(k: int) -> None:
                for p in payloads[k::threads]:
                    client.publish(
                        PhoneNumber=p["to"], Message=p["text"], MessageAttributes=sms_attributes(p)
                    )
                    sent[k] += 1

            workers = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
            for w in workers:
                w.start()
            for w in workers:
                w.join()
            return sum(sent)

        def check(side: str, i: int, sent: int) -> None:
            got = _recorded(endpoint)
            assert sent == count and got == expected, (
                f"{side}: {sent} sent, moto holds {len(got)}, expected {count}"
            )
            _reset(endpoint)

        ours_s, loop_s = interleaved(ours, loop, REPEAT, check=check)
        channel.close()
        print(
            f"  SNS: ours {count / ours_s:,.0f} msg/s, boto3 loop {count / loop_s:,.0f} msg/s ({threads} threads)"
        )
        record(
            results,
            f"SnsSmsChannel vs boto3 publish loop, {count:,} msgs, {threads} threads, msgs/s",
            count / ours_s,
            f"boto3 publish loop, {threads} threads",
            count / loop_s,
            0.8,
            "higher",
        )
    finally:
        server.terminate()
        server.wait()


def main() -> int:
    results: list[dict[str, Any]] = []
    bench_sns(results)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
