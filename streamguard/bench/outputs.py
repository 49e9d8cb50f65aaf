"""Reading a path's output as a consumer would, and the drain rate that follows from it.

Every path (raw pass-through, the Quix peer, the worker) is judged the same
way: a read_committed consumer reads its output topics from the beginning
while it runs, and notes when each batch of records became readable. The
steady drain rate is the records read between the moments 10% and 90% of the
owed records were readable, over the time between them: it leaves out each
path's start-up (topic creation, group join, state recovery) and its tail
(the last partitions to finish), and is fair to a path that writes in
transactions, whose output arrives a commit at a time. The rate from the
first readable batch to the last is kept beside it (from the start of the
drain when everything came in one batch, as in a smoke run).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from confluent_kafka import Consumer, TopicPartition

from streamguard import kafka_config
from streamguard.errors import BrokerError, StreamguardError
from streamguard.settings import Settings

BATCH = 10_000


@dataclass
class Drain:
    """The outputs read: count per key, and when the first and last records became readable."""

    expected: int
    started_at: float = field(default_factory=time.monotonic)
    keys: Counter[bytes] = field(default_factory=Counter)
    first_at: float = 0.0
    first_batch: int = 0
    last_at: float = 0.0
    read: int = 0
    timeline: list[tuple[float, int]] = field(default_factory=list)  # (when, records read by then)

    def add(self, keys: list[bytes], at: float | None = None) -> None:
        """Count `keys`; `at` is when they became readable (None: read after the drain, not timed)."""
        if at is not None and not self.first_at:
            self.first_at, self.first_batch = at, len(keys)
        self.keys.update(keys)
        self.read += len(keys)
        if at is not None:
            self.last_at = at
            self.timeline.append((at, self.read))

    def steady_rate(self) -> float:
        """Records per second between 10% and 90% of the owed records (first to last if they coincide)."""
        low, high = self._reached(0.1 * self.expected), self._reached(0.9 * self.expected)
        if high[0] > low[0]:
            return (high[1] - low[1]) / (high[0] - low[0])
        return self.first_to_last_rate()

    def first_to_last_rate(self) -> float:
        """Records per second after the first readable batch, up to the last (from the start if that was all)."""
        span = self.last_at - self.first_at
        if span > 0:
            return (self.read - self.first_batch) / span
        return self.read / (self.last_at - self.started_at) if self.last_at > self.started_at else 0.0

    def _reached(self, count: float) -> tuple[float, int]:
        return next(((at, n) for at, n in self.timeline if n >= count), (self.last_at, self.read))

    def missing_and_extra(self, owed: dict[str, int]) -> tuple[int, int]:
        """Records owed but not read, and records read beyond what was owed (repeats or strangers)."""
        missing = extra = 0
        for event_id, count in owed.items():
            got = self.keys.get(event_id.encode(), 0)
            missing += max(0, count - got)
            extra += max(0, got - count)
        known = {event_id.encode() for event_id in owed}
        extra += sum(n for key, n in self.keys.items() if key not in known)
        return missing, extra


def reader(settings: Settings, topics: list[str], group: str) -> Consumer:
    """A read_committed consumer assigned to every partition of `topics` from offset 0."""
    consumer = Consumer(kafka_config.bench_reader(settings, group))
    meta = consumer.list_topics(timeout=10).topics
    absent = [t for t in topics if t not in meta or meta[t].error]
    if absent:
        raise BrokerError(f"output topics missing on the broker: {absent}")
    consumer.assign([TopicPartition(t, p, 0) for t in topics for p in meta[t].partitions])
    return consumer


def drain(consumer: Consumer, owed: dict[str, int], check_alive: Callable[[], None], idle_timeout_s: float) -> Drain:
    """Read until every owed record arrived; fail if nothing new comes for `idle_timeout_s`."""
    result = Drain(sum(owed.values()))
    last_progress = last_check = 0.0
    while True:
        batch = consumer.consume(BATCH, 0.05)
        now = time.monotonic()
        keys = [m.key() or b"" for m in batch if not m.error()]
        if keys:
            result.add(keys, now)
            last_progress = now
        elif now - (last_progress or result.started_at) > idle_timeout_s:
            missing, _ = result.missing_and_extra(owed)
            raise StreamguardError(f"no output for {idle_timeout_s:.0f} s, {missing}/{result.expected} records missing")
        # Repeats count too, so once the count is reached, look (at most once a second) for owed ones still to come.
        if result.read >= result.expected and now - last_check >= 1.0:
            if result.missing_and_extra(owed)[0] == 0:
                return result
            last_check = now
        check_alive()


def settle(consumer: Consumer, result: Drain, seconds: float) -> None:
    """Read `seconds` more, so that a record written twice shows up as an extra."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        keys = [m.key() or b"" for m in consumer.consume(BATCH, 0.1) if not m.error()]
        if keys:
            result.add(keys)
