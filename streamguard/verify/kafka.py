"""The verifier's Kafka reads: committed records to the end, partition offsets, the group's offsets.

Every read is committed-only (what a downstream consumer can see) and
joins no group, so verifying changes nothing on the broker. A broker that
does not answer is a `BrokerError`, a missing topic a `ConfigError`: one line
for the operator, not a traceback.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

from confluent_kafka import (
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    ConsumerGroupTopicPartitions,
    IsolationLevel,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, OffsetSpec

from streamguard import kafka_config
from streamguard.errors import BrokerError, ConfigError
from streamguard.settings import Settings
from streamguard.verify.records import TP, Record

TIMEOUT_S = 10.0  # for one broker request
STALL_S = 60.0  # a read that gets nothing at all for this long gives up
RETRIES = 10  # of a request the broker answered with a retriable error, a second apart

T = TypeVar("T")

log = logging.getLogger(__name__)


def admin_client(settings: Settings) -> AdminClient:
    """An admin client, once the broker has answered (an unreachable one is a BrokerError naming it)."""
    admin = AdminClient(kafka_config.verifier(settings, log))
    try:
        admin.list_topics(timeout=TIMEOUT_S)
    except KafkaException as exc:
        raise BrokerError(f"cannot reach the Kafka broker at {settings.bootstrap}: {exc.args[0].str()}") from None
    return admin


def partitions(admin: AdminClient, topics: Iterable[str]) -> list[TP]:
    """Every partition of `topics`; a topic the broker does not have is a ConfigError."""
    try:
        meta = admin.list_topics(timeout=TIMEOUT_S).topics
    except KafkaException as exc:
        raise BrokerError(f"cannot reach the Kafka broker: {exc.args[0].str()}") from None
    found: list[TP] = []
    for topic in topics:
        if topic not in meta or meta[topic].error is not None:
            raise ConfigError(f"topic {topic!r} does not exist on the broker (check --topic-prefix and --app-id)")
        found += [(topic, p) for p in sorted(meta[topic].partitions)]
    return found


def offsets(admin: AdminClient, tps: Iterable[TP], spec: str, committed: bool = True) -> dict[TP, int]:
    """Each partition's `spec` offset ("earliest" or "latest"), read_committed or not."""
    level = IsolationLevel.READ_COMMITTED if committed else IsolationLevel.READ_UNCOMMITTED
    which = OffsetSpec.earliest() if spec == "earliest" else OffsetSpec.latest()  # type: ignore[no-untyped-call]
    request = {TopicPartition(t, p): which for t, p in tps}
    if not request:
        return {}

    def ask() -> dict[TP, int]:
        futures = admin.list_offsets(request, isolation_level=level, request_timeout=TIMEOUT_S)
        return {(tp.topic, tp.partition): f.result().offset for tp, f in futures.items()}

    return _retried(ask)


def group_offsets(admin: AdminClient, group: str, tps: Iterable[TP]) -> dict[TP, int | None]:
    """The offsets `group` committed on `tps`; None where it committed nothing."""
    request = ConsumerGroupTopicPartitions(group, [TopicPartition(t, p) for t, p in tps])

    def ask() -> Any:
        (future,) = admin.list_consumer_group_offsets([request], request_timeout=TIMEOUT_S).values()
        return future.result().topic_partitions

    found = _retried(ask)
    return {(tp.topic, tp.partition): (tp.offset if tp.offset >= 0 else None) for tp in found}


def _retried(ask: Callable[[], T]) -> T:
    """`ask()`, asked again for a while when the broker says a retry may help (just restarted, say)."""
    for attempt in range(RETRIES + 1):
        try:
            return ask()
        except KafkaException as exc:
            if not exc.args[0].retriable() or attempt == RETRIES:
                raise BrokerError(f"the broker refused a verifier request: {exc.args[0].str()}") from None
            time.sleep(1.0)
    raise AssertionError("unreachable")


def read(settings: Settings, starts: Mapping[TP, int | None]) -> Iterator[Record]:
    """The committed records of each partition from its start offset (None: the beginning) to its end.

    The ends are taken first (the last stable offsets), so a read is a
    snapshot even if records still arrive, and empty partitions cost nothing.
    """
    admin = admin_client(settings)
    ends = offsets(admin, starts, "latest")
    firsts = offsets(admin, [tp for tp, start in starts.items() if start is None], "earliest")
    begin = {tp: firsts[tp] if start is None else start for tp, start in starts.items()}
    todo = {tp: end for tp, end in ends.items() if begin[tp] < end}
    if not todo:
        return
    consumer = Consumer(kafka_config.verify_reader(settings, log))
    try:
        consumer.assign([TopicPartition(t, p, begin[(t, p)]) for t, p in todo])
        yield from _until(consumer, todo)
    finally:
        consumer.close()


def _until(consumer: Consumer, ends: dict[TP, int]) -> Iterator[Record]:
    """Records until each partition's end offset or its end-of-partition event (the last offsets may be markers)."""
    heard = time.monotonic()
    while ends:
        if time.monotonic() - heard > STALL_S:
            raise BrokerError(f"reading {len(ends)} partitions got nothing for {STALL_S:.0f} s: {sorted(ends)}")
        for msg in consumer.consume(1000, 0.5):
            err, topic, partition, offset = msg.error(), msg.topic(), msg.partition(), msg.offset()
            if err is not None and err.code() != KafkaError._PARTITION_EOF:  # may be of no partition (broker down)
                if err.fatal():
                    raise BrokerError(f"reading {topic}[{partition}]: {err.str()}")
                log.warning("reading %s[%s]: %s", topic, partition, err.str())
                continue
            assert topic is not None and partition is not None
            tp: TP = (topic, partition)
            heard = time.monotonic()
            end = ends.get(tp)
            if err is not None:
                ends.pop(tp, None)
            elif end is not None and offset is not None and offset < end:  # else past the snapshot's end
                if offset + 1 >= end:
                    del ends[tp]
                yield Record(topic, partition, offset, msg.key(), msg.value(), _timestamp(msg), _headers(msg))


def _timestamp(msg: Message) -> int | None:
    kind, stamp = msg.timestamp()
    return stamp if kind != TIMESTAMP_NOT_AVAILABLE else None


def _headers(msg: Message) -> tuple[tuple[str, bytes], ...]:
    """Header values as bytes (librdkafka gives None for a header without a value)."""
    raw = msg.headers() or []
    found = []
    for name, value in raw.items() if isinstance(raw, dict) else raw:
        found.append((name, value.encode() if isinstance(value, str) else (value or b"")))
    return tuple(found)
