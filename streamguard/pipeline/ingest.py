"""Stage 1: validate what upstream sent and route each event to the shard of its id.

Invalid messages become dead letters carrying the original key and bytes.
Valid ones are grouped per shard (the keyed hash of `event_id` picks it).
Routing by id, not by whatever key upstream chose, is what makes
de-duplication exact. The engine hands a group to the decide stage directly
when this worker owns that shard, and otherwise sends it to the shard's
partition of the shards topic as one Kafka record (`shard_records`; more if
it would be over `MAX_RECORD_BYTES`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from streamguard.codec import MAX_RECORD_BYTES, DecideItem, RecordItem, ShardItem, decode_event, encode_shard, shard_of
from streamguard.errors import InvalidEvent
from streamguard.events import DeadLetterHeader as H
from streamguard.pipeline.records import Headers, Incoming, Outgoing
from streamguard.privacy import Pseudonymizer
from streamguard.topics.names import TopicNames


class Ingest:
    def __init__(self, names: TopicNames, pseudonymizer: Pseudonymizer) -> None:
        self._names = names
        self._type_of = names.input_type()
        self._pseudo = pseudonymizer

    def process(self, batch: Iterable[Incoming], now_ms: int) -> tuple[list[Outgoing], dict[int, list[ShardItem]]]:
        """Dead letters for `batch`, and its valid events grouped by shard, to be decided there."""
        dead: list[Outgoing] = []
        shards: dict[int, list[ShardItem]] = defaultdict(list)
        for record in batch:
            try:
                event = decode_event(record.value, self._type_of[record.topic], now_ms)
            except InvalidEvent as exc:
                dead.append(dead_letter(record, exc, self._names.deadletter))
                continue
            digest = self._pseudo.digest("event_id", event.event_id)
            shards[shard_of(digest, self._names.shards)].append(DecideItem(digest, event))
        return dead, shards

    def shard_records(self, shard: int, items: list[RecordItem]) -> list[Outgoing]:
        """The shards-topic records that carry `items` to the worker that owns `shard`: one, unless too big."""
        encoded = encode_shard(items)
        if len(encoded) <= MAX_RECORD_BYTES or len(items) == 1:
            return [Outgoing(self._names.shard_topic, encoded, partition=shard)]
        half = len(items) // 2
        return self.shard_records(shard, items[:half]) + self.shard_records(shard, items[half:])


def dead_letter(record: Incoming, error: InvalidEvent, topic: str) -> Outgoing:
    headers: Headers = [
        (H.ERROR, error.code.encode()),
        (H.DETAIL, error.detail.encode()),
        (H.SOURCE_TOPIC, record.topic.encode()),
        (H.SOURCE_PARTITION, str(record.partition).encode()),
        (H.SOURCE_OFFSET, str(record.offset).encode()),
    ]
    return Outgoing(topic, record.value, key=record.key, headers=headers)


def error_code(dead: Outgoing) -> str:
    """The `sg-error` code of a dead letter made by `dead_letter`."""
    code = dict(dead.headers or []).get(H.ERROR)
    return code.decode() if isinstance(code, bytes) else str(code)
