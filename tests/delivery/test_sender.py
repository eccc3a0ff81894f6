"""The send step's parts on a real database: the shared rate limit."""

from __future__ import annotations

import threading
import time

import psycopg

from airflow_campaign.delivery.sender import SharedRate


def busiest_second(times: list[float]) -> int:
    times = sorted(times)
    return max(sum(1 for t in times[i:] if t - start < 1.0) for i, start in enumerate(times))


def test_two_tasks_sharing_a_rate_never_exceed_it_together(scratch):
    delivery = scratch.db.execute(
        "INSERT INTO campaign.deliveries (name, channel) VALUES ('rated', 'email') RETURNING id"
    ).fetchone()[0]

    def connect() -> psycopg.Connection:
        return psycopg.connect(scratch.url)

    stop = threading.Event()
    late, steady = SharedRate(100, connect, delivery), SharedRate(100, connect, delivery)
    sent: list[float] = []
    try:
        late.wait(stop)  # takes a block of slots, uses one...
        sent.append(time.monotonic())
        time.sleep(1.0)  # ...then falls behind (a slow reply, a retry backoff)
        other = threading.Thread(
            target=lambda: [steady.wait(stop) or sent.append(time.monotonic()) for _ in range(150)]
        )
        other.start()
        for _ in range(30):  # the late one catches up: its missed slots are dropped, not spent at once
            late.wait(stop)
            sent.append(time.monotonic())
        other.join()
    finally:
        late.close()
        steady.close()
    assert len(sent) == 181
    assert busiest_second(sent) <= 101


def test_tasks_slower_than_the_rate_share_it_instead_of_taking_turns(scratch):
    """Four tasks that can each do 125 messages/s reach a 200/s limit together, and never pass it."""
    delivery = scratch.db.execute(
        "INSERT INTO campaign.deliveries (name, channel) VALUES ('shared', 'email') RETURNING id"
    ).fetchone()[0]
    stop = threading.Event()
    sent: list[float] = []

    def task() -> None:
        rate = SharedRate(200, lambda: psycopg.connect(scratch.url), delivery)
        try:
            while not stop.is_set():
                rate.wait(stop)
                sent.append(time.monotonic())
                time.sleep(0.008)  # a message takes 8 ms to send
        finally:
            rate.close()

    threads = [threading.Thread(target=task) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(3.0)
    stop.set()
    for thread in threads:
        thread.join()
    sent.sort()
    steady = [t for t in sent if sent[0] + 0.5 <= t < sent[0] + 2.5]  # two seconds in the middle
    assert len(steady) >= 0.8 * 2 * 200  # the four together reach the rate (taking turns: 125/s)...
    # ...and never go above it: one more, plus a little for threads woken late on a busy machine
    assert busiest_second(sent) <= 203
