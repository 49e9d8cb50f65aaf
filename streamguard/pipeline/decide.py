"""Stage 2: on the worker that owns the event's shard, drop duplicates and publish its verdict.

Each shard owns a `PartitionStore`; an event already decided there gets
nothing, so it neither counts twice nor gets a second verdict.
"""

from __future__ import annotations

from collections.abc import Callable

from streamguard.codec import ShardItem, encode_verdict, event_type
from streamguard.pipeline.records import Outgoing
from streamguard.state.dedup import RecentIds
from streamguard.topics.names import TopicNames
from streamguard.verdicts import decide

EXPIRE_PER_BATCH = 2000


class Decide:
    def __init__(self, names: TopicNames, recent_ids: Callable[[int], RecentIds]) -> None:
        self._names = names
        self._recent_ids = recent_ids

    def process(self, shard: int, items: list[ShardItem], now_ms: int) -> tuple[list[Outgoing], int]:
        """The verdicts for events of `shard`; and how many were duplicates."""
        recent = self._recent_ids(shard)
        out, duplicates = [], 0
        for digest, event in items:
            if not recent.add(digest, event.ts):
                duplicates += 1
                continue
            verdict = decide(event, now_ms)
            out.append(
                Outgoing(self._names.verdicts[event_type(event)], encode_verdict(verdict), key=event.event_id.encode())
            )
        return out, duplicates

    def expire(self, partition: int) -> int:
        return self._recent_ids(partition).expire(EXPIRE_PER_BATCH)
