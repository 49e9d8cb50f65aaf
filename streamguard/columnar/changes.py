"""A shard's state as records: what changed in a transaction, or all of it (a snapshot), and back.

A `ShardRecord` holds, for one shard: the entities changed, packed (`pack`),
and the keys of those expired; the event ids decided and the device ->
fingerprint links learned, each with its time; and the events decided there
that wait for other shards (`pending`: their input record, type, values read
so far, hashes and answer bits), with the keys of those decided since. A
snapshot holds all of the shard and replaces what a state had of it.
Restore is the last snapshot, then every change after it, in order.

Every record carries the layout's fingerprint: applied to state of another
layout (a feature added or changed, another hash key or packing), it is
refused with a clear error, never mixed in.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import msgspec
import numpy as np

from streamguard.columnar.hashing import DELETED, LAYOUT_VERSION, ColumnHashes
from streamguard.columnar.layout import Layout
from streamguard.columnar.pack import shard_of_keys
from streamguard.columnar.state import ColumnarState, load, packed
from streamguard.columnar.tables import (
    IDS_USED,
    INLINE,
    LIVE,
    TOMBSTONES,
    Memo,
    forget_entities,
    grown_memo,
    memo_get,
    memo_put,
)
from streamguard.errors import StreamguardError
from streamguard.kernels.window import HLL_REGISTERS

Source = tuple[str, int, int, bytes | None, bytes | None]  # an input record: topic, partition, offset, key, value


class LayoutMismatch(StreamguardError):
    """A record of state made under another layout."""


class ShardRecord(msgspec.Struct, array_like=True):
    layout: int
    shard: int
    snapshot: bool
    newest_ts: int
    expired: bytes = b""  # uint64 keys
    entities: bytes = b""  # int64 words
    ids: bytes = b""  # uint64 keys, then int64 times
    links: bytes = b""  # uint64 device keys, uint64 fingerprints, int64 times
    pending: list[Source] = []
    pending_rows: bytes = b""  # int64 type, asked, answered; float64 values; uint64 hashes: each for every row
    done: bytes = b""  # uint64 keys of pending events decided


@dataclass
class PendingRows:
    """Pending events as a record carries them."""

    sources: list[Source]
    etype: np.ndarray
    asked: np.ndarray
    answered: np.ndarray
    values: np.ndarray
    hashes: np.ndarray

    def to_bytes(self) -> bytes:
        return b"".join(a.tobytes() for a in (self.etype, self.asked, self.answered, self.values, self.hashes))

    @staticmethod
    def from_bytes(sources: list[Source], data: bytes, features: int, hash_columns: int) -> PendingRows:
        n = len(sources)
        words = np.frombuffer(data, np.int64)
        values = words[3 * n : 3 * n + n * features].view(np.float64).reshape(n, features).copy()
        hashes = words[3 * n + n * features :].view(np.uint64).reshape(n, hash_columns).copy()
        return PendingRows(sources, words[:n].copy(), words[n : 2 * n].copy(), words[2 * n : 3 * n].copy(), values,
                           hashes)  # fmt: skip


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(ShardRecord)


def encode(record: ShardRecord) -> bytes:
    return _encoder.encode(record)


def decode(data: bytes, fingerprint: int) -> ShardRecord:
    """A record; `LayoutMismatch` if it was made under another layout than `fingerprint`'s."""
    record = _decoder.decode(data)
    if record.layout != fingerprint:
        raise LayoutMismatch(
            "a state record was made under another layout of features or state, or another hash key; this state "
            "must be rebuilt from scratch"
        )
    return record


def layout_fingerprint(layout: Layout, hashes: ColumnHashes) -> int:
    """Changes whenever what state means or how it is packed changes, the hash key included."""
    shape = b"|".join(
        [LAYOUT_VERSION, str(INLINE).encode(), str(HLL_REGISTERS).encode(), str(layout.lateness_ms).encode()]
        + [hashes.digest("layout", "fingerprint")]
        + [bytes.fromhex(spec.state_id) for spec in layout.specs]
    )
    return int.from_bytes(hashlib.blake2b(shape, digest_size=8).digest(), "little", signed=True)


def take_changes(
    state: ColumnarState, fingerprint: int, expired: np.ndarray, ids: np.ndarray, links: np.ndarray, shards: int
) -> dict[int, ShardRecord]:
    """Per shard, the entities changed since the last call, those expired meanwhile, the memos of `ids`, `links`."""
    changed = state.take_changed()
    changed = changed[state.entities.key[changed] > DELETED]  # changed, then expired: in `expired`
    entity_shards = shard_of_keys(state.entities.key[changed], shards)
    by_shard = np.argsort(entity_shards, kind="stable")  # each shard's entities pack to one run of words
    changed, entity_shards = changed[by_shard], entity_shards[by_shard]
    words, ends = packed(state, changed)
    id_keys, _, id_ts = _entries(state.ids, np.unique(ids))
    link_keys, link_values, link_ts = _entries(state.links, np.unique(links))
    records = {}
    parts = [entity_shards, shard_of_keys(expired, shards), shard_of_keys(id_keys, shards),
             shard_of_keys(link_keys, shards)]  # fmt: skip
    for shard in np.unique(np.concatenate(parts)).tolist():
        first, last = np.searchsorted(entity_shards, [shard, shard + 1])
        start, end = (int(ends[first - 1]) if first else 0), (int(ends[last - 1]) if last else 0)
        i, k = parts[2] == shard, parts[3] == shard
        records[shard] = ShardRecord(
            fingerprint, shard, False, state.newest_ts,
            expired=expired[parts[1] == shard].tobytes(),
            entities=words[start:end].tobytes() if last > first else b"",
            ids=id_keys[i].tobytes() + id_ts[i].tobytes(),
            links=link_keys[k].tobytes() + link_values[k].tobytes() + link_ts[k].tobytes(),
        )  # fmt: skip
    return records


def snapshots(state: ColumnarState, fingerprint: int, shards: int) -> dict[int, ShardRecord]:
    """All the state holds of each of its shards (`state.owned`): entities, event ids, links."""
    e = state.entities
    used = np.arange(int(e.counters[IDS_USED]))
    live = used[e.key[used] > DELETED]
    entity_shards = shard_of_keys(e.key[live], shards)
    by_shard = np.argsort(entity_shards, kind="stable")
    live, entity_shards = live[by_shard], entity_shards[by_shard]
    words, ends = packed(state, live)
    memos = [_entries(memo, memo.keys[memo.keys > DELETED]) for memo in (state.ids, state.links)]
    (id_keys, _, id_ts), (link_keys, link_values, link_ts) = memos
    id_shards, link_shards = shard_of_keys(id_keys, shards), shard_of_keys(link_keys, shards)
    records = {}
    for shard in np.flatnonzero(state.owned).tolist():
        first, last = np.searchsorted(entity_shards, [shard, shard + 1])
        start, end = (int(ends[first - 1]) if first else 0), (int(ends[last - 1]) if last else 0)
        i, k = id_shards == shard, link_shards == shard
        records[shard] = ShardRecord(
            fingerprint, shard, True, state.newest_ts, entities=words[start:end].tobytes() if last > first else b"",
            ids=id_keys[i].tobytes() + id_ts[i].tobytes(),
            links=link_keys[k].tobytes() + link_values[k].tobytes() + link_ts[k].tobytes(),
        )  # fmt: skip
    return records


def apply_record(state: ColumnarState, record: ShardRecord, shards: int) -> None:
    """Apply a record's entities, expiries and memos to `state` (a snapshot first forgets what it had of the shard)."""
    if record.snapshot:
        gone = np.zeros(shards, np.bool_)
        gone[record.shard] = True
        forget_shards(state, gone)
    kinds = state.layout.kind_arrays
    forget_entities(state.entities, state.pool, state.layout.arrays, kinds.features, kinds.first,
                    int(kinds.ring_stride[0]), np.frombuffer(record.expired, np.uint64))  # fmt: skip
    load(state, np.frombuffer(record.entities, np.int64).copy())
    ids = np.frombuffer(record.ids, np.uint64)
    half = ids.shape[0] // 2
    state.ids = _put(state.ids, ids[:half], np.zeros(half, np.uint64), ids[half:].view(np.int64))
    links = np.frombuffer(record.links, np.uint64)
    third = links.shape[0] // 3
    state.links = _put(state.links, links[:third], links[third : 2 * third], links[2 * third :].view(np.int64))
    state.newest_ts = max(state.newest_ts, record.newest_ts)


def forget_shards(state: ColumnarState, gone: np.ndarray) -> None:
    """Forget the entities, event ids and fingerprints of the shards `gone` marks (they moved to another worker)."""
    shards = gone.shape[0]
    if not gone.any():
        return
    e = state.entities
    keys = e.key[: int(e.counters[IDS_USED])]
    keys = keys[keys > DELETED]
    kinds = state.layout.kind_arrays
    forget_entities(e, state.pool, state.layout.arrays, kinds.features, kinds.first, int(kinds.ring_stride[0]),
                    keys[gone[shard_of_keys(keys, shards)]])  # fmt: skip
    for memo in (state.ids, state.links):
        _forget_memo(memo, gone)


def _entries(memo: Memo, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The keys of `keys` that `memo` holds, with their values and times."""
    keys = np.ascontiguousarray(keys, np.uint64)
    value, ts = np.zeros(keys.shape[0], np.uint64), np.zeros(keys.shape[0], np.int64)
    memo_get(memo, keys, value, ts)
    held = ts >= 0
    return keys[held], value[held], ts[held]


def _put(memo: Memo, keys: np.ndarray, value: np.ndarray, ts: np.ndarray) -> Memo:
    """`memo` (or a grown copy) holding `keys` with their values and times."""
    position = 0
    while (position := memo_put(memo, keys, value, ts, position)) < keys.shape[0]:
        memo = grown_memo(memo)
    return memo


def _forget_memo(memo: Memo, gone: np.ndarray) -> None:
    live = memo.keys > DELETED
    dropped = live & gone[shard_of_keys(memo.keys, gone.shape[0])]
    memo.keys[dropped] = DELETED
    n = int(dropped.sum())
    memo.counters[LIVE] -= n
    memo.counters[TOMBSTONES] += n
