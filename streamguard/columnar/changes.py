"""A transaction's state changes, per shard, as the bytes of one record: what the changelog will carry.

A record holds the entities the transaction changed, packed (`pack`), and
the keys of those it expired. It starts with the layout's fingerprint:
applied to state of another layout (a feature added or changed, another
hash or packing), it is refused with a clear error, never mixed in.
Event ids and device fingerprints are not in it yet.
"""

from __future__ import annotations

import hashlib
from typing import Final

import numpy as np

from streamguard.columnar.hashing import DELETED, LAYOUT_VERSION, ColumnHashes
from streamguard.columnar.layout import Layout
from streamguard.columnar.pack import shard_of_keys
from streamguard.columnar.state import ColumnarState, load, packed
from streamguard.columnar.tables import IDS_USED, INLINE, LIVE, TOMBSTONES, Memo, forget_entities
from streamguard.errors import StreamguardError
from streamguard.kernels.window import HLL_REGISTERS

HEADER_WORDS: Final = 3  # layout fingerprint, entities, expired keys


class LayoutMismatch(StreamguardError):
    """A record of state made under another layout."""


def layout_fingerprint(layout: Layout, hashes: ColumnHashes) -> int:
    """Changes whenever what state means or how it is packed changes, the hash key included."""
    shape = b"|".join(
        [LAYOUT_VERSION, str(INLINE).encode(), str(HLL_REGISTERS).encode(), str(layout.lateness_ms).encode()]
        + [hashes.digest("layout", "fingerprint")]
        + [bytes.fromhex(spec.state_id) for spec in layout.specs]
    )
    return int.from_bytes(hashlib.blake2b(shape, digest_size=8).digest(), "little", signed=True)


def take_changes(state: ColumnarState, hashes: ColumnHashes, expired: np.ndarray, shards: int) -> dict[int, bytes]:
    """Per shard, the record of what changed since the last call (`expired`: the keys `expire` freed meanwhile)."""
    ids = state.take_changed()
    ids = ids[state.entities.key[ids] > DELETED]  # changed, then expired: in `expired`
    words, ends = packed(state, ids)
    starts = np.concatenate([[0], ends[:-1]]) if ids.size else ends
    entity_shards = shard_of_keys(state.entities.key[ids], shards)
    expired_shards = shard_of_keys(expired, shards)
    fingerprint = layout_fingerprint(state.layout, hashes)
    records = {}
    for shard in np.union1d(entity_shards, expired_shards).tolist():
        mine = np.flatnonzero(entity_shards == shard)
        gone = expired[expired_shards == shard]
        body = [words[starts[j] : ends[j]] for j in mine.tolist()]
        header = np.array([fingerprint, mine.size, gone.size], np.int64)
        records[shard] = b"".join([header.tobytes(), gone.tobytes(), *(part.tobytes() for part in body)])
    return records


def apply_changes(state: ColumnarState, hashes: ColumnHashes, record: bytes) -> None:
    """Apply one record of `take_changes` to `state` (a restore, or a replica)."""
    words = np.frombuffer(record, np.int64)
    fingerprint, _, expired = (int(x) for x in words[:HEADER_WORDS])
    if fingerprint != layout_fingerprint(state.layout, hashes):
        raise LayoutMismatch(
            "a state record was made under another layout of features or state, or another hash key; this state "
            "must be rebuilt from scratch"
        )
    gone = words[HEADER_WORDS : HEADER_WORDS + expired].view(np.uint64)
    kinds = state.layout.kind_arrays
    forget_entities(state.entities, state.pool, state.layout.arrays, kinds.features, kinds.first,
                    int(kinds.ring_stride[0]), gone)  # fmt: skip
    load(state, words[HEADER_WORDS + expired :].copy())


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


def _forget_memo(memo: Memo, gone: np.ndarray) -> None:
    live = memo.keys > DELETED
    dropped = live & gone[shard_of_keys(memo.keys, gone.shape[0])]
    memo.keys[dropped] = DELETED
    n = int(dropped.sum())
    memo.counters[LIVE] -= n
    memo.counters[TOMBSTONES] += n
