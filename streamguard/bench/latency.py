"""Latency from produce to verdict readable, at a steady fraction of the worker's throughput.

Events are generated and sent one at a time at the wall clock (their `ts` is
the moment they are sent), paced to the rate; each event's send time is
noted just before `produce`. A reader thread, positioned at the end of the
verdict topics before the first send, notes when each verdict becomes
readable (read_committed). Latency = read time - send time, on one clock.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from streamguard import kafka_config
from streamguard.bench.traffic import flush, producer
from streamguard.demo.traffic import DemoTraffic
from streamguard.errors import StreamguardError
from streamguard.settings import Settings

READ_BATCH = 10_000


@dataclass
class LatencyLevel:
    load: float  # fraction of the measured worker throughput
    target_rate: float
    sent: int
    sent_rate: float  # what the sender achieved
    verdicts: int
    p50_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    caught_up_s: float  # from the last send to the last verdict


class VerdictClock:
    """A thread that reads the verdict topics from their current end and notes when each verdict arrived."""

    def __init__(self, settings: Settings, topics: list[str], group: str) -> None:
        self.arrived: dict[bytes, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._consumer = Consumer(kafka_config.bench_clock(settings, group))
        self._consumer.assign(_end_offsets(self._consumer, topics))
        self._thread = threading.Thread(target=self._read, name="verdict-clock", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            first = self._consumer.poll(0.05)  # returns as soon as one record is there
            if first is None:
                continue
            # consume(n, timeout) waits for n records or the timeout: it must not be what waits.
            batch = [first, *self._consumer.consume(READ_BATCH, 0)]
            now = time.perf_counter()
            with self._lock:
                for message in batch:
                    if not message.error():
                        self.arrived.setdefault(message.key() or b"", now)

    def count(self, keys: dict[bytes, float]) -> int:
        with self._lock:
            return sum(1 for k in keys if k in self.arrived)

    def arrivals(self, keys: dict[bytes, float]) -> dict[bytes, float]:
        """When each of `keys` arrived (all of them have, after `_wait_for`)."""
        with self._lock:
            return {k: self.arrived[k] for k in keys}

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._consumer.close()


def _end_offsets(consumer: Consumer, topics: list[str]) -> list[TopicPartition]:
    meta = consumer.list_topics(timeout=10).topics
    return [
        _at_end(consumer, TopicPartition(topic, partition)) for topic in topics for partition in meta[topic].partitions
    ]


def _at_end(consumer: Consumer, tp: TopicPartition, timeout_s: float = 30.0) -> TopicPartition:
    """`tp` at its end offset; a topic created a moment ago may have no leader yet."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            _, high = consumer.get_watermark_offsets(tp, timeout=10)
            return TopicPartition(tp.topic, tp.partition, high)
        except KafkaException:  # e.g. NOT_LEADER_FOR_PARTITION, which librdkafka does not mark retriable here
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def measure(
    clock: VerdictClock,
    send: Callable[[int], bytes],
    load: float,
    rate: float,
    seconds: float,
    check_alive: Callable[[], None],
) -> LatencyLevel:
    """Send for `seconds` at `rate` events/s (`send(ts_ms)` sends one, returns its id) and time the verdicts."""
    sent_at: dict[bytes, float] = {}
    started = time.perf_counter()
    total = max(1, int(rate * seconds))
    while len(sent_at) < total:
        due = min(total, int((time.perf_counter() - started) * rate) + 1)
        while len(sent_at) < due:
            now = time.perf_counter()
            sent_at[send(int(time.time() * 1000))] = now
        time.sleep(0.001)
    finished = time.perf_counter()
    _wait_for(clock, sent_at, timeout_s=max(60.0, 4 * seconds), check_alive=check_alive)
    return _level(clock, sent_at, load, rate, finished - started, finished)


def _wait_for(
    clock: VerdictClock, sent_at: dict[bytes, float], timeout_s: float, check_alive: Callable[[], None]
) -> None:
    deadline = time.monotonic() + timeout_s
    while clock.count(sent_at) < len(sent_at):
        if time.monotonic() > deadline:
            got = clock.count(sent_at)
            raise StreamguardError(f"only {got}/{len(sent_at)} verdicts {timeout_s:.0f} s after sending")
        check_alive()
        time.sleep(0.1)


def _level(
    clock: VerdictClock, sent_at: dict[bytes, float], load: float, rate: float, took_s: float, finished: float
) -> LatencyLevel:
    arrived = clock.arrivals(sent_at)
    latencies = sorted((arrived[k] - t) * 1000 for k, t in sent_at.items())
    last = max(arrived.values())
    return LatencyLevel(
        load=load,
        target_rate=round(rate, 1),
        sent=len(sent_at),
        sent_rate=round(len(sent_at) / took_s, 1),
        verdicts=len(latencies),
        p50_ms=round(percentile(latencies, 0.50), 2),
        p99_ms=round(percentile(latencies, 0.99), 2),
        p999_ms=round(percentile(latencies, 0.999), 2),
        max_ms=round(latencies[-1], 2),
        caught_up_s=round(max(0.0, last - finished), 3),
    )


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def sender(
    settings: Settings, prefix: str, traffic: DemoTraffic, observe: Callable[[dict[str, Any]], int]
) -> tuple[Callable[[int], bytes], Callable[[], None]]:
    """`send(ts_ms)` for `measure`, and the `done()` that flushes it; `observe` sees every event sent."""
    failures: list[KafkaError] = []
    client = producer(settings, failures, linger_ms=1)

    def send(ts_ms: int) -> bytes:
        message = traffic.next_message(ts_ms)
        client.produce(prefix + message.topic, message.value, message.key)
        client.poll(0)
        observe(orjson.loads(message.value))
        return (message.event_id or "").encode()

    return send, lambda: flush(client, failures)
