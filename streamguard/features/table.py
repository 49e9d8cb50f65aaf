"""Features computed where an entity's state lives: update its windows, read its values.

`EntityFeatures.apply` is what the owner of an entity's partition runs for
each event that has that entity. It knows nothing of Kafka: the caller gives
it the store of the partition and the event; entities arrive pseudonymised.
"""

from __future__ import annotations

from collections import defaultdict

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
    ) -> dict[str, float]:
        """Count `event` in the entity's windows it belongs to; every feature of the entity's value at `event.ts`.

        An event later than the allowed lateness is not counted, and is judged
        on the oldest window kept whole (at the newest time minus the lateness):
        the ring no longer holds its own.
        """
        kind = event_type(event)
        values = {}
        for compiled in self.by_entity[eid]:
            key = keys.feature(compiled.state_key, digest)
            window = windows.get(store, key, compiled)
            if compiled.updates_on(event, kind, fingerprint):
                window.add(event.ts, compiled.reads(event, fingerprint))
                windows.changed(store, key)
            values[compiled.spec.name] = window.value(max(event.ts, window.newest_ts() - self._lateness_ms))
        return values

    def sweep(self, store: PartitionStore, after: bytes, watermark_ts: int, limit: int) -> bytes:
        """Delete up to `limit` windows past use, scanning from the key `after`; where to go on from.

        A window is past use when its newest data is further behind the newest
        event of its shard (`watermark_ts`) than its span plus the lateness;
        windows of features no longer declared are deleted too. The returned
        cursor wraps to the start once the end is reached.
        """
        scanned = store.items_from(after, keys.FEATURE_END, limit)
        for key, raw in scanned:
            compiled = self._by_state_key.get(keys.state_key_of_feature(key))
            if compiled is None or compiled.window(raw).newest_ts() < watermark_ts - compiled.lifetime_ms:
                store.delete(key)
        if len(scanned) < limit:
            return keys.FEATURE
        return scanned[-1][0] + b"\x00"


class WindowCache:
    """The windows a transaction touched: read and decoded once, written back once (`flush`)."""

    def __init__(self) -> None:
        self._windows: dict[tuple[int, bytes], Window] = {}
        self._changed: dict[tuple[int, bytes], tuple[PartitionStore, bytes]] = {}

    def get(self, store: PartitionStore, key: bytes, compiled: CompiledFeature) -> Window:
        slot = (id(store), key)
        window = self._windows.get(slot)
        if window is None:
            window = self._windows[slot] = compiled.window(store.get(key))
        return window

    def changed(self, store: PartitionStore, key: bytes) -> None:
        self._changed[(id(store), key)] = (store, key)

    def flush(self) -> None:
        """Write the changed windows into their stores' pending writes, and forget everything."""
        for slot, (store, key) in self._changed.items():
            store.put(key, self._windows[slot].to_bytes())
        self.clear()

    def clear(self) -> None:
        self._windows.clear()
        self._changed.clear()
