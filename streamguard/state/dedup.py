"""Recently decided event ids of one partition, so a re-sent event gets no second verdict.

An id is remembered for `retention_ms` of event time behind the newest event
seen on the partition; older ids are expired a bounded number per batch, so
the store stays bounded whatever the traffic. Ids are stored as keyed hashes.
"""

from __future__ import annotations

from typing import Final

from streamguard.state import keys
from streamguard.state.store import PartitionStore

MINUTE_MS: Final = 60_000


class RecentIds:
    def __init__(self, store: PartitionStore, retention_ms: int) -> None:
        self._store = store
        self._retention_ms = retention_ms
        raw = store.get(keys.DEDUP_WATERMARK)
        self._newest_ts = 0 if raw is None else keys.decode_u64(raw)

    def add(self, digest: bytes, ts: int) -> bool:
        """Remember the id; False if it was already remembered (a duplicate)."""
        key = keys.dedup(digest)
        if self._store.get(key) is not None:
            return False
        self._store.put(key, keys.encode_u64(ts))
        self._store.put(keys.dedup_by_time(ts // MINUTE_MS, digest), b"")
        if ts > self._newest_ts:
            self._newest_ts = ts
            self._store.put(keys.DEDUP_WATERMARK, keys.encode_u64(ts))
        return True

    def expire(self, limit: int) -> int:
        """Forget up to `limit` ids older than the retention; how many were forgotten."""
        cutoff_minute = (self._newest_ts - self._retention_ms) // MINUTE_MS
        if cutoff_minute <= 0:
            return 0
        lower, upper = keys.DEDUP_BY_TIME, keys.dedup_by_time_upper(cutoff_minute)
        expired = list(self._store.keys_below(lower, upper, limit))
        for index_key in expired:
            self._store.delete(index_key)
            self._store.delete(keys.dedup(keys.digest_of_dedup_by_time(index_key)))
        return len(expired)
