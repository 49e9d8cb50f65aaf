"""The kernel that counts a batch of events in their entities' windows and reads their feature values.

One call does, for every event in event-time order: de-duplication by the
hash of its id, the device -> fingerprint memory, and for each of its
entities every window its type counts in or reads, with the semantics of
`streamguard.kernels.window` (a ring of buckets; a value at the event's time,
or at its entity's newest time minus the lateness for an event older than
that; an event older than the ring keeps is not counted). Values go to
`out[event, feature]`, NaN where not read.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import uint64

from streamguard.columnar.hashing import ABSENT, DELETED
from streamguard.columnar.jit import inline, kernel
from streamguard.columnar.layout import COUNT, MAX, MIN, SINCE_LAST, SUM
from streamguard.columnar.tables import (
    BLOCK,
    BLOCKS_FREE,
    BLOCKS_USED,
    COMPACT,
    COMPACT_AT,
    DIRTY,
    DISTINCT_USED,
    IDS_USED,
    INLINE,
    LAST_USED,
    LIVE,
    MODE,
    MODE_HLL,
    MODE_INLINE,
    MODE_POOL,
    NONE,
    REGISTERS_FREE,
    REGISTERS_USED,
    RING_USED,
    TOMBSTONES,
    USED,
    find_slot,
    free_ring,
    insert_slot,
    new_ring,
    ring_span,
    shard_of_key,
    table_full,
    take_ring,
)
from streamguard.kernels.window import HLL_REGISTERS, hll_estimate, hll_update

ROOM_OK = -1
NEEDS_IDS, NEEDS_SLOTS, NEEDS_RING, NEEDS_LAST, NEEDS_DISTINCT, NEEDS_BLOCKS, NEEDS_REGISTERS = range(7)
NEEDS_EVENT_IDS, NEEDS_LINKS = 7, 8
RESERVE_BLOCKS = 64  # free pool blocks and register blocks an event may need at most (its distinct features)
MAX_KINDS = 64
SKIP = -2  # `of_kind`: a kind the event does not count here


class Scratch(NamedTuple):
    """Room the kernel works in (it allocates nothing: it runs without numba's reference counting)."""

    of_kind: np.ndarray  # int64[MAX_KINDS]: the event's entity of each kind
    registers: np.ndarray  # uint8[HLL_REGISTERS]: registers merged over a window


def new_scratch() -> Scratch:
    return Scratch(np.empty(MAX_KINDS, np.int64), np.empty(HLL_REGISTERS, np.uint8))


@kernel
def count_batch(
    order, start, ts, etype, flags, numbers, hashes, want, decide,  # the batch, as columns
    features, kinds, caps, read_types, by_type, by_type_count,  # the layout, and what the ruleset reads
    entities, pool, ids, links, owned,  # the state, and which shards it holds
    device_type, fingerprint_column, device_column, lateness, link_memory,
    out, duplicate, counted, remote, room, scratch,
):  # fmt: skip
    """Process `order[start:]`; the position it stopped at (before an event without room: `room[0]` says what).

    `hashes[i, k]` for k < the number of kinds is event i's entity of kind k,
    and the last column its event id's hash. Row i counts the kinds whose
    bit is set in `want[i]`, where their entity's shard is `owned` here
    (bit `device_column`: the device -> fingerprint memory); `counted[i]` and
    `remote[i]` get the bits of those counted here and of those left to
    other shards. `decide[i]`: the event's own shard is here, and it is
    de-duplicated by its id's hash first.
    """
    nkinds = kinds.rings.shape[0]
    stride = kinds.ring_stride[0]
    shards = owned.shape[0]
    of_kind = scratch.of_kind
    for position in range(start, order.shape[0]):
        i = order[position]
        short = _short_of_room(entities, kinds, pool, ids, links, nkinds)
        if short != ROOM_OK:
            room[0] = short
            return position
        t_i = ts[i]
        if decide[i] and not _first_sight(ids, hashes[i, hashes.shape[1] - 1], t_i):
            duplicate[i] = True
            continue
        row_hashes = hashes[i]
        wanted = want[i]
        if fingerprint_column >= 0 and (wanted >> device_column) & 1 and row_hashes[device_column] != uint64(ABSENT):
            if _is_local(owned, shards, row_hashes[device_column]):
                _remember_fingerprint(links, row_hashes, etype[i] == device_type, fingerprint_column, device_column,
                                      t_i, link_memory)  # fmt: skip
            else:
                remote[i] |= 1 << device_column
        t = etype[i]
        for k in range(nkinds):
            key = row_hashes[k]
            if key == uint64(ABSENT) or (wanted >> k) & 1 == 0:
                of_kind[k] = SKIP
            elif not _is_local(owned, shards, key):
                of_kind[k] = SKIP
                remote[i] |= 1 << k
            else:
                of_kind[k] = _entity_of(entities, kinds, k, key, False)
                counted[i] |= 1 << k
        fl = flags[i]
        row_numbers = numbers[i]
        for j in range(by_type_count[t]):
            f = by_type[t, j]
            k = features.kind[f]
            if of_kind[k] == SKIP:
                continue
            read = (read_types[f] >> t) & 1 == 1
            counts = _counts(features, f, t, fl, row_numbers, row_hashes)
            entity = of_kind[k]
            if entity < 0:
                if not counts:  # an entity nothing counted yet: its windows are empty
                    if read:
                        out[i, f] = _empty_value(features.aggregate[f])
                    continue
                entity = of_kind[k] = _entity_of(entities, kinds, k, row_hashes[k], True)
            if counts and not entities.is_dirty[entity]:
                entities.is_dirty[entity] = True
                entities.dirty[entities.counters[DIRTY]] = entity
                entities.counters[DIRTY] += 1
            agg = features.aggregate[f]
            if agg == SINCE_LAST:
                value = _since_last(entities.last, entities.last_at[entity] + features.last_offset[f], t_i, counts,
                                    lateness)  # fmt: skip
                if read:
                    out[i, f] = value
                continue
            ring = entity * stride + features.ring_index[f]
            if entities.ring_at[ring] == NONE:  # no event of the entity counted in this feature yet
                if not counts:
                    if read:
                        out[i, f] = _empty_value(agg)
                    continue
                entities.ring_at[ring] = new_ring(entities, f, features.slots[f], 1)
            if counts:
                _add(entities, pool, features, caps, f, entity, ring, t_i, row_numbers, row_hashes)
            if read:
                first, n = ring_span(entities.ring_at[ring], features.slots[f])
                oldest, newest = _bounds(entities.starts, first, n, t_i, features.resolution[f],
                                         features.window_buckets[f], lateness)  # fmt: skip
                out[i, f] = _read(entities, pool, features, f, entity, first, n, oldest, newest, scratch)
    return order.shape[0]


@inline
def _is_local(owned, shards, key) -> bool:
    """Whether the shard of `key` (its high 32 bits modulo the shard count, as `shard_of_keys`) is held here."""
    return owned[shard_of_key(key, uint64(shards))]


@inline
def _short_of_room(entities, kinds, pool, ids, links, nkinds) -> int:
    """What the arrays lack for one more event (at most one new entity of each kind), or ROOM_OK."""
    c = entities.counters
    if c[IDS_USED] + nkinds > entities.key.shape[0]:
        return NEEDS_IDS
    if table_full(c[LIVE] + nkinds, c[TOMBSTONES], entities.keys.shape[0]):
        return NEEDS_SLOTS
    if c[RING_USED] + kinds.ring_reserve[0] > entities.starts.shape[0]:
        return NEEDS_RING
    if c[LAST_USED] + kinds.last_width.sum() > entities.last.shape[0]:
        return NEEDS_LAST
    if 3 * (c[DISTINCT_USED] + kinds.distinct_width.sum()) > entities.distinct.shape[0]:
        return NEEDS_DISTINCT
    p = pool.counters
    if p[BLOCKS_FREE] + pool.hashes.shape[0] - p[BLOCKS_USED] < RESERVE_BLOCKS:
        return NEEDS_BLOCKS
    if p[REGISTERS_FREE] + pool.registers.shape[0] - p[REGISTERS_USED] < RESERVE_BLOCKS:
        return NEEDS_REGISTERS
    if table_full(ids.counters[LIVE], ids.counters[TOMBSTONES], ids.keys.shape[0]):
        return NEEDS_EVENT_IDS
    if table_full(links.counters[LIVE], links.counters[TOMBSTONES], links.keys.shape[0]):
        return NEEDS_LINKS
    return ROOM_OK


@inline
def _first_sight(ids, key, ts) -> bool:
    """Remember an event id; False if it was remembered already (a duplicate)."""
    if find_slot(ids.keys, key) >= 0:
        return False
    slot = insert_slot(ids.keys, key)
    if ids.keys[slot] == uint64(DELETED):
        ids.counters[TOMBSTONES] -= 1
    ids.keys[slot] = key
    ids.ts[slot] = ts
    ids.counters[LIVE] += 1
    return True


@inline
def _remember_fingerprint(links, row_hashes, is_device, fingerprint_column, device_column, ts, memory) -> None:
    """A device report teaches its device's fingerprint; other events with a device id are given it."""
    device = row_hashes[device_column]
    if device == uint64(ABSENT):
        return
    fingerprint = row_hashes[fingerprint_column]
    slot = find_slot(links.keys, device)
    if fingerprint != uint64(ABSENT):
        if is_device:
            if slot < 0:
                slot = insert_slot(links.keys, device)
                if links.keys[slot] == uint64(DELETED):
                    links.counters[TOMBSTONES] -= 1
                links.keys[slot] = device
                links.ts[slot] = -1
                links.counters[LIVE] += 1
            links.value[slot] = fingerprint
            links.ts[slot] = max(links.ts[slot], ts)
        return
    if slot >= 0 and links.ts[slot] >= ts - memory:
        row_hashes[fingerprint_column] = links.value[slot]


@inline
def _entity_of(entities, kinds, k, key, create) -> int:
    """The entity's id; a new one if `create`; NONE if it has none."""
    e = entities
    slot = find_slot(e.keys, key)
    if slot >= 0:
        return e.slot_entity[slot]
    if not create:
        return NONE
    c = e.counters
    entity = e.free_head[k]
    if entity != NONE:  # a freed entity of the same kind: its chunks are the right size
        e.free_head[k] = e.next_free[entity]
    else:
        entity = c[IDS_USED]
        c[IDS_USED] += 1
        e.kind[entity] = k
        e.last_at[entity] = c[LAST_USED]
        c[LAST_USED] += kinds.last_width[k]
        e.distinct_at[entity] = c[DISTINCT_USED]
        c[DISTINCT_USED] += kinds.distinct_width[k]
    slot = insert_slot(e.keys, key)
    if e.keys[slot] == uint64(DELETED):
        c[TOMBSTONES] -= 1
    e.keys[slot] = key
    e.slot_entity[slot] = entity
    e.key[entity] = key
    c[LIVE] += 1
    stride = kinds.ring_stride[0]
    e.ring_at[entity * stride : (entity + 1) * stride] = NONE
    last = e.last_at[entity]
    e.last[last : last + kinds.last_width[k]] = -1
    d = e.distinct_at[entity]
    e.distinct[3 * d : 3 * (d + kinds.distinct_width[k])] = 0
    return entity


@inline
def _counts(features, f, t, fl, numbers, row_hashes) -> bool:
    if (features.counted_types[f] >> t) & 1 == 0 or (fl & features.predicates[f]) != features.predicates[f]:
        return False
    column = features.hash_column[f]
    if column >= 0 and row_hashes[column] == uint64(ABSENT):
        return False
    number = features.number_column[f]
    return not (number >= 0 and np.isnan(numbers[number]))


@inline
def _empty_value(agg) -> float:
    return np.nan if agg in (SINCE_LAST, MIN, MAX) else 0.0


@inline
def _since_last(last, at, ts, counts, lateness) -> float:
    before = last[at]
    if counts:
        last[at] = max(before, ts)
    newest = last[at]
    q = max(ts, newest - lateness)
    previous = before if counts and q == ts else newest
    return np.nan if previous < 0 else max(0.0, (q - previous) / 1000.0)


@inline
def _ring_slot(e, f, ring, ts, slots, res) -> tuple[int, int, bool]:
    """The bucket of `ts`: its slot in the full ring, where it is held, and whether it was just claimed.

    The slot is -1 if `ts` is too old for the ring (its slot holds a newer
    bucket). A compact ring with no room for one more bucket is made full.
    """
    bucket = ts // res
    slot = bucket % slots
    first, n = ring_span(e.ring_at[ring], slots)
    at = first + slot
    if e.ring_at[ring] <= COMPACT_AT:
        at = -1
        for held in range(first, first + n):
            if e.starts[held] < 0 or e.starts[held] % slots == slot:
                at = held
                break
        if at < 0:
            at = _made_full(e, f, ring, first, slots) + slot
    held = e.starts[at]
    if held > bucket:
        return -1, -1, False
    e.starts[at] = bucket
    return slot, at, held != bucket


@inline
def _made_full(e, f, ring, first, slots) -> int:
    """The compact ring at `first` moved to a full ring of feature `f`; where that is."""
    full = take_ring(e, f, slots)
    for at in range(first, first + COMPACT):
        bucket = e.starts[at]
        e.starts[full + bucket % slots] = bucket
        e.values[full + bucket % slots] = e.values[at]
    free_ring(e, f, ring)
    e.ring_at[ring] = full
    return full


@inline
def _bounds(starts, first, n, ts, res, window_buckets, lateness) -> tuple[int, int]:
    """The oldest and newest bucket of the window read at `ts` (or at the ring's newest minus the lateness)."""
    newest_bucket = -1
    for s in range(first, first + n):
        if starts[s] > newest_bucket:
            newest_bucket = starts[s]
    newest_ts = -1 if newest_bucket < 0 else (newest_bucket + 1) * res - 1
    q = max(ts, newest_ts - lateness)
    newest = q // res
    return max(newest - window_buckets + 1, 0), newest


@inline
def _add(e, pool, features, caps, f, entity, ring, ts, numbers, row_hashes) -> None:
    slots = features.slots[f]
    slot, at, fresh = _ring_slot(e, f, ring, ts, slots, features.resolution[f])
    if slot < 0:
        return
    agg = features.aggregate[f]
    if agg in (COUNT, SUM):
        if fresh:
            e.values[at] = 0.0
        e.values[at] += 1.0 if agg == COUNT else numbers[features.number_column[f]]
    elif agg in (MIN, MAX):
        v = numbers[features.number_column[f]]
        if fresh or (v > e.values[at] if agg == MAX else v < e.values[at]):
            e.values[at] = v
    else:
        d = e.distinct_at[entity] + features.distinct_offset[f]
        _distinct_add(e, pool, d, caps[f], slot, fresh, slots, row_hashes[features.hash_column[f]])


@kernel
def _distinct_add(e, pool, d, cap, slot, fresh, slots, value) -> None:
    """Record `value` in ring slot `slot`: exact in the entity, then in a pool block, then HyperLogLog past `cap`."""
    state = e.distinct[3 * d : 3 * d + 3]
    if state[MODE] == MODE_HLL:
        block = state[BLOCK]
        if fresh:
            pool.registers[block, slot, :] = 0
        hll_update(pool.registers[block], slot, value)
        return
    bit = uint64(1) << uint64(slot)
    if state[MODE] == MODE_INLINE:
        hashes, masks = e.hashes[INLINE * d : INLINE * (d + 1)], e.masks[INLINE * d : INLINE * (d + 1)]
    else:
        hashes, masks = pool.hashes[state[BLOCK]], pool.masks[state[BLOCK]]
    used = state[USED]
    if fresh:
        used = _clear_slot(hashes, masks, used, ~bit)
    for v in range(used):
        if hashes[v] == value:
            masks[v] |= bit
            state[USED] = used
            return
    room = min(cap, INLINE) if state[MODE] == MODE_INLINE else cap
    if used < room:
        hashes[used] = value
        masks[used] = bit
        state[USED] = used + 1
        return
    if state[MODE] == MODE_INLINE and cap > INLINE:  # to a pool block
        block = _take(pool.free, pool.counters, BLOCKS_USED, BLOCKS_FREE)
        for v in range(used):
            pool.hashes[block, v] = hashes[v]
            pool.masks[block, v] = masks[v]
        pool.hashes[block, used] = value
        pool.masks[block, used] = bit
        state[USED] = used + 1
        state[MODE] = MODE_POOL
        state[BLOCK] = block
        return
    # past the cap: HyperLogLog registers per ring slot, seeded with the exact values
    registers = _take(pool.registers_free, pool.counters, REGISTERS_USED, REGISTERS_FREE)
    pool.registers[registers, :, :] = 0
    for v in range(used):
        for s in range(slots):
            if masks[v] & (uint64(1) << uint64(s)):
                hll_update(pool.registers[registers], s, hashes[v])
    hll_update(pool.registers[registers], slot, value)
    if state[MODE] == MODE_POOL:
        _give_back(pool.free, pool.counters, BLOCKS_FREE, state[BLOCK])
    state[USED] = 0
    state[MODE] = MODE_HLL
    state[BLOCK] = registers


@inline
def _take(free, counters, used_index, free_index) -> int:
    if counters[free_index] > 0:
        counters[free_index] -= 1
        return free[counters[free_index]]
    block = counters[used_index]
    counters[used_index] += 1
    return block


@inline
def _give_back(free, counters, free_index, block) -> None:
    free[counters[free_index]] = block
    counters[free_index] += 1


@inline
def _clear_slot(hashes, masks, used, keep) -> int:
    kept = 0
    for v in range(used):
        m = masks[v] & keep
        if m:
            hashes[kept] = hashes[v]
            masks[kept] = m
            kept += 1
    return kept


@inline
def _read(e, pool, features, f, entity, first, n, oldest, newest, scratch) -> float:
    """The window [oldest, newest] of the ring whose `n` slots begin at `first`."""
    agg = features.aggregate[f]
    starts = e.starts
    if agg in (COUNT, SUM):
        total = 0.0
        for s in range(first, first + n):
            if oldest <= starts[s] <= newest:
                total += e.values[s]
        return total
    if agg in (MIN, MAX):
        found, best = False, 0.0
        for s in range(first, first + n):
            if oldest <= starts[s] <= newest:
                v = e.values[s]
                if not found or (v > best) == (agg == MAX):
                    best, found = v, True
        return best if found else np.nan
    slots = features.slots[f]
    window = uint64(0)
    for s in range(first, first + n):
        if oldest <= starts[s] <= newest:
            window |= uint64(1) << uint64(starts[s] % slots)
    d = e.distinct_at[entity] + features.distinct_offset[f]
    mode, block, used = e.distinct[3 * d + MODE], e.distinct[3 * d + BLOCK], e.distinct[3 * d + USED]
    if mode == MODE_HLL:
        return _hll_count(pool.registers[block], window, slots, scratch.registers)
    masks = e.masks[INLINE * d : INLINE * (d + 1)] if mode == MODE_INLINE else pool.masks[block]
    seen = 0
    for v in range(used):
        if masks[v] & window:
            seen += 1
    return float(seen)


@kernel
def _hll_count(registers, window, slots, merged) -> float:
    """The estimate over the ring slots in `window` (a bit mask): their registers merged by max."""
    merged[:] = 0
    for s in range(slots):
        if window & (uint64(1) << uint64(s)):
            for j in range(HLL_REGISTERS):
                if registers[s, j] > merged[j]:
                    merged[j] = registers[s, j]
    return hll_estimate(merged)
