"""A shard's state as records: what changed in a transaction, or all of it (a snapshot), and back.

A `ShardRecord` holds, for one shard: the entities changed, packed (`pack`),
and the keys of those expired; the event ids decided and the device ->
fingerprint links learned, each with its time; and the events decided there
that wait for other shards (`pending`: their input record, type, values read
so far, hashes and answer bits), with the keys of those decided since. A
snapshot holds all of the shard and replaces what a state had of it.
Restore is the last snapshot, then every change after it: applied together
(`apply_records`), as if in order, each entity loaded once from its newest
copy.

Every record carries the layout's fingerprint: applied to state of another
layout (a feature added or changed, another hash key or packing), it is
refused with a clear error, never mixed in.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np

from streamguard.codec import MAX_RECORD_BYTES
from streamguard.columnar.hashing import DELETED, LAYOUT_VERSION, ColumnHashes
from streamguard.columnar.layout import Layout
from streamguard.columnar.pack import newest_entities, shard_of_keys
from streamguard.columnar.state import ColumnarState, load, packed
from streamguard.columnar.tables import (
    IDS_USED,
    INLINE,
    Memo,
    forget_entities,
    forget_shard_entities,
    forget_shard_memos,
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

    def take(self, rows: slice) -> PendingRows:
        return PendingRows(self.sources[rows], self.etype[rows], self.asked[rows], self.answered[rows],
                           self.values[rows], self.hashes[rows])  # fmt: skip

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
    """A record; `LayoutMismatch` if it was made under another layout than `fingerprint`'s, or is none at all."""
    try:
        record = _decoder.decode(data)
    except msgspec.DecodeError:
        raise LayoutMismatch(
            "a changelog record that is no columnar state (the item engine's? STREAMGUARD_ENGINE must be the one "
            "the app's changelog was written by); this state must be rebuilt from scratch"
        ) from None
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
) -> dict[int, list[ShardRecord]]:
    """Per shard, the entities changed since the last call, those expired meanwhile, the memos of `ids`, `links`."""
    changed = state.take_changed()
    changed = changed[state.entities.key[changed] > DELETED]  # changed, then expired: in `expired`
    memos = (_entries(state.ids, np.unique(ids)), _entries(state.links, np.unique(links)))
    parts = _Parts(state, changed, expired, memos, shards)
    return {shard: parts.records(fingerprint, shard, False, state.newest_ts) for shard in parts.shards()}


def snapshots(state: ColumnarState, fingerprint: int, shards: int, which: list[int]) -> dict[int, list[ShardRecord]]:
    """All the state holds of each shard of `which`: entities, event ids, links."""
    e = state.entities
    wanted = np.zeros(shards, np.bool_)
    wanted[which] = True

    def of_wanted(keys: np.ndarray) -> np.ndarray:  # only those shards' entries are packed
        live: np.ndarray = keys[keys > DELETED]
        kept: np.ndarray = live[wanted[shard_of_keys(live, shards)]]
        return kept

    used = np.arange(int(e.counters[IDS_USED]))
    used = used[e.key[used] > DELETED]
    used = used[wanted[shard_of_keys(e.key[used], shards)]]
    memos = tuple(_entries(memo, of_wanted(memo.keys)) for memo in (state.ids, state.links))
    parts = _Parts(state, used, np.empty(0, np.uint64), memos, shards)
    return {shard: parts.records(fingerprint, shard, True, state.newest_ts) for shard in which}


class _Parts:
    """The entities (packed), expired keys and memo entries of a call, each sorted by shard."""

    def __init__(
        self,
        state: ColumnarState,
        entities: np.ndarray,
        expired: np.ndarray,
        memos: tuple[tuple[np.ndarray, np.ndarray, np.ndarray], ...],
        shards: int,
    ) -> None:
        entity_shards = shard_of_keys(state.entities.key[entities], shards)
        by_shard = np.argsort(entity_shards, kind="stable")  # each shard's entities pack to one run of words
        self.entity_shards = entity_shards[by_shard]
        self.words, self.ends = packed(state, entities[by_shard])
        self.expired, self.expired_shards = _by_shard(shards, expired)
        (id_keys, _, id_ts), (link_keys, link_values, link_ts) = memos
        self.ids, self.id_shards = _by_shard(shards, id_keys, id_ts)
        self.links, self.link_shards = _by_shard(shards, link_keys, link_values, link_ts)

    def shards(self) -> list[int]:
        every = [self.entity_shards, self.expired_shards, self.id_shards, self.link_shards]
        return list(np.unique(np.concatenate(every)).tolist())

    def records(self, fingerprint: int, shard: int, snapshot: bool, newest_ts: int) -> list[ShardRecord]:
        """The shard's records: one, or several of at most `MAX_RECORD_BYTES` (a snapshot's first says so)."""
        first, last = np.searchsorted(self.entity_shards, [shard, shard + 1])
        ends = self.ends[first:last]
        start = int(self.ends[first - 1]) if first else 0
        pieces: list[Piece] = []
        # Expired keys first: a restore forgets them before it loads what changed (a key may come back).
        for name, columns, key_shards in (("expired", self.expired, self.expired_shards),
                                          ("ids", self.ids, self.id_shards),
                                          ("links", self.links, self.link_shards)):  # fmt: skip
            a, b = np.searchsorted(key_shards, [shard, shard + 1])
            per_piece = max(1, MAX_RECORD_BYTES // (8 * len(columns)))
            for at in range(a, b, per_piece):
                pieces.append({name: b"".join(column[at : min(b, at + per_piece)].tobytes() for column in columns)})
        for i, j in _runs(ends - start, MAX_RECORD_BYTES // 8):
            pieces.append({"entities": self.words[int(ends[i - 1]) if i else start : int(ends[j - 1])].tobytes()})
        return fill(ShardRecord(fingerprint, shard, snapshot, newest_ts), pieces)


Piece = dict[str, Any]  # fields of a record: bytes, or the pending events' sources


def fill(first: ShardRecord, pieces: list[Piece]) -> list[ShardRecord]:
    """`first`, then as many records as it takes to hold `pieces` (fields to set), in order.

    A record stays within `MAX_RECORD_BYTES` (unless one piece is bigger);
    a piece is never split, nor two of one field put in one record (so a
    record may hold less than it could).
    """
    records = [first]
    for piece in pieces:
        record = records[-1]
        held = size_of(record)
        if held and (held + _size(piece) > MAX_RECORD_BYTES or any(getattr(record, name) for name in piece)):
            record = msgspec.structs.replace(first, snapshot=False, pending=[], **{name: b"" for name in _PARTS})
            records.append(record)
        for name, value in piece.items():
            setattr(record, name, value)
    return records


def size_of(record: ShardRecord) -> int:
    return _size({name: getattr(record, name) for name in (*_PARTS, "pending")})


def pending_pieces(rows: PendingRows, done: np.ndarray) -> list[Piece]:
    """Pending events (and the keys of those decided) as pieces for `fill`, each at most `MAX_RECORD_BYTES`."""
    pieces: list[Piece] = [{"done": done[at : at + MAX_RECORD_BYTES // 8].tobytes()}
                           for at in range(0, done.shape[0], MAX_RECORD_BYTES // 8)]  # fmt: skip
    fixed = 8 * (3 + rows.values.shape[1] + rows.hashes.shape[1])
    sizes = np.cumsum([fixed + _source_size(source) for source in rows.sources])
    at = 0
    while at < sizes.shape[0]:
        base = int(sizes[at - 1]) if at else 0
        end = max(at + 1, int(np.searchsorted(sizes, base + MAX_RECORD_BYTES, side="right")))
        group = rows.take(slice(at, end))
        pieces.append({"pending": group.sources, "pending_rows": group.to_bytes()})
        at = end
    return pieces


def _size(piece: Piece) -> int:
    return sum(len(value) if isinstance(value, bytes) else sum(map(_source_size, value)) for value in piece.values())


def _source_size(source: Source) -> int:
    """What an input record takes in a record, encoded (msgpack's headers, partition and offset included)."""
    topic, _, _, key, value = source
    return len(topic) + len(key or b"") + len(value or b"") + 32


_PARTS = ("expired", "entities", "ids", "links", "pending_rows", "done")


def _by_shard(shards: int, keys: np.ndarray, *columns: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """`keys` and its `columns`, sorted by the keys' shards; and those shards."""
    key_shards = shard_of_keys(keys, shards)
    order = np.argsort(key_shards, kind="stable")
    return [keys[order], *(column[order] for column in columns)], key_shards[order]


def _runs(ends: np.ndarray, limit: int) -> list[tuple[int, int]]:
    """Consecutive entities `[i, j)` whose words (`ends`: where each ends) take at most `limit` (or one entity)."""
    runs, i = [], 0
    while i < ends.shape[0]:
        base = int(ends[i - 1]) if i else 0
        j = max(i + 1, int(np.searchsorted(ends, base + limit, side="right")))
        runs.append((i, j))
        i = j
    return runs


def apply_records(state: ColumnarState, records: list[ShardRecord], shards: int) -> None:
    """Apply one shard's records, in changelog order, to `state`: as if one at a time, each entity loaded once.

    Records hold whole entities, so only an entity's newest copy counts:
    `pack.newest_entities` finds it, going back from the newest record to
    the last snapshot (which replaces whatever came before it, so the
    replay starts there). Entities then expired and not made again are
    forgotten; the event ids and fingerprints go in changelog order.
    """
    if not records:
        return
    start = max((i for i, record in enumerate(records) if record.snapshot), default=0)
    records = records[start:]
    if records[0].snapshot:
        gone = np.zeros(shards, np.bool_)
        gone[records[0].shard] = True
        forget_shards(state, gone)
    words, expired = _newest(state, records)
    kinds = state.layout.kind_arrays
    forget_entities(state.entities, state.pool, state.layout.arrays, kinds.features, kinds.first,
                    int(kinds.ring_stride[0]), expired)  # fmt: skip
    load(state, words)
    for record in records:
        ids = np.frombuffer(record.ids, np.uint64)
        half = ids.shape[0] // 2
        state.ids = _put(state.ids, ids[:half], np.zeros(half, np.uint64), ids[half:].view(np.int64))
        links = np.frombuffer(record.links, np.uint64)
        third = links.shape[0] // 3
        state.links = _put(state.links, links[:third], links[third : 2 * third], links[2 * third :].view(np.int64))
        state.newest_ts = max(state.newest_ts, record.newest_ts)


def _newest(state: ColumnarState, records: list[ShardRecord]) -> tuple[np.ndarray, np.ndarray]:
    """The newest copy of each entity the records hold (packed words), and the keys expired after theirs."""
    words = np.frombuffer(b"".join(r.entities for r in records), np.int64)
    expired = np.frombuffer(b"".join(r.expired for r in records), np.uint64)
    word_ends = np.cumsum([len(r.entities) // 8 for r in records], dtype=np.int64)
    expired_ends = np.cumsum([len(r.expired) // 8 for r in records], dtype=np.int64)
    keys = words.shape[0] // 3 + expired.shape[0]  # an entity packs to 3 words at least
    seen = np.zeros(1 << max(4, int(2 * keys + 1).bit_length()), np.uint64)
    out, gone = np.empty(words.shape[0], np.int64), np.empty(expired.shape[0], np.uint64)
    n, m = newest_entities(state.layout.arrays, state.layout.kind_arrays, words, word_ends, expired, expired_ends,
                           seen, out, gone)  # fmt: skip
    return out[:n], gone[:m]


def forget_shards(state: ColumnarState, gone: np.ndarray) -> None:
    """Forget the entities, event ids and fingerprints of the shards `gone` marks (they moved to another worker)."""
    if not gone.any():
        return
    kinds = state.layout.kind_arrays
    forget_shard_entities(state.entities, state.pool, state.layout.arrays, kinds.features, kinds.first,
                          int(kinds.ring_stride[0]), gone)  # fmt: skip
    for memo in (state.ids, state.links):
        forget_shard_memos(memo, gone)


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
