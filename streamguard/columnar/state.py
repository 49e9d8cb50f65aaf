"""A worker's feature state, in memory: the tables of every entity kind, the pool, event ids, fingerprints.

`count` runs the batch kernel, growing whatever it runs short of; `expire`
frees a bounded amount of what is past use. The arrays are the state: what a
transaction commits is their changed rows (`take_changed`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from streamguard.columnar import count as kernel
from streamguard.columnar import pack
from streamguard.columnar.layout import TYPE_CODE, Layout, ReadPlan
from streamguard.columnar.tables import (
    INLINE,
    LIVE,
    Entities,
    Memo,
    Pool,
    expire_entities,
    expire_memo,
    grown_arena,
    grown_ids,
    grown_memo,
    grown_pool,
    new_entities,
    new_memo,
    new_pool,
    rehashed,
    slots_for,
    take_dirty,
)

FINGERPRINT_MEMORY_MS = 24 * 3_600_000  # a device's fingerprint is remembered this long after its last report
EXPIRE_ROWS = 2_000  # the most entities (or memo slots) an `expire` call looks at
# What a call looks at per event of its batch (a poll of live traffic may bring 20): well over the
# entities an event can create (one per kind it has, under 10), so that in small batches the
# sweep comes round faster than entities are made.
EXPIRE_ROWS_PER_EVENT = 16
EXPIRE_MIN_ROWS = 256
# Entities the arrays have room for before they grow (a copy), each taking as much as the widest kind
# does. Memory is committed as entities come: this reserves address space (some GiB), not memory.
RESERVED_ENTITIES = 1 << 21
RING_SLOTS_PER_ENTITY = 32  # reserved on average: most entities have a ring or two


@dataclass
class CountResult:
    values: np.ndarray  # float64[events, features]: NaN where not read
    duplicate: np.ndarray  # bool[events]
    counted: np.ndarray  # int64[events]: bit per hash column counted here (`count_batch`)
    remote: np.ndarray  # int64[events]: bit per hash column left to the shards of other workers
    grown: int = 0  # how many times a table had to grow during the call


@dataclass
class ColumnarState:
    layout: Layout
    dedup_retention_ms: int
    reserved: int = RESERVED_ENTITIES  # entities the arrays have room for before they grow
    entities: Entities = field(init=False)
    pool: Pool = field(init=False)
    ids: Memo = field(default_factory=lambda: new_memo(1 << 14))
    links: Memo = field(default_factory=lambda: new_memo(1 << 12))
    newest_ts: int = 0  # the newest event time counted: what expiry measures against
    cursor: int = 0  # where the next `expire` goes on from, in entities; then ids, links
    id_cursor: int = 0
    link_cursor: int = 0
    owned: np.ndarray = field(default_factory=lambda: np.ones(1, np.bool_))  # per shard: its entities are here

    def __post_init__(self) -> None:
        layout = self.layout
        kinds = layout.kind_arrays
        ids = self.reserved
        self.entities = new_entities(
            ids, len(layout.kinds), len(layout.specs), int(kinds.ring_stride[0]), ids * RING_SLOTS_PER_ENTITY,
            ids * int(max(1, kinds.last_width.max())), ids * int(max(1, kinds.distinct_width.max())),
        )  # fmt: skip
        block = max([s.distinct_cap for s in layout.specs if s.aggregate == "distinct"] + [1])
        self.pool = new_pool(128, block, 128)
        self._caps = np.array([s.distinct_cap for s in layout.specs], np.int64)
        self._scratch = kernel.new_scratch()
        self._read_everything = layout.plan(None)

    def count(
        self,
        order: np.ndarray,
        ts: np.ndarray,
        etype: np.ndarray,
        flags: np.ndarray,
        numbers: np.ndarray,
        hashes: np.ndarray,
        plan: ReadPlan | None = None,
        want: np.ndarray | None = None,
        decide: np.ndarray | None = None,
    ) -> CountResult:
        """Count the events (`order`: event time) in their windows; their values, and which were duplicates.

        `hashes` holds a column per `layout.hash_columns`, then the event ids' hashes;
        the resolved fingerprints are written into it. `plan`: what is read (default: every feature).
        `want`: per event, a bit per hash column to count here where its shard is `owned`
        (default: all); `decide`: the events de-duplicated here (default: all).
        """
        layout, n = self.layout, ts.shape[0]
        plan = plan or self._read_everything
        want = np.full(n, -1, np.int64) if want is None else want
        decide = np.ones(n, np.bool_) if decide is None else decide
        result = CountResult(np.full((n, len(layout.specs)), np.nan), np.zeros(n, np.bool_), np.zeros(n, np.int64),
                             np.zeros(n, np.int64))  # fmt: skip
        room = np.zeros(1, np.int64)
        position = 0
        while True:
            position = kernel.count_batch(
                order, position, ts, etype, flags, numbers, hashes, want, decide,
                layout.arrays, layout.kind_arrays, self._caps, plan.read_types, plan.by_type, plan.by_type_count,
                self.entities, self.pool, self.ids, self.links, self.owned,
                TYPE_CODE["device"], layout.fingerprint_column, layout.device_column, layout.lateness_ms,
                FINGERPRINT_MEMORY_MS, result.values, result.duplicate, result.counted, result.remote, room,
                self._scratch,
            )  # fmt: skip
            if position >= n:
                break
            self.make_room(int(room[0]))
            result.grown += 1
        if n:
            self.newest_ts = max(self.newest_ts, int(ts.max()))
        return result

    def make_room(self, short: int) -> None:
        """Grow what a kernel said it was short of (`count.NEEDS_...`)."""
        e = self.entities
        if short == kernel.NEEDS_IDS:
            self.entities = grown_ids(e)
        elif short == kernel.NEEDS_SLOTS:  # tombstones dropped, and room for twice the live entities
            self.entities = rehashed(e, max(e.keys.shape[0], slots_for(2 * int(e.counters[LIVE]) + 128)))
        elif short == kernel.NEEDS_RING:
            self.entities = grown_arena(e, "ring")
        elif short == kernel.NEEDS_LAST:
            self.entities = grown_arena(e, "last")
        elif short == kernel.NEEDS_DISTINCT:
            self.entities = grown_arena(e, "distinct")
        elif short in (kernel.NEEDS_BLOCKS, kernel.NEEDS_REGISTERS):
            self.pool = grown_pool(self.pool, blocks=short == kernel.NEEDS_BLOCKS)
        elif short == kernel.NEEDS_EVENT_IDS:
            self.ids = grown_memo(self.ids)
        elif short == kernel.NEEDS_LINKS:
            self.links = grown_memo(self.links)
        else:
            raise AssertionError(f"the count kernel stopped for want of {short}")

    def expire(self, events: int | None = None) -> np.ndarray:
        """Free a bounded number of entities, event ids and fingerprints past use; the freed entities' keys.

        `events`: how many the batch just counted had, which sizes the sweep
        (a sweep's cost is per row looked at, so a small batch looks at few).
        """
        rows = EXPIRE_ROWS if events is None else min(EXPIRE_ROWS, max(EXPIRE_MIN_ROWS, EXPIRE_ROWS_PER_EVENT * events))
        watermark, kinds = self.newest_ts, self.layout.kind_arrays
        gone = np.empty(rows, np.uint64)
        self.cursor, n = expire_entities(
            self.entities, self.pool, self.layout.arrays, kinds.features, kinds.first, int(kinds.ring_stride[0]),
            self.cursor, rows, watermark, gone,
        )  # fmt: skip
        self.id_cursor = expire_memo(self.ids, self.id_cursor, rows, watermark - self.dedup_retention_ms)
        self.link_cursor = expire_memo(self.links, self.link_cursor, rows, watermark - FINGERPRINT_MEMORY_MS)
        return gone[:n]

    def take_changed(self) -> np.ndarray:
        """The ids of the entities changed since the last call."""
        out = np.empty(self.entities.key.shape[0], np.int64)
        return out[: take_dirty(self.entities, out)]

    def entity_counts(self) -> dict[str, int]:
        """Live entities per kind."""
        e = self.entities
        used = int(e.counters[2])
        live = e.key[:used] > 1
        kinds = np.bincount(e.kind[:used][live], minlength=len(self.layout.kinds))
        return dict(zip(self.layout.kinds, kinds.tolist(), strict=True))

    @property
    def nbytes(self) -> int:
        """The bytes of state in use (the arrays reserve more address space than that: see `lazy_zeros`)."""
        e, c, p = self.entities, self.entities.counters, self.pool
        stride = int(self.layout.kind_arrays.ring_stride[0])
        per_id = sum(a.itemsize for a in (e.key, e.kind, e.last_at, e.distinct_at, e.next_free, e.dirty)) + 8 * stride
        arenas = 16 * c[3] + 8 * c[4] + (3 * 8 + 2 * 8 * INLINE) * c[5]
        pool = p.hashes[0].nbytes * 2 * p.counters[0] + p.registers[0].nbytes * p.counters[2]
        tables = e.keys.nbytes + e.slot_entity.nbytes + sum(a.nbytes for a in (*self.ids[:3], *self.links[:3]))
        return int(per_id * c[2] + arenas + pool + tables)


def packed(state: ColumnarState, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The entities `ids` packed (see `pack`): the words, and where each entity's end."""
    out = np.empty(max(1024, 64 * ids.shape[0]), np.int64)
    ends = np.empty(ids.shape[0], np.int64)
    while True:
        n = pack.pack_entities(state.entities, state.pool, state.layout.arrays, state.layout.kind_arrays, ids, out,
                               ends)  # fmt: skip
        if n >= 0:
            return out[:n], ends
        out = np.empty(2 * out.shape[0], np.int64)


def load(state: ColumnarState, words: np.ndarray) -> None:
    """Make (or replace) the entities packed in `words`."""
    position, room = 0, np.zeros(1, np.int64)
    while position < words.shape[0]:
        position = pack.unpack_entities(state.entities, state.pool, state.ids, state.links, state.layout.arrays,
                                        state.layout.kind_arrays, words, position, words.shape[0], room)  # fmt: skip
        if position < words.shape[0]:
            state.make_room(int(room[0]))
