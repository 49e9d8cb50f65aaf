"""What the owner of a shard does with the items that reach it.

A shard owns the events whose id hashes to it, the entities whose keyed hash
hashes to it, and their state. For an event, three kinds of work follow:

1. `DecideItem`, on the event's shard: drop it if its id was decided already
   (so it neither counts twice nor gets a second verdict); otherwise park it
   as pending and send one `ApplyItem` to each of its entities' shards.
2. `ApplyItem`, on an entity's shard: count the event in that entity's
   windows and send the entity's feature values back (`MergeItem`). A device
   learns its fingerprint from device reports; for other events with a device
   id, the device's shard looks the fingerprint up and forwards the event to
   the fingerprint's shard, so a device-id reset cannot hide a device.
3. `MergeItem`, on the event's shard: collect the values; once every entity
   has answered, publish the verdict.

Work that raises does not stop the stream (see `ShardWork.handle`): what it
did is dropped from the result and the event goes to the dead letters
(`processing_error`) instead of getting a verdict; the rest goes on.

Nothing here knows Kafka: the engine moves items between shards, locally
when it owns the target shard, through the shards topic otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import msgspec
import orjson

from streamguard.codec import ApplyItem, DecideItem, MergeItem, ShardItem, encode_verdict, event_type, shard_of
from streamguard.events import AnyEvent, DeviceEvent, ErrorCode
from streamguard.features.table import EntityFeatures, WindowCache
from streamguard.pipeline.failures import dead_letter_headers, describe, log_failure
from streamguard.pipeline.records import Outgoing
from streamguard.privacy import Pseudonymizer
from streamguard.state import keys
from streamguard.state.dedup import RecentIds
from streamguard.state.store import PartitionStore
from streamguard.topics.names import TopicNames
from streamguard.verdicts import Detector

# A sweep of one shard reads up to this many windows, ids and fingerprint links: a few ms, so that the
# transaction that carries it does not stand out in the latency; a shard is swept every quarter second.
EXPIRE_PER_BATCH = 500
EXPIRE_EVERY_S = 0.25
# A device's fingerprint is remembered this long (event time) after its last report.
FINGERPRINT_MEMORY_MS = 24 * 3_600_000


class Pending(msgspec.Struct, array_like=True, gc=False):
    event: AnyEvent
    expected: list[str]
    values: dict[str, float] = {}
    received: list[str] = []
    entities: dict[str, bytes] = {}  # entity id -> keyed hash, as they answer
    partition: int = -1  # where the event was read, for its dead letter (`DecideItem`)
    offset: int = -1
    failed: str = ""  # what an entity's shard said went wrong counting it: the event goes to the dead letters


_pending_encoder = msgspec.msgpack.Encoder()
_pending_decoder = msgspec.msgpack.Decoder(Pending)
_event_encoder = msgspec.json.Encoder()


@dataclass
class _Waiting:
    """A pending event as the open transaction has it: None once decided; whether the store holds it."""

    store: PartitionStore
    pending: Pending | None
    stored: bool


@dataclass
class Result:
    """What handling items produced: more items, records to publish, duplicates dropped, items that raised."""

    items: list[ShardItem] = field(default_factory=list)
    outs: list[Outgoing] = field(default_factory=list)
    duplicates: int = 0
    processing_errors: int = 0


class ShardWork:
    def __init__(
        self,
        names: TopicNames,
        features: EntityFeatures,
        detector: Detector,
        pseudonymizer: Pseudonymizer,
        store_of: Callable[[int], PartitionStore],
        recent_of: Callable[[int], RecentIds],
        features_topic: str | None = None,
        expire_every_s: float = EXPIRE_EVERY_S,
    ) -> None:
        self._names = names
        self._features = features
        self._detector = detector
        self._pseudo = pseudonymizer
        self._store_of = store_of
        self._recent_of = recent_of
        self._features_topic = features_topic
        self._resolves_fingerprints = "fingerprint" in features.by_entity
        self.windows = WindowCache()  # flushed into the stores before each commit; cleared on abort and rebalance
        # Events waiting for their entities' values, as this transaction left them: most are
        # decided within the transaction that read them and never reach the store.
        self._waiting: dict[bytes, _Waiting] = {}
        self._newest_ts: dict[int, int] = {}  # shard -> newest event time counted there
        self._sweep_cursor: dict[int, bytes] = {}
        self._fingerprint_cursor: dict[int, bytes] = {}
        self._last_expire: dict[int, float] = {}  # shard -> time.monotonic() of its last sweep
        self._expire_every_s = expire_every_s

    @property
    def features(self) -> EntityFeatures:
        """The features counted here (a restore checks the changelog's retention against their lifetimes)."""
        return self._features

    def handle(self, shard: int, item: ShardItem, now_ms: int, result: Result) -> None:
        """Do an item's work into `result`; if it raises, its event goes to the dead letters instead (`_failed`)."""
        items, outs = len(result.items), len(result.outs)
        try:
            if isinstance(item, DecideItem):
                self._decide(shard, item, now_ms, result)
            elif isinstance(item, ApplyItem):
                self._apply(shard, item, result)
            else:
                self._merge(shard, item, now_ms, result)
        except MemoryError:
            raise
        except Exception as exc:  # a defect, met by this event: the others go on
            del result.items[items:], result.outs[outs:]
            self._failed(shard, item, exc, result)

    def flush(self) -> None:
        """Write what this transaction changed into the stores' pending writes (before taking the changes)."""
        self.windows.flush()
        for key, waiting in self._waiting.items():
            if waiting.pending is not None:
                waiting.store.put(key, _pending_encoder.encode(waiting.pending))
            elif waiting.stored:
                waiting.store.delete(key)
        self._waiting.clear()

    def clear(self) -> None:
        """Forget what an aborted transaction did (and any window cached from before a rebalance)."""
        self.windows.clear()
        self._waiting.clear()

    def expire(self, shards: Iterable[int]) -> None:
        """Forget a bounded amount of the ids and windows past use of one of `shards`: the one swept longest ago.

        One shard per transaction, each at most every `expire_every_s`.
        """
        now = time.monotonic()
        last, shard = min(((self._last_expire.get(s, -1e9), s) for s in shards), default=(now, -1))
        if now - last < self._expire_every_s:
            return
        self._last_expire[shard] = now
        self._recent_of(shard).expire(EXPIRE_PER_BATCH)
        watermark = self._newest_ts.get(shard, 0)
        if watermark:
            store = self._store_of(shard)
            cursor = self._sweep_cursor.get(shard, keys.FEATURE)
            self._sweep_cursor[shard] = self._features.sweep(store, self.windows, cursor, watermark, EXPIRE_PER_BATCH)
            self._forget_fingerprints(shard, store, watermark - FINGERPRINT_MEMORY_MS)

    def _forget_fingerprints(self, shard: int, store: PartitionStore, before_ts: int) -> None:
        """Drop device -> fingerprint links last reported before `before_ts`, a bounded number per batch."""
        cursor = self._fingerprint_cursor.get(shard, keys.DEVICE_FINGERPRINT)
        scanned, resume = store.items_from(cursor, keys.DEVICE_FINGERPRINT_END, EXPIRE_PER_BATCH)
        for key, raw in scanned:
            if keys.decode_u64(raw[:8]) < before_ts:
                store.delete(key)
        self._fingerprint_cursor[shard] = keys.DEVICE_FINGERPRINT if resume is None else resume

    # --- the three kinds of work -------------------------------------------------

    def _decide(self, shard: int, item: DecideItem, now_ms: int, result: Result) -> None:
        event = item.event
        if not self._recent_of(shard).add(item.digest, event.ts):
            result.duplicates += 1
            return
        reported = self._reported_fingerprint(event)
        entities = self._features.entities_of(event, reported, self._pseudo)
        device_id = getattr(event, "device_id", None)
        resolve = self._resolves_fingerprints and reported is None and device_id is not None
        if self._resolves_fingerprints and device_id is not None and "device_id" not in entities:
            entities["device_id"] = self._pseudo.digest("device_id", device_id)  # to learn or look up its fingerprint
        expected = sorted(entities) + (["fingerprint"] if resolve else [])
        if not expected:
            self._publish(event, {}, {}, now_ms, result)
            return
        for eid, entity_digest in entities.items():
            result.items.append(
                ApplyItem(item.digest, eid, entity_digest, event, reported, resolve and eid == "device_id")
            )
        pending = Pending(event, expected, partition=item.partition, offset=item.offset)
        self._waiting[keys.pending(item.digest)] = _Waiting(self._store_of(shard), pending, False)

    def _apply(self, shard: int, item: ApplyItem, result: Result) -> None:
        store = self._store_of(shard)
        self._newest_ts[shard] = max(self._newest_ts.get(shard, 0), item.event.ts)
        fingerprint = item.fingerprint
        if item.entity == "device_id":
            key = keys.device_fingerprint(item.entity_digest)
            if fingerprint is not None:  # a device report: (re)learn its fingerprint, with when
                store.put(key, keys.encode_u64(item.event.ts) + fingerprint.encode())
            elif item.resolve_fingerprint:
                known = store.get(key)
                fingerprint = None if known is None else known[8:].decode()
        read = None if self._features_topic else self._detector.program.features_read(event_type(item.event))
        values = self._features.apply(
            store, item.entity, item.entity_digest, item.event, fingerprint, self.windows, read
        )
        result.items.append(MergeItem(item.digest, item.entity, values, item.entity_digest))
        if item.resolve_fingerprint:
            if fingerprint is None:
                result.items.append(MergeItem(item.digest, "fingerprint", {}))
            else:
                digest = self._pseudo.digest("fingerprint", fingerprint)
                result.items.append(ApplyItem(item.digest, "fingerprint", digest, item.event, fingerprint))

    def _merge(self, shard: int, item: MergeItem, now_ms: int, result: Result) -> None:
        key = keys.pending(item.digest)
        waiting = self._waiting.get(key)
        if waiting is None:
            store = self._store_of(shard)
            raw = store.get(key)
            if raw is None:
                return  # cannot happen with transactions; nothing to attach the values to
            waiting = self._waiting[key] = _Waiting(store, _pending_decoder.decode(raw), True)
        pending = waiting.pending
        if pending is None:
            return  # decided already: cannot happen, an entity answers once
        pending.values.update(item.values)
        pending.received.append(item.entity)
        if item.entity_digest:
            pending.entities[item.entity] = item.entity_digest
        if item.failed and not pending.failed:
            pending.failed = item.failed
        if len(pending.received) >= len(pending.expected) and set(pending.received) >= set(pending.expected):
            waiting.pending = None
            self._conclude(pending, now_ms, result)

    # --- when work raises -----------------------------------------------------------

    def _failed(self, shard: int, item: ShardItem, exc: Exception, result: Result) -> None:
        """Stand in for the work of an item that raised (and whose results were dropped).

        An event that raised while being decided gets its dead letter, and its id
        stays decided, so a re-sent copy gets nothing. An entity's shard
        answers the event's shard that counting it failed (for the fingerprint
        too, when it was to go on to it), so the event does not wait for ever
        and gets a dead letter there; windows it was counted in before the
        exception keep it. A merge that raised sends its event, if it is known,
        to the dead letters.
        """
        if isinstance(item, DecideItem):
            detail = self._report("deciding an event", exc, result)
            self._recent_of(shard).add(item.digest, item.event.ts)  # it is already, unless that is what raised
            result.outs.append(self._dead_letter(item.event, item.partition, item.offset, detail))
        elif isinstance(item, ApplyItem):
            detail = self._report(f"counting an event per {item.entity}", exc, result)
            result.items.append(MergeItem(item.digest, item.entity, {}, item.entity_digest, detail))
            if item.resolve_fingerprint:
                result.items.append(MergeItem(item.digest, "fingerprint", {}, b"", detail))
        else:
            detail = self._report("merging an entity's values", exc, result)
            waiting = self._waiting.get(keys.pending(item.digest))
            if waiting is not None and waiting.pending is not None:
                pending, waiting.pending = waiting.pending, None
                result.outs.append(self._dead_letter(pending.event, pending.partition, pending.offset, detail))

    def _conclude(self, pending: Pending, now_ms: int, result: Result) -> None:
        """The verdict of an event every entity answered for; its dead letter if one failed, or deciding raises."""
        failed = pending.failed
        if not failed:
            outs = len(result.outs)
            try:
                self._publish(pending.event, pending.values, pending.entities, now_ms, result)
                return
            except MemoryError:
                raise
            except Exception as exc:
                del result.outs[outs:]
                failed = self._report("deciding an event", exc, result)
        result.outs.append(self._dead_letter(pending.event, pending.partition, pending.offset, failed))

    def _report(self, what: str, exc: Exception, result: Result) -> str:
        """Log and count a failure; its detail for the dead letter."""
        log_failure(what, exc)
        result.processing_errors += 1
        return describe(exc)

    def _dead_letter(self, event: AnyEvent, partition: int, offset: int, detail: str) -> Outgoing:
        """The dead letter of a valid event that could not be decided: it stands in for the event's verdict.

        The original bytes stayed with the ingest, possibly on another worker:
        the value is the event as validated, as JSON (fields it did not know
        are gone), keyed by its `event_id`. `sg-source-*` name the input record
        it was read from (-1 for partition and offset when the item did not say).
        """
        topic = self._names.inputs[event_type(event)]
        headers = dead_letter_headers(ErrorCode.PROCESSING_ERROR, detail, topic, partition, offset)
        value, key = _event_encoder.encode(event), event.event_id.encode()
        return Outgoing(self._names.deadletter, value, key=key, headers=headers)

    # --- helpers -------------------------------------------------------------------

    def _reported_fingerprint(self, event: AnyEvent) -> str | None:
        """A device report's fingerprint, pseudonymised; None for other events."""
        if isinstance(event, DeviceEvent) and event.fingerprint is not None:
            return self._pseudo.reported_fingerprint(event.fingerprint)
        return None

    def _publish(
        self, event: AnyEvent, values: dict[str, float], entities: dict[str, bytes], now_ms: int, result: Result
    ) -> None:
        kind = event_type(event)
        verdict = self._detector.decide(event, values, entities, now_ms)
        key = event.event_id.encode()
        result.outs.append(Outgoing(self._names.verdicts[kind], encode_verdict(verdict), key=key))
        if self._features_topic:
            record = {"event_id": event.event_id, "type": kind, "ts": event.ts, "features": values}
            result.outs.append(Outgoing(self._features_topic, orjson.dumps(record, option=orjson.OPT_SORT_KEYS),
                                        key=key))  # fmt: skip


def target_shard(item: ShardItem, shards: int) -> int:
    """The shard an item is work for."""
    return shard_of(item.entity_digest if isinstance(item, ApplyItem) else item.digest, shards)
