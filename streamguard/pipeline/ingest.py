"""Stage 1: validate what upstream sent and route each event to its by-id shard.

Invalid messages become dead letters carrying the original key and bytes.
Valid ones are grouped per shard (the keyed hash of `event_id` picks it), so
one Kafka record carries all of a batch's events for that shard. Routing by
id, not by whatever key upstream chose, is what makes de-duplication exact.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from streamguard.codec import ShardItem, decode_event, encode_shard
from streamguard.errors import InvalidEvent
from streamguard.events import DeadLetterHeader as H
from streamguard.pipeline.records import Incoming, Outgoing
from streamguard.privacy import Pseudonymizer
from streamguard.topics.names import TopicNames


class Ingest:
    def __init__(self, names: TopicNames, pseudonymizer: Pseudonymizer) -> None:
        self._names = names
        self._type_of = names.input_type()
        self._pseudo = pseudonymizer

    def process(self, batch: Iterable[Incoming], now_ms: int) -> tuple[list[Outgoing], int]:
        """Dead letters and by-id records for `batch`; and how many events were valid."""
        out: list[Outgoing] = []
        shards: dict[int, list[ShardItem]] = defaultdict(list)
        for record in batch:
            try:
                event = decode_event(record.value, self._type_of[record.topic], now_ms)
            except InvalidEvent as exc:
                out.append(dead_letter(record, exc, self._names.deadletter))
                continue
            digest = self._pseudo.digest("event_id", event.event_id)
            shards[int.from_bytes(digest[:4], "big") % self._names.shards].append((digest, event))
        valid = 0
        for shard, items in shards.items():
            out.append(Outgoing(self._names.by_id, encode_shard(items), partition=shard))
            valid += len(items)
        return out, valid


def dead_letter(record: Incoming, error: InvalidEvent, topic: str) -> Outgoing:
    headers = [
        (H.ERROR, error.code.encode()),
        (H.DETAIL, error.detail.encode()),
        (H.SOURCE_TOPIC, record.topic.encode()),
        (H.SOURCE_PARTITION, str(record.partition).encode()),
        (H.SOURCE_OFFSET, str(record.offset).encode()),
    ]
    return Outgoing(topic, record.value, key=record.key, headers=headers)
