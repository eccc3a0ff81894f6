"""Worker threads for channels: a batch's envelopes handed out one at a time to a few workers."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Literal

from airflow_campaign.channels.base import Envelope, Gate, Result, held
from airflow_campaign.errors import CampaignError

OnUncertain = Literal["skip", "resend"]


class WorkQueue:
    """The envelopes of one batch; any worker takes the next one (``deque.popleft`` is atomic)."""

    def __init__(self, envelopes: Sequence[Envelope]) -> None:
        self._items = deque(envelopes)

    def take(self) -> Envelope | None:
        try:
            return self._items.popleft()
        except IndexError:
            return None

    def leftover(self) -> list[Envelope]:
        """Take every envelope no worker took (after the workers have stopped)."""
        items = list(self._items)
        self._items.clear()
        return items


# A worker: its index (a connection it owns), the queue; returns the results of what it took.
Worker = Callable[[int, WorkQueue], list[Result]]


class WorkerPool:
    """``size`` threads kept for a channel's life; ``run`` lets each of them drain one shared queue.

    One batch runs at a time (a lock), so worker ``i`` may own connection ``i`` without locking.
    """

    def __init__(self, size: int, prefix: str) -> None:
        self.size = size
        self._executor = ThreadPoolExecutor(max_workers=size, thread_name_prefix=prefix)
        self._batch = threading.Lock()

    def run(self, envelopes: Sequence[Envelope], worker: Worker) -> tuple[list[Result], list[Envelope]]:
        """Results of the envelopes the workers took, and the ones left when every worker stopped early."""
        queue = WorkQueue(envelopes)
        with self._batch:
            futures = [self._executor.submit(worker, i, queue) for i in range(min(self.size, len(envelopes)))]
            try:
                wait(
                    futures
                )  # all of them, even if one failed: the next batch must not meet a running worker
            except BaseException:  # interrupted (a task timeout): no worker takes another message
                queue.leftover()
                wait(futures)
                raise
            results = [result for future in futures for result in future.result()]
        return results, queue.leftover()

    def map(self, fn: Callable[[int], object]) -> list[object]:
        """Call ``fn(i)`` for every worker index on the pool's threads; the first exception is raised."""
        return list(self._executor.map(fn, range(self.size)))

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True)


def drain(queue: WorkQueue, gate: Gate, send: Callable[[Envelope], Result]) -> list[Result]:
    """One worker's loop: take the next envelope, pass the gate, send it, report the result at once."""
    results: list[Result] = []
    while (envelope := queue.take()) is not None:
        result = send(envelope) if gate.before(envelope) else held(envelope)
        gate.after(result)
        results.append(result)
    return results


def check_count(option: str, value: object, maximum: int) -> int:
    """``value`` as a count of connections or threads between 1 and ``maximum``, or a CampaignError."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise CampaignError(f"{option}={value!r}: give a whole number from 1 to {maximum}.")
    return value


def check_on_uncertain(value: object) -> OnUncertain:
    if value not in ("skip", "resend"):
        raise CampaignError(
            f"on_uncertain={value!r}: choose 'skip' (a message that may have been delivered is not sent "
            "again) or 'resend' (it is retried: at least once)."
        )
    return value  # type: ignore[return-value]


def uncertain(log_id: int, on_uncertain: OnUncertain, what: str) -> Result:
    """The result of a message the provider may or may not have accepted (no reply came back).

    ``skip`` (at most once): ``permanent``, so the engine does not send it again; ``resend``:
    ``transient``, retried like any transient failure (the customer may get it twice).
    """
    if on_uncertain == "resend":
        return Result(log_id, "transient", error=f"uncertain: {what}; retried (on_uncertain='resend')")
    return Result(
        log_id, "permanent", error=f"uncertain: {what}; it may have been delivered, so it is not sent again"
    )
