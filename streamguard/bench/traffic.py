"""The bench's traffic: the demo mix, scaled, stamped as if it arrived at a given rate.

It is `streamguard.demo.traffic`'s mix (benign sessions and attack campaigns)
with as many users as the scenario generator gives that many events (about
one per six events), and without its malformed and re-sent messages: every
message is a valid event that owes exactly one verdict. N events sent "at
rate R" span N/R seconds of event time, ending when they are generated, so
the windows see the density they would see live.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from confluent_kafka import KafkaError, Producer

from streamguard import kafka_config
from streamguard.demo.traffic import DemoTraffic, Message
from streamguard.errors import BrokerError
from streamguard.settings import Settings

Owed = Callable[[dict[str, Any]], int]  # how many output records a path owes an event

EVENTS_PER_USER = 6  # ../shared/scenarios: 6,000 users for about 35,000 events
MIN_USERS = 2000  # the demo's own population


@dataclass
class BenchTraffic(DemoTraffic):
    """Demo traffic with a population scaled to the run, and only valid events."""

    users_count: int = MIN_USERS
    bad_share: float = 0.0
    duplicate_share: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self.users = [self._user() for _ in range(self.users_count)]


@dataclass
class Sent:
    """What was produced: how many output records each event id is owed, and how long sending took."""

    owed: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def outputs(self) -> int:
        return sum(self.owed.values())


def traffic_for(events: int, seed: int, run: str) -> BenchTraffic:
    return BenchTraffic(seed=seed, run=run, users_count=max(MIN_USERS, events // EVENTS_PER_USER))


def stamped(traffic: DemoTraffic, events: int, rate: float) -> Iterator[Message]:
    """`events` messages whose `ts` step by 1/rate seconds and end now."""
    start_ms = time.time() * 1000 - events * 1000 / rate
    for i in range(events):
        yield traffic.next_message(int(start_ms + i * 1000 / rate))


def producer(settings: Settings, failures: list[KafkaError], linger_ms: int = 5) -> Producer:
    """An idempotent producer that appends every failed delivery to `failures`."""

    def on_delivery(error: KafkaError | None, _: Any) -> None:
        if error is not None:
            failures.append(error)

    return Producer(kafka_config.bench_producer(settings, linger_ms, on_delivery))


def produce_all(settings: Settings, prefix: str, messages: Iterator[Message], owed: Owed | None = None) -> Sent:
    """Send every message to `<prefix><topic>` as fast as the client takes them, and wait for the acks.

    `owed` says how many output records a path owes an event (default: one).
    """
    sent, failures = Sent(), list[KafkaError]()
    client = producer(settings, failures)
    started = time.monotonic()
    for message in messages:
        _produce(client, prefix + message.topic, message)
        if message.event_id is not None:
            sent.owed[message.event_id] = 1 if owed is None else owed(orjson.loads(message.value))
    flush(client, failures)
    sent.seconds = time.monotonic() - started
    return sent


def _produce(client: Producer, topic: str, message: Message) -> None:
    while True:
        try:
            client.produce(topic, message.value, message.key)
            client.poll(0)
            return
        except BufferError:  # the local queue is full: let librdkafka deliver some
            client.poll(0.1)


def flush(client: Producer, failures: list[KafkaError], timeout_s: float = 60.0) -> None:
    left = client.flush(timeout_s)
    if left:
        raise BrokerError(f"{left} messages not delivered in {timeout_s} s: is the broker up?")
    if failures:
        raise BrokerError(f"{len(failures)} messages not delivered, the first: {failures[0]}")
