"""A transaction's records on their way: produced, then waited for, with the changelog offsets they land at.

The transaction around them (begin, offsets, commit, abort) is `transaction`'s.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from streamguard.codec import MAX_RECORD_BYTES
from streamguard.pipeline.records import Headers, Outgoing
from streamguard.state.store import Changes, encode_changes

log = logging.getLogger(__name__)


def send(
    producer: Producer,
    outs: list[Outgoing],
    changelog: str,
    changes: dict[int, Changes],
    records: dict[int, list[bytes]],
) -> ChangelogDeliveries:
    """Produce `outs`, each shard's store `changes` and changelog `records`; what to wait on for their offsets."""
    for out in outs:
        _produce(producer, out.topic, out.value, out.key, out.partition, out.headers, _log_undelivered)
    deliveries = ChangelogDeliveries()
    for shard, shard_changes in changes.items():
        for record in encode_changes(shard_changes, MAX_RECORD_BYTES):
            _produce(producer, changelog, record, None, shard, None, deliveries.expect(shard))
    for shard, written in records.items():
        for record in written:
            _produce(producer, changelog, record, None, shard, None, deliveries.expect(shard))
    return deliveries


class ChangelogDeliveries:
    """The changelog records of a transaction, and the offsets they were written at."""

    def __init__(self) -> None:
        self._offsets: dict[int, list[int]] = defaultdict(list)
        self._expected = 0

    def expect(self, shard: int) -> Callable[[KafkaError | None, Message], None]:
        """The delivery callback of one more record of `shard`'s changes."""
        self._expected += 1

        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            offset = msg.offset()
            if err is None and offset is not None:
                self._offsets[shard].append(offset)
            elif err is not None:
                _log_undelivered(err, msg)

        return on_delivery

    def wait(self, producer: Producer, timeout_s: float) -> dict[int, list[int]]:
        """Wait for every record of the transaction; the changelog offsets of each shard's, in order.

        Waiting here, not in the commit, means a broker that went away shows as
        undelivered records (and an abort) instead of a commit that blocks.
        """
        if producer.flush(timeout_s) or sum(map(len, self._offsets.values())) != self._expected:
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "records of the transaction were not delivered"))
        return {shard: sorted(offsets) for shard, offsets in self._offsets.items()}


def _produce(
    producer: Producer,
    topic: str,
    value: bytes | None,
    key: bytes | None,
    partition: int,
    headers: Headers | None,
    on_delivery: Callable[..., None] | None = None,
) -> None:
    while True:
        try:
            producer.produce(topic, value, key, partition=partition, headers=headers, on_delivery=on_delivery)
            return
        except BufferError:
            producer.poll(0.05)  # the local queue is full: let deliveries drain


def _log_undelivered(err: KafkaError | None, msg: Message) -> None:
    """The delivery callback of every record: one the broker refused (too large...) aborts its transaction."""
    if err is not None:
        log.error("a record for %s [%s] was not delivered: %s (%s)", msg.topic(), msg.partition(), err.name(),
                  err.str())  # fmt: skip
