"""Stage 1: validate what upstream sent and route each event to the shard of its id.

Invalid messages become dead letters carrying the original key and bytes
(so does one whose processing raised: `processing_error`). Valid ones are
grouped per shard (the keyed hash of `event_id` picks it), with where they
were read, so that the shard can name their input record in a dead letter.
Routing by id, not by whatever key upstream chose, is what makes
de-duplication exact. The engine hands a group to the decide stage directly
when this worker owns that shard, and otherwise sends it to the shard's
partition of the shards topic as one Kafka record (`shard_records`; more if
it would be over `MAX_RECORD_BYTES`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Final

from streamguard.codec import MAX_RECORD_BYTES, DecideItem, RecordItem, ShardItem, decode_event, encode_shard, shard_of
from streamguard.errors import InvalidEvent
from streamguard.events import DeadLetterHeader as H
from streamguard.events import ErrorCode
from streamguard.pipeline.failures import dead_letter_headers, describe, log_failure
from streamguard.pipeline.records import Incoming, Outgoing
from streamguard.privacy import Pseudonymizer
from streamguard.topics.names import TopicNames

# A dead letter keeps at most this much of the original key and value together (the key first), below the
# deadletter topic's max.message.bytes (8 MiB, topics/contract.toml) and the engine producer's
# message.max.bytes, with room for the headers: one that could not be written would abort every retry.
MAX_DEADLETTER_BYTES: Final = 8 * 1024 * 1024 - 64 * 1024


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
                digest = self._pseudo.digest("event_id", event.event_id)
                shard = shard_of(digest, self._names.shards)
            except InvalidEvent as exc:
                dead.append(dead_letter(record, exc.code, exc.detail, self._names.deadletter))
                continue
            except MemoryError:
                raise
            except Exception as exc:  # a defect: this record goes to the dead letters, the batch goes on
                log_failure("ingesting a record", exc)
                dead.append(dead_letter(record, ErrorCode.PROCESSING_ERROR, describe(exc), self._names.deadletter))
                continue
            shards[shard].append(DecideItem(digest, event, record.partition, record.offset))
        return dead, shards

    def shard_records(self, shard: int, items: list[RecordItem]) -> list[Outgoing]:
        """The shards-topic records that carry `items` to the worker that owns `shard`: one, unless too big."""
        encoded = encode_shard(items)
        if len(encoded) <= MAX_RECORD_BYTES or len(items) == 1:
            return [Outgoing(self._names.shard_topic, encoded, partition=shard)]
        half = len(items) // 2
        return self.shard_records(shard, items[:half]) + self.shard_records(shard, items[half:])


def dead_letter(record: Incoming, code: str, detail: str, topic: str) -> Outgoing:
    """The dead letter of `record`: its key and value bytes, unchanged unless over `MAX_DEADLETTER_BYTES`.

    Then only their first bytes are kept (the key's first, then as much of
    the value as fits), and `sg-truncated` (`sg-truncated-key`) gives the
    original value's (key's) length.
    """
    headers = dead_letter_headers(code, detail, record.topic, record.partition, record.offset)
    key, value = record.key, record.value
    if key is not None and len(key) > MAX_DEADLETTER_BYTES:
        headers.append((H.TRUNCATED_KEY, str(len(key)).encode()))
        key = key[:MAX_DEADLETTER_BYTES]
    room = MAX_DEADLETTER_BYTES - len(key or b"")
    if value is not None and len(value) > room:
        headers.append((H.TRUNCATED, str(len(value)).encode()))
        value = value[:room]
    return Outgoing(topic, value, key=key, headers=headers)


def error_code(dead: Outgoing) -> str:
    """The `sg-error` code of a dead letter made by `dead_letter`."""
    code = dict(dead.headers or []).get(H.ERROR)
    return code.decode() if isinstance(code, bytes) else str(code)
