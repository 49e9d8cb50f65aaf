"""Entities to bytes and back: what a changelog record, a snapshot or an abort's reload carries.

An entity packs to int64 words: its key and kind, its rings that were made
(the feature, then each bucket it holds: its slot in the full ring, the bucket, its value), its
since_last times, and per
distinct feature its mode and exact values with their slot masks (from the
entity's chunk or its pool block), or its HyperLogLog registers for the ring
slots that hold a bucket. Young and sparse entities (most of them) pack to a
few dozen words.
"""

from __future__ import annotations

import numpy as np
from numba import uint64

from streamguard.columnar.count import ROOM_OK, _entity_of, _short_of_room, _take
from streamguard.columnar.jit import inline, kernel
from streamguard.columnar.tables import (
    BLOCK,
    BLOCKS_FREE,
    BLOCKS_USED,
    COMPACT_AT,
    INLINE,
    MODE,
    MODE_HLL,
    MODE_INLINE,
    MODE_POOL,
    NONE,
    REGISTERS_FREE,
    REGISTERS_USED,
    USED,
    find_slot,
    free_ring,
    new_ring,
    release_block,
    ring_span,
)
from streamguard.kernels.window import HLL_REGISTERS

HLL_WORDS = HLL_REGISTERS // 8


@kernel
def pack_entities(entities, pool, features, kinds, ids, out, ends) -> int:
    """Pack the entities `ids` into `out` (`ends[j]`: where the j-th ends); the words written, -1 if `out` is short."""
    e = entities
    bits = e.values.view(np.int64)
    w = 0
    for j in range(ids.shape[0]):
        entity = ids[j]
        k = e.kind[entity]
        if w + _words_at_most(e, features, kinds, k, entity) > out.shape[0]:
            return -1
        out[w] = np.int64(e.key[entity])
        out[w + 1] = k
        w += 2
        stride = kinds.ring_stride[0]
        rings = w  # how many rings follow: counted as they are written
        out[rings] = 0
        w += 1
        for q in range(kinds.first[k], kinds.first[k + 1]):
            f = kinds.features[q]
            if features.ring_index[f] < 0 or e.ring_at[entity * stride + features.ring_index[f]] == NONE:
                continue
            slots = features.slots[f]
            first, n = ring_span(e.ring_at[entity * stride + features.ring_index[f]], slots)
            out[w] = f
            head = w + 1
            w += 2
            for at in range(first, first + n):
                if e.starts[at] >= 0:
                    out[w] = e.starts[at] % slots
                    out[w + 1] = e.starts[at]
                    out[w + 2] = bits[at]
                    w += 3
            out[head] = (w - head - 1) // 3
            out[rings] += 1
        last = e.last_at[entity]
        for s in range(kinds.last_width[k]):
            out[w] = e.last[last + s]
            w += 1
        for q in range(kinds.first[k], kinds.first[k + 1]):
            f = kinds.features[q]
            if features.distinct_offset[f] >= 0:
                w = _pack_distinct(e, pool, features, kinds, f, entity, out, w)
        ends[j] = w
    return w


@kernel
def _words_at_most(e, features, kinds, k, entity) -> int:
    n = 3 + kinds.last_width[k]
    for q in range(kinds.first[k], kinds.first[k + 1]):
        f = kinds.features[q]
        if features.ring_index[f] >= 0:
            n += 2 + 3 * features.slots[f]
        if features.distinct_offset[f] >= 0:
            d = e.distinct_at[entity] + features.distinct_offset[f]
            n += 3 + (
                features.slots[f] * (1 + HLL_WORDS)
                if e.distinct[3 * d + MODE] == MODE_HLL
                else 2 * e.distinct[3 * d + USED]
            )
    return n


@kernel
def _pack_distinct(e, pool, features, kinds, f, entity, out, w) -> int:
    d = e.distinct_at[entity] + features.distinct_offset[f]
    mode, used, block = e.distinct[3 * d + MODE], e.distinct[3 * d + USED], e.distinct[3 * d + BLOCK]
    out[w] = mode
    out[w + 1] = used
    w += 2
    if mode == MODE_HLL:
        slots = features.slots[f]
        first, n = ring_span(e.ring_at[entity * kinds.ring_stride[0] + features.ring_index[f]], slots)
        head = w
        w += 1
        for at in range(first, first + n):
            if e.starts[at] >= 0:
                s = e.starts[at] % slots
                out[w] = s
                words = pool.registers[block, s].view(np.int64)
                for r in range(HLL_WORDS):
                    out[w + 1 + r] = words[r]
                w += 1 + HLL_WORDS
        out[head] = (w - head - 1) // (1 + HLL_WORDS)
        return w
    for v in range(used):
        if mode == MODE_INLINE:
            out[w] = np.int64(e.hashes[INLINE * d + v])
            out[w + 1] = np.int64(e.masks[INLINE * d + v])
        else:
            out[w] = np.int64(pool.hashes[block, v])
            out[w + 1] = np.int64(pool.masks[block, v])
        w += 2
    return w


@kernel
def unpack_entities(entities, pool, ids, links, features, kinds, words, start, end, room) -> int:
    """Make (or overwrite) the entities packed in `words[start:end]`; where it stopped (before one it lacks room for).

    Then `room[0]` says what is short: the caller grows it (`ColumnarState.make_room`) and calls again from there.
    """
    bits = entities.values.view(np.int64)
    w = start
    while w < end:
        key = uint64(words[w])
        k = words[w + 1]
        short = _short_of_room(entities, kinds, pool, ids, links, 1)
        if short != ROOM_OK:
            room[0] = short
            return w
        slot = find_slot(entities.keys, key)
        entity = entities.slot_entity[slot] if slot >= 0 else _entity_of(entities, kinds, k, key, True)
        if slot >= 0:
            _clear_entity(entities, pool, features, kinds, k, entity)
        w += 2
        stride = kinds.ring_stride[0]
        rings = words[w]
        w += 1
        for _ in range(rings):
            f, held = words[w], words[w + 1]
            w += 2
            at = new_ring(entities, f, features.slots[f], held)
            entities.ring_at[entity * stride + features.ring_index[f]] = at
            first, _ = ring_span(at, features.slots[f])
            compact = (
                at <= COMPACT_AT
            )  # a compact ring holds its buckets one after the other, a full one in their slots
            for h in range(held):
                to = first + (h if compact else words[w])
                entities.starts[to] = words[w + 1]
                bits[to] = words[w + 2]
                w += 3
        last = entities.last_at[entity]
        for s in range(kinds.last_width[k]):
            entities.last[last + s] = words[w]
            w += 1
        for q in range(kinds.first[k], kinds.first[k + 1]):
            f = kinds.features[q]
            if features.distinct_offset[f] >= 0:
                w = _unpack_distinct(entities, pool, features, f, entity, words, w)
    return w


@kernel
def _clear_entity(e, pool, features, kinds, k, entity) -> None:
    """Empty an entity's windows (what is packed replaces them), giving its rings and pool blocks back."""
    for q in range(kinds.first[k], kinds.first[k + 1]):
        f = kinds.features[q]
        if features.ring_index[f] >= 0:
            free_ring(e, f, entity * kinds.ring_stride[0] + features.ring_index[f])
        d = features.distinct_offset[f]
        if d >= 0:
            release_block(pool, e.distinct, 3 * (e.distinct_at[entity] + d))
    last = e.last_at[entity]
    e.last[last : last + kinds.last_width[k]] = -1
    d = e.distinct_at[entity]
    e.distinct[3 * d : 3 * (d + kinds.distinct_width[k])] = 0


@kernel
def _unpack_distinct(e, pool, features, f, entity, words, w) -> int:
    d = e.distinct_at[entity] + features.distinct_offset[f]
    mode, used = words[w], words[w + 1]
    w += 2
    if mode == MODE_HLL:
        block = _take(pool.registers_free, pool.counters, REGISTERS_USED, REGISTERS_FREE)
        pool.registers[block, :, :] = 0
        held = words[w]
        w += 1
        for _ in range(held):
            target = pool.registers[block, words[w]].view(np.int64)
            for r in range(HLL_WORDS):
                target[r] = words[w + 1 + r]
            w += 1 + HLL_WORDS
        e.distinct[3 * d + BLOCK] = block
    elif mode == MODE_POOL:
        block = _take(pool.free, pool.counters, BLOCKS_USED, BLOCKS_FREE)
        for v in range(used):
            pool.hashes[block, v] = uint64(words[w])
            pool.masks[block, v] = uint64(words[w + 1])
            w += 2
        e.distinct[3 * d + BLOCK] = block
    else:
        for v in range(used):
            e.hashes[INLINE * d + v] = uint64(words[w])
            e.masks[INLINE * d + v] = uint64(words[w + 1])
            w += 2
    e.distinct[3 * d + MODE] = mode
    e.distinct[3 * d + USED] = used
    return w


@kernel
def newest_entities(features, kinds, words, word_ends, expired, expired_ends, seen, out, gone):
    """Of records in changelog order, each entity's newest copy and the keys expired after their newest copy.

    Record r holds the packed entities `words[word_ends[r-1]:word_ends[r]]`
    and the expired keys `expired[expired_ends[r-1]:expired_ends[r]]` (a
    record's expiries come before its entities). Going from the newest
    record back, an entity (or an expiry) whose key was met already is left
    out: the newer record replaces it. Writes the copies kept into `out` and
    the expiries kept into `gone`; returns how many of each. `seen`: zeros,
    a power of two of slots, over twice the keys of all the records.
    """
    n = m = 0
    for r in range(word_ends.shape[0] - 1, -1, -1):
        w = word_ends[r - 1] if r > 0 else 0
        while w < word_ends[r]:
            after = _skip_entity(features, kinds, words, w)
            if _first_sight(seen, uint64(words[w])):
                for i in range(w, after):
                    out[n] = words[i]
                    n += 1
            w = after
        for j in range(expired_ends[r - 1] if r > 0 else 0, expired_ends[r]):
            if _first_sight(seen, expired[j]):
                gone[m] = expired[j]
                m += 1
    return n, m


@inline
def _first_sight(seen, key) -> bool:
    """Whether `key` is new to the set `seen` (open addressing, 0 empty): it is in it now."""
    mask = seen.shape[0] - 1
    slot = np.int64(key & uint64(mask))
    while seen[slot] != uint64(0):
        if seen[slot] == key:
            return False
        slot = (slot + 1) & mask
    seen[slot] = key
    return True


@inline
def _skip_entity(features, kinds, words, w) -> int:
    """Where the entity packed at `words[w]` ends: `unpack_entities`' walk, reading nothing into state."""
    k = words[w + 1]
    rings = words[w + 2]
    w += 3
    for _ in range(rings):
        w += 2 + 3 * words[w + 1]
    w += kinds.last_width[k]
    for q in range(kinds.first[k], kinds.first[k + 1]):
        f = kinds.features[q]
        if features.distinct_offset[f] >= 0:
            mode, used = words[w], words[w + 1]
            w += 2
            if mode == MODE_HLL:
                w += 1 + words[w] * (1 + HLL_WORDS)
            else:
                w += 2 * used
    return w


def shard_of_keys(keys: np.ndarray, shards: int) -> np.ndarray:
    """The shard each entity key belongs to."""
    return ((keys >> np.uint64(32)) % np.uint64(shards)).astype(np.int64)


__all__ = ["pack_entities", "unpack_entities", "newest_entities", "shard_of_keys", "NONE"]
