"""Columnar state: one hash table from keyed hash to entity, and the entities' windows in flat arrays.

Every entity, whatever its kind, has an id (a row of the per-entity arrays),
a ring of buckets per count/sum/min/max/distinct feature of its kind that
has counted one of its events (most never do: a chunk of the ring arena is
taken the first time), and a chunk of the size its kind needs in the other
arenas (see `layout`): one number per since_last feature, and per distinct
feature its exact values.
A ring starts compact: `COMPACT` slots holding its buckets in the order
they came, whatever their place in the full ring (most entities are seen
once or twice, in one or two buckets). The bucket that would need one slot
more makes it a full ring: one slot per bucket of the window and the
lateness, bucket `b` in slot `b % slots`. Both hold the same buckets, so a
window reads the same from either; `ring_span` says where a ring's slots are.
Distinct counts keep `INLINE` exact values in the entity's chunk; past that,
a block of the pool (up to the feature's `distinct_cap` values); past the
cap, one HyperLogLog per ring slot from the registers, seeded with the exact
values. An expired entity's id, with its chunks, goes to its kind's free
list for the next entity of that kind; its rings go to their feature's free
list, its pool blocks and registers are freed. The keyed hashes of different kinds are made with different keys, so
one table holds them all.

The kernels never allocate: a batch's kernel stops before an event it has no
room for (`needs_room`), the caller grows what is short (`grown`), and calls
it again from that event. Growing copies the arrays while the stream waits a
few milliseconds; no offset changes, nothing is lost or reordered.
"""

from __future__ import annotations

import mmap
from typing import NamedTuple

import numpy as np
from numba import uint64

from streamguard.columnar.hashing import ABSENT, DELETED
from streamguard.columnar.jit import inline, kernel
from streamguard.features.spec import MAX_SLOTS
from streamguard.kernels.window import HLL_REGISTERS

COMPACT = 4  # slots of a compact ring
COMPACT_AT = -2  # `ring_at` of a compact ring at `starts[b]`: COMPACT_AT - b (NONE: no ring)
INLINE = 8  # exact distinct values an entity keeps per feature before it takes a pool block
MAX_LOAD = 0.6  # of a table's slots holding a key or a tombstone, before it is grown
NONE = -1
MODE_INLINE, MODE_POOL, MODE_HLL = 0, 1, 2
USED, MODE, BLOCK = 0, 1, 2  # per distinct feature of an entity: values kept, where, which block
# counters of `Entities`
LIVE, TOMBSTONES, IDS_USED, RING_USED, LAST_USED, DISTINCT_USED, DIRTY = range(7)
BLOCKS_USED, BLOCKS_FREE, REGISTERS_USED, REGISTERS_FREE = range(4)  # `Pool.counters`


class Entities(NamedTuple):
    keys: np.ndarray  # uint64[slots]: the keyed hash in each slot (ABSENT, DELETED)
    slot_entity: np.ndarray  # int64[slots]
    key: np.ndarray  # uint64[ids]: ABSENT for a free id
    kind: np.ndarray  # int64[ids]
    ring_at: np.ndarray  # int64[ids x ring stride]: each of the entity's rings in `starts`/`values` (`ring_span`)
    last_at: np.ndarray  # int64[ids]: ... in `last`
    distinct_at: np.ndarray  # int64[ids]: ... in `distinct` (3 per feature) and `hashes`/`masks` (INLINE per feature)
    next_free: np.ndarray  # int64[ids]: the next free id of the same kind
    is_dirty: np.ndarray  # bool[ids]
    dirty: np.ndarray  # int64[ids]: the ids changed since `take_dirty`
    free_head: np.ndarray  # int64[kinds]: each kind's first free id (NONE)
    ring_free: np.ndarray  # int64[features + 1]: each feature's first free ring, then the compact rings' (NONE)
    starts: np.ndarray  # int64[ring arena]: the bucket each ring slot holds (-1: none)
    values: np.ndarray  # float64[ring arena]
    last: np.ndarray  # int64[last arena]: newest ts counted (-1: none)
    distinct: np.ndarray  # int64[3 x distinct arena]: USED, MODE, BLOCK
    hashes: np.ndarray  # uint64[INLINE x distinct arena]
    masks: np.ndarray  # uint64[INLINE x distinct arena]: the ring slots each value was seen in
    counters: np.ndarray  # int64[7]: LIVE .. DIRTY


class Pool(NamedTuple):
    """Room shared by every distinct feature: exact value blocks, then HyperLogLog registers."""

    hashes: np.ndarray  # uint64[blocks, block size]
    masks: np.ndarray  # uint64[blocks, block size]
    free: np.ndarray  # int64[blocks]: a stack of freed blocks
    registers: np.ndarray  # uint8[register blocks, MAX_SLOTS, HLL_REGISTERS]
    registers_free: np.ndarray  # int64[register blocks]
    counters: np.ndarray  # int64[4]: BLOCKS_USED, BLOCKS_FREE, REGISTERS_USED, REGISTERS_FREE


class Memo(NamedTuple):
    """A table from keyed hash to one value and a time: decided event ids, each device's fingerprint."""

    keys: np.ndarray  # uint64[slots]
    value: np.ndarray  # uint64[slots]
    ts: np.ndarray  # int64[slots]
    counters: np.ndarray  # int64[2]: LIVE, TOMBSTONES


def lazy_zeros(size: int, dtype: type) -> np.ndarray:
    """A zeroed array whose memory is committed page by page as it is first written.

    An anonymous mapping of its own: numpy's own large arrays ask the kernel
    for transparent huge pages, and with the kernel's default defragmentation
    a first write then waits for a 2 MiB page to be compacted and cleared;
    loading a shard's entities into fresh arrays ran 3.6 times slower.
    """
    nbytes = max(1, size) * np.dtype(dtype).itemsize
    return np.frombuffer(mmap.mmap(-1, nbytes), dtype, max(1, size))


def new_entities(
    ids: int, kinds: int, features: int, ring_stride: int, ring: int, last: int, distinct: int
) -> Entities:
    """Room for `ids` entities and arenas of the sizes given.

    Arrays the kernel initialises itself (an entity's chunks, when it is
    made) are zeroed lazily: the kernel only commits the memory it touches,
    so generous sizes cost address space, not memory.
    """
    slots = slots_for(ids)
    return Entities(
        keys=np.zeros(slots, np.uint64),
        slot_entity=np.zeros(slots, np.int64),
        key=np.zeros(ids, np.uint64),
        kind=np.zeros(ids, np.int64),
        ring_at=lazy_zeros(ids * max(1, ring_stride), np.int64),
        last_at=np.zeros(ids, np.int64),
        distinct_at=np.zeros(ids, np.int64),
        next_free=np.full(ids, NONE, np.int64),
        is_dirty=np.zeros(ids, np.bool_),
        dirty=np.zeros(ids, np.int64),
        free_head=np.full(kinds, NONE, np.int64),
        ring_free=np.full(features + 1, NONE, np.int64),
        starts=lazy_zeros(ring, np.int64),
        values=lazy_zeros(ring, np.float64),
        last=lazy_zeros(last, np.int64),
        distinct=lazy_zeros(3 * distinct, np.int64),
        hashes=lazy_zeros(INLINE * distinct, np.uint64),
        masks=lazy_zeros(INLINE * distinct, np.uint64),
        counters=np.zeros(7, np.int64),
    )


def new_pool(blocks: int, block_size: int, register_blocks: int) -> Pool:
    return Pool(
        hashes=np.zeros((blocks, block_size), np.uint64),
        masks=np.zeros((blocks, block_size), np.uint64),
        free=np.zeros(blocks, np.int64),
        registers=np.zeros((register_blocks, MAX_SLOTS, HLL_REGISTERS), np.uint8),
        registers_free=np.zeros(register_blocks, np.int64),
        counters=np.zeros(4, np.int64),
    )


def new_memo(entries: int) -> Memo:
    slots = slots_for(entries)
    return Memo(
        np.zeros(slots, np.uint64), np.zeros(slots, np.uint64), np.zeros(slots, np.int64), np.zeros(2, np.int64)
    )


def slots_for(entries: int) -> int:
    """A power of two that keeps `entries` under the load limit."""
    return 1 << max(4, int(np.ceil(np.log2(entries / MAX_LOAD + 1))))


# --- growing (between kernel calls) ---------------------------------------------------


def _doubled(a: np.ndarray) -> np.ndarray:
    """Twice the room, the new half zeroed lazily (the kernel initialises what it takes)."""
    grown = lazy_zeros(2 * a.shape[0], a.dtype.type)
    grown[: a.shape[0]] = a
    return grown


def grown_ids(entities: Entities) -> Entities:
    """Twice the ids, and a slot array sized for them (tombstones dropped)."""
    e = entities
    grown = e._replace(
        key=_doubled(e.key), kind=_doubled(e.kind), ring_at=_doubled(e.ring_at),
        last_at=_doubled(e.last_at), distinct_at=_doubled(e.distinct_at),
        next_free=_doubled(e.next_free), is_dirty=_doubled(e.is_dirty), dirty=_doubled(e.dirty),
    )  # fmt: skip
    return rehashed(grown, slots_for(grown.key.shape[0]))


def rehashed(entities: Entities, slots: int) -> Entities:
    """The same entities in a fresh slot array of `slots` (the tombstones of expired ones dropped)."""
    keys, slot_entity = np.zeros(slots, np.uint64), np.zeros(slots, np.int64)
    _rehash(entities.keys, entities.slot_entity, keys, slot_entity)
    entities.counters[TOMBSTONES] = 0
    return entities._replace(keys=keys, slot_entity=slot_entity)


def grown_arena(entities: Entities, arena: str) -> Entities:
    e = entities
    if arena == "ring":
        return e._replace(starts=_doubled(e.starts), values=_doubled(e.values))
    if arena == "last":
        return e._replace(last=_doubled(e.last))
    return e._replace(distinct=_doubled(e.distinct), hashes=_doubled(e.hashes), masks=_doubled(e.masks))


def grown_pool(pool: Pool, blocks: bool) -> Pool:
    def double(a: np.ndarray) -> np.ndarray:
        return np.concatenate([a, np.zeros_like(a)])

    if blocks:
        return pool._replace(hashes=double(pool.hashes), masks=double(pool.masks), free=double(pool.free))
    return pool._replace(registers=double(pool.registers), registers_free=double(pool.registers_free))


def grown_memo(memo: Memo) -> Memo:
    """Room for twice its entries (its tombstones dropped)."""
    grown = new_memo(2 * int(memo.counters[LIVE]) + 16)
    _rehash_memo(memo.keys, memo.value, memo.ts, grown.keys, grown.value, grown.ts)
    grown.counters[LIVE] = memo.counters[LIVE]
    return grown


@kernel
def _rehash(keys, slot_entity, new_keys, new_slot_entity) -> None:  # fmt: skip
    for s in range(keys.shape[0]):
        key = keys[s]
        if key > uint64(DELETED):
            slot = insert_slot(new_keys, key)
            new_keys[slot] = key
            new_slot_entity[slot] = slot_entity[s]


@kernel
def _rehash_memo(keys, value, ts, new_keys, new_value, new_ts) -> None:  # fmt: skip
    for s in range(keys.shape[0]):
        key = keys[s]
        if key > uint64(DELETED):
            slot = insert_slot(new_keys, key)
            new_keys[slot] = key
            new_value[slot] = value[s]
            new_ts[slot] = ts[s]


# --- slots (inside kernels) ---------------------------------------------------------------


@inline
def find_slot(keys, key):
    """The slot holding `key`, or -1."""
    mask = keys.shape[0] - 1
    slot = np.int64(key & uint64(keys.shape[0] - 1))
    while True:
        held = keys[slot]
        if held == key:
            return slot
        if held == uint64(ABSENT):
            return -1
        slot = (slot + 1) & mask


@inline
def insert_slot(keys, key):
    """The slot to put `key` in, which must be absent: the first tombstone or empty slot on its probe path."""
    mask = keys.shape[0] - 1
    slot = np.int64(key & uint64(keys.shape[0] - 1))
    while keys[slot] > uint64(DELETED):
        slot = (slot + 1) & mask
    return slot


@inline
def table_full(live: int, tombstones: int, slots: int) -> bool:
    return live + tombstones + 1 > MAX_LOAD * slots


# --- expiry (a bounded number of entities per call) ----------------------------------------


@kernel
def expire_entities(entities, pool, features, kind_features, kind_first, stride, cursor, limit, watermark, gone):
    """Free up to `limit` entities from id `cursor` on whose every window is past use; (next cursor, freed).

    A window is past use when its newest data is further behind `watermark`
    (the newest event time counted) than its window plus the lateness. The
    keys of the freed entities go to `gone`.
    """
    e = entities
    c = e.counters
    end = min(cursor + limit, c[IDS_USED])
    n = 0
    for entity in range(cursor, end):
        key = e.key[entity]
        kind = e.kind[entity]
        fs = kind_features[kind_first[kind] : kind_first[kind + 1]]
        if key <= uint64(DELETED) or _in_use(e, features, fs, entity, stride, watermark):
            continue
        free_entity(e, pool, features, fs, stride, entity)
        gone[n] = key
        n += 1
    return (0 if end >= c[IDS_USED] else end), n


@kernel
def forget_entities(entities, pool, features, kind_features, kind_first, stride, keys) -> None:
    """Free the entities of `keys` (those that exist): what a changelog record says expired."""
    e = entities
    for j in range(keys.shape[0]):
        slot = find_slot(e.keys, keys[j])
        if slot >= 0:
            entity = e.slot_entity[slot]
            kind = e.kind[entity]
            free_entity(e, pool, features, kind_features[kind_first[kind] : kind_first[kind + 1]], stride, entity)


@inline
def shard_of_key(key, shards):
    """The shard of `key`: its high 32 bits modulo the shard count (`pack.shard_of_keys` for a column)."""
    return (key >> uint64(32)) % shards


@kernel
def forget_shard_entities(entities, pool, features, kind_features, kind_first, stride, gone) -> None:
    """Free every entity of the shards `gone` marks."""
    e = entities
    shards = uint64(gone.shape[0])
    for entity in range(e.counters[IDS_USED]):
        key = e.key[entity]
        if key > uint64(DELETED) and gone[shard_of_key(key, shards)]:
            kind = e.kind[entity]
            free_entity(e, pool, features, kind_features[kind_first[kind] : kind_first[kind + 1]], stride, entity)


@kernel
def forget_shard_memos(memo, gone) -> None:
    """Forget the entries of the shards `gone` marks."""
    shards = uint64(gone.shape[0])
    for slot in range(memo.keys.shape[0]):
        key = memo.keys[slot]
        if key > uint64(DELETED) and gone[shard_of_key(key, shards)]:
            memo.keys[slot] = uint64(DELETED)
            memo.counters[LIVE] -= 1
            memo.counters[TOMBSTONES] += 1


@inline
def free_entity(e, pool, features, fs, stride, entity) -> None:
    """Take the entity out of the table; its id goes to its kind's free list, its rings and blocks to theirs."""
    c = e.counters
    e.keys[find_slot(e.keys, e.key[entity])] = uint64(DELETED)
    c[TOMBSTONES] += 1
    c[LIVE] -= 1
    e.key[entity] = uint64(ABSENT)
    kind = e.kind[entity]
    e.next_free[entity] = e.free_head[kind]
    e.free_head[kind] = entity
    for f in fs:
        d = features.distinct_offset[f]
        if d >= 0:
            release_block(pool, e.distinct, 3 * (e.distinct_at[entity] + d))
        if features.ring_index[f] >= 0:
            free_ring(e, f, entity * stride + features.ring_index[f])


@inline
def _in_use(e, features, fs, entity, stride, watermark) -> bool:
    for f in fs:
        if features.last_offset[f] >= 0:
            newest = e.last[e.last_at[entity] + features.last_offset[f]]
        else:
            at = e.ring_at[entity * stride + features.ring_index[f]]
            if at == NONE:
                continue
            first, n = ring_span(at, features.slots[f])
            bucket = -1
            for s in range(first, first + n):
                bucket = max(bucket, e.starts[s])
            newest = -1 if bucket < 0 else (bucket + 1) * features.resolution[f] - 1
        if newest >= 0 and newest >= watermark - features.lifetime[f]:
            return True
    return False


@inline
def ring_span(at, slots) -> tuple[int, int]:
    """Where the slots of the ring at `at` (a `ring_at` value, not NONE) begin, and how many it has."""
    if at <= COMPACT_AT:
        return COMPACT_AT - at, COMPACT
    return at, slots


@inline
def new_ring(e, f, slots, buckets) -> int:
    """A ring for feature `f` with room for `buckets`: compact if that fits and is smaller; its `ring_at` value."""
    if buckets <= COMPACT < slots:
        return take_compact(e)
    return take_ring(e, f, slots)


@inline
def take_compact(e) -> int:
    """A compact ring (reused, or new), every slot empty; its `ring_at` value."""
    compact = e.ring_free.shape[0] - 1
    return COMPACT_AT - _take_slots(e, compact, COMPACT)


@inline
def take_ring(e, f, slots) -> int:
    """A full ring for feature `f` (reused from its free list, or new), every slot empty; its `ring_at` value."""
    return _take_slots(e, f, slots)


@inline
def _take_slots(e, free_list, slots) -> int:
    at = e.ring_free[free_list]
    if at != NONE:
        e.ring_free[free_list] = e.starts[at]
    else:
        at = e.counters[RING_USED]
        e.counters[RING_USED] += slots
    for s in range(at, at + slots):
        e.starts[s] = -1
        e.values[s] = 0.0
    return at


@inline
def free_ring(e, f, index) -> None:
    """Give the ring at `ring_at[index]` (if made) back to its free list: feature `f`'s, or the compact rings'."""
    at = e.ring_at[index]
    if at == NONE:
        return
    free_list = f
    if at <= COMPACT_AT:
        at, free_list = COMPACT_AT - at, e.ring_free.shape[0] - 1
    e.starts[at] = e.ring_free[free_list]
    e.ring_free[free_list] = at
    e.ring_at[index] = NONE


@inline
def release_block(pool, distinct, at) -> None:
    """Give a distinct feature's pool block or registers back (if it holds any); it is exact and empty again."""
    mode = distinct[at + MODE]
    if mode == MODE_POOL:
        pool.free[pool.counters[BLOCKS_FREE]] = distinct[at + BLOCK]
        pool.counters[BLOCKS_FREE] += 1
    elif mode == MODE_HLL:
        pool.registers_free[pool.counters[REGISTERS_FREE]] = distinct[at + BLOCK]
        pool.counters[REGISTERS_FREE] += 1
    distinct[at + USED] = 0
    distinct[at + MODE] = MODE_INLINE


@kernel
def expire_memo(memo, cursor, limit, before_ts) -> int:
    """Forget up to `limit` slots' entries from `cursor` on noted before `before_ts`; the next cursor."""
    end = min(cursor + limit, memo.keys.shape[0])
    for slot in range(cursor, end):
        if memo.keys[slot] > uint64(DELETED) and memo.ts[slot] < before_ts:
            memo.keys[slot] = uint64(DELETED)
            memo.counters[LIVE] -= 1
            memo.counters[TOMBSTONES] += 1
    return 0 if end >= memo.keys.shape[0] else end


@kernel
def take_dirty(entities, out) -> int:
    """The ids changed since the last call, into `out`; how many."""
    e = entities
    n = e.counters[DIRTY]
    for j in range(n):
        out[j] = e.dirty[j]
        e.is_dirty[e.dirty[j]] = False
    e.counters[DIRTY] = 0
    return n


@kernel
def memo_get(memo, keys, value, ts) -> None:
    """Each key's value and time (ts -1 where it is not held)."""
    for j in range(keys.shape[0]):
        slot = find_slot(memo.keys, keys[j])
        if slot >= 0:
            value[j] = memo.value[slot]
            ts[j] = memo.ts[slot]
        else:
            ts[j] = -1


@kernel
def memo_put(memo, keys, value, ts, start) -> int:
    """Hold `keys[start:]` with their values and times; where it stopped for want of room (`keys.shape[0]`: done)."""
    c = memo.counters
    for j in range(start, keys.shape[0]):
        slot = find_slot(memo.keys, keys[j])
        if slot < 0:
            if table_full(c[LIVE], c[TOMBSTONES], memo.keys.shape[0]):
                return j
            slot = insert_slot(memo.keys, keys[j])
            if memo.keys[slot] == uint64(DELETED):
                c[TOMBSTONES] -= 1
            memo.keys[slot] = keys[j]
            c[LIVE] += 1
        memo.value[slot] = value[j]
        memo.ts[slot] = ts[j]
    return keys.shape[0]
