"""Features computed where an entity's state lives: update its windows, read its values.

`EntityFeatures.apply` is what the owner of an entity's partition runs for
each event that has that entity. It knows nothing of Kafka: the caller gives
it the store of the partition and the event; entities arrive pseudonymised.
"""

from __future__ import annotations

from collections import OrderedDict, defaultdict
from collections.abc import Set
from typing import Final

import msgspec

from streamguard.codec import event_type
from streamguard.events import AnyEvent
from streamguard.features.compiled import CompiledFeature, field_value
from streamguard.features.spec import FeatureSpec
from streamguard.features.windows import Window
from streamguard.privacy import Pseudonymizer
from streamguard.state import keys
from streamguard.state.store import PartitionStore


def entity_id(spec: FeatureSpec) -> str:
    """What the feature is counted per; phone blocks of different lengths are different entities."""
    return f"phone_block/{spec.phone_block_digits}" if spec.entity == "phone_block" else spec.entity


class EntityFeatures:
    def __init__(self, features: list[FeatureSpec], lateness_ms: int) -> None:
        self._lateness_ms = lateness_ms
        self.by_entity: dict[str, list[CompiledFeature]] = defaultdict(list)
        self._by_state_key: dict[bytes, CompiledFeature] = {}
        self._plans: dict[tuple[str, str, Set[str] | None], list[tuple[CompiledFeature, bool, bool]]] = {}
        for spec in features:
            compiled = CompiledFeature.of(spec, lateness_ms)
            self.by_entity[entity_id(spec)].append(compiled)
            self._by_state_key[compiled.state_key] = compiled

    def entities_of(self, event: AnyEvent, fingerprint: str | None, pseudo: Pseudonymizer) -> dict[str, bytes]:
        """Entity id -> keyed hash of its value, for every entity of `event` some feature is counted per."""
        found = {}
        for eid, compiled in self.by_entity.items():
            spec = compiled[0].spec
            if spec.entity == "global":
                value = "global"
            else:  # entity names are event fields, or derived ones (ip_network, phone_block, fingerprint)
                value = field_value(event, spec.entity, fingerprint, spec.phone_block_digits)
            if value is not None:
                found[eid] = pseudo.digest(eid, str(value))
        return found

    def apply(
        self,
        store: PartitionStore,
        eid: str,
        digest: bytes,
        event: AnyEvent,
        fingerprint: str | None,
        windows: WindowCache,
        read: Set[str] | None = None,
    ) -> dict[str, float]:
        """Count `event` in the entity's windows it belongs to; the values at `event.ts` of the features in `read`.

        `read` None reads every feature of the entity. Windows that neither
        count this type of event nor are read are not touched at all.
        An event later than the allowed lateness is not counted, and is judged
        on the oldest window kept whole (at the newest time minus the lateness):
        the ring no longer holds its own.
        """
        kind = event_type(event)
        plan = self._plan(eid, kind, read)
        if not plan:
            return {}
        key = keys.entity_windows(digest)
        entity = windows.get(store, key)
        values = {}
        for compiled, counts, wanted in plan:
            window = entity.window(compiled)
            if counts and compiled.updates_on(event, kind, fingerprint):
                window.add(event.ts, compiled.reads(event, fingerprint))
                entity.changed[compiled.state_key] = None
            if wanted:
                values[compiled.spec.name] = window.value(event.ts, self._lateness_ms)
        if entity.changed:
            windows.changed(store, key)
        return values

    def _plan(self, eid: str, kind: str, read: Set[str] | None) -> list[tuple[CompiledFeature, bool, bool]]:
        """The entity's features an event of `kind` touches: each with whether it may count it, and is read."""
        plan = self._plans.get((eid, kind, read))
        if plan is None:
            plan = []
            for compiled in self.by_entity[eid]:
                counts, wanted = kind in compiled.spec.events, read is None or compiled.spec.name in read
                if counts or wanted:
                    plan.append((compiled, counts, wanted))
            self._plans[(eid, kind, read)] = plan
        return plan

    def sweep(self, store: PartitionStore, windows: WindowCache, after: bytes, watermark_ts: int, limit: int) -> bytes:
        """Delete up to `limit` entities' windows past use, scanning from the key `after`; where to go on from.

        A window is past use when its newest data is further behind the newest
        event of its shard (`watermark_ts`) than its span plus the lateness;
        an entity's record goes when all its windows are past use. Windows of
        features no longer declared are dropped from the records, and records
        that cannot be read (an older layout) deleted; such records are
        dropped from `windows` too. Call it after `windows.flush()`. The
        returned cursor wraps to the start once the end is reached.
        """
        scanned, resume = store.items_from(after, keys.FEATURE_END, limit)  # in use if written, not applied yet
        for key, raw in scanned:
            try:
                parts = EntityWindows.parts_of(raw)
            except msgspec.DecodeError:
                parts = {}
            declared = {sk: part for sk, part in parts.items() if sk in self._by_state_key}
            if all(self._past_use(sk, part, watermark_ts) for sk, part in declared.items()):
                store.delete(key)
                windows.forget(store, key)
            elif len(declared) < len(parts):
                store.put(key, EntityWindows.encode(declared))
                windows.forget(store, key)
        return keys.FEATURE if resume is None else resume

    def _past_use(self, state_key: bytes, part: bytes, watermark_ts: int) -> bool:
        compiled = self._by_state_key[state_key]
        return compiled.newest_ts(part) < watermark_ts - compiled.lifetime_ms


_parts_encoder: Final = msgspec.msgpack.Encoder()
_parts_decoder: Final = msgspec.msgpack.Decoder(dict[bytes, bytes])


class EntityWindows(msgspec.Struct, gc=False):
    """One entity's windows, one per feature with state, stored as one record: a RocksDB read per entity.

    `parts` holds each window's bytes as last written; a window is decoded the
    first time it is needed, and re-encoded only if it `changed`.
    """

    parts: dict[bytes, bytes]  # state key -> the window's bytes
    decoded: dict[bytes, Window] = {}
    # The state keys of the windows changed since the last `to_bytes`. A dict, not a set: a set is
    # always tracked by the garbage collector, and a worker keeps tens of thousands of entities.
    changed: dict[bytes, None] = {}

    @classmethod
    def of(cls, raw: bytes | None) -> EntityWindows:
        return cls({} if raw is None else _parts_decoder.decode(raw))

    @staticmethod
    def parts_of(raw: bytes) -> dict[bytes, bytes]:
        return _parts_decoder.decode(raw)

    @staticmethod
    def encode(parts: dict[bytes, bytes]) -> bytes:
        return _parts_encoder.encode(parts)

    def window(self, compiled: CompiledFeature) -> Window:
        window = self.decoded.get(compiled.state_key)
        if window is None:
            window = self.decoded[compiled.state_key] = compiled.window(self.parts.get(compiled.state_key))
        return window

    def to_bytes(self) -> bytes:
        """The record, with the changed windows re-encoded (and no longer `changed`)."""
        for state_key in self.changed:
            self.parts[state_key] = self.decoded[state_key].to_bytes()
        self.changed.clear()
        return _parts_encoder.encode(self.parts)


class WindowCache:
    """Entities' windows, kept between transactions; the changed ones are written back once per transaction.

    An entity's record is read from the store the first time it is needed,
    and kept (up to `capacity` entities, the least recently written first
    out) so that an active entity costs neither a RocksDB read nor a decode
    per event. What it holds is the committed state plus the open
    transaction's changes: after an abort, a restore or a change of
    partitions it must be `clear`ed.
    """

    def __init__(self, capacity: int = 50_000) -> None:
        self._capacity = capacity
        # Ordered by last write. An OrderedDict: a plain dict emptied from the front keeps the holes
        # until it resizes, and finding the oldest entries meant skipping all of them (6% of a flood).
        self._entities: OrderedDict[tuple[int, bytes], EntityWindows] = OrderedDict()
        self._changed: dict[tuple[int, bytes], tuple[PartitionStore, bytes]] = {}

    def get(self, store: PartitionStore, key: bytes) -> EntityWindows:
        slot = (id(store), key)
        entity = self._entities.get(slot)
        if entity is None:
            entity = self._entities[slot] = EntityWindows.of(store.get(key))
        return entity

    def changed(self, store: PartitionStore, key: bytes) -> None:
        self._changed[(id(store), key)] = (store, key)

    def forget(self, store: PartitionStore, key: bytes) -> None:
        """Drop an entity whose record the store deleted or rewrote."""
        self._entities.pop((id(store), key), None)

    def flush(self) -> None:
        """Write the changed entities into their stores' pending writes; keep at most `capacity` entities."""
        entities = self._entities
        for slot, (store, key) in self._changed.items():
            store.put(key, entities[slot].to_bytes())
            entities.move_to_end(slot)  # to the back of the eviction order
        self._changed.clear()
        while len(entities) > self._capacity:
            entities.popitem(last=False)

    def clear(self) -> None:
        self._entities.clear()
        self._changed.clear()
