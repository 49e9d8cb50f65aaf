"""The batch core: input records in, verdicts and dead letters out, with no Kafka in sight.

`BatchCore.process` takes a batch of input records (in event-time order, as
the engine's merge releases them) and does everything a worker does to them:
validate (dead letters for what is invalid), de-duplicate by event id, count
every event in its entities' windows and read their values (`count`), run
the rules (`rules`), and write each event's verdict. Everything after the
decode works on columns: a few kernel calls per batch, and Python per event
only to decode it, write its verdict, and build reasons where a rule fired.

Events with the same `ts` are counted in the order of the batch (the order
their partitions were merged in): each sees those before it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

import msgspec
import numpy as np
import orjson

from streamguard.codec import decode_event, encode_verdict
from streamguard.columnar import changes, exchange
from streamguard.columnar.changes import PendingRows, ShardRecord, forget_shards, layout_fingerprint
from streamguard.columnar.columns import columns_of
from streamguard.columnar.exchange import Answers, Outbox, Rows
from streamguard.columnar.hashing import ABSENT, ColumnHashes
from streamguard.columnar.layout import TYPE_CODE, Layout, ReadPlan
from streamguard.columnar.pack import shard_of_keys
from streamguard.columnar.pending import PendingEvents
from streamguard.columnar.rules import Evaluated
from streamguard.columnar.rules import evaluate as evaluate_rules
from streamguard.columnar.state import ColumnarState, CountResult
from streamguard.errors import InvalidEvent
from streamguard.events import EVENT_TYPES, AnyEvent, ErrorCode
from streamguard.features.spec import FeatureSpec, load_features
from streamguard.pipeline.failures import describe, log_failure
from streamguard.pipeline.ingest import dead_letter
from streamguard.pipeline.records import Incoming, Outgoing
from streamguard.rules.program import Program
from streamguard.rules.spec import load_ruleset
from streamguard.settings import Settings
from streamguard.topics.names import TopicNames
from streamguard.verdicts import Detector

log = logging.getLogger(__name__)
RESTORE_NOW_MS = 2**62  # a restored pending event was accepted once: its time is not checked against now again
_encode = msgspec.json.Encoder().encode


@dataclass
class BatchOutput:
    outs: list[Outgoing] = field(default_factory=list)  # verdicts, dead letters, feature records
    remote: dict[int, Outbox] = field(default_factory=dict)  # work for shards another worker holds
    duplicates: int = 0
    processing_errors: int = 0

    def add(self, other: BatchOutput) -> None:
        self.outs += other.outs
        for shard, box in other.remote.items():
            mine = self.outbox(shard)
            mine.forward += box.forward
            mine.apply += box.apply
            mine.answers += box.answers
        self.duplicates += other.duplicates
        self.processing_errors += other.processing_errors

    def outbox(self, shard: int) -> Outbox:
        return self.remote.setdefault(shard, Outbox())


@dataclass
class _Decided:
    """Events whose values are all in, to decide, in chunks: their order is made by event time in `_publish`."""

    events: list[AnyEvent] = field(default_factory=list)
    sources: list[Incoming] = field(default_factory=list)
    etype: list[np.ndarray] = field(default_factory=list)
    values: list[np.ndarray] = field(default_factory=list)
    hashes: list[np.ndarray] = field(default_factory=list)

    def add(self, events: list[AnyEvent], sources: list[Incoming], etype: np.ndarray, values: np.ndarray,
            hashes: np.ndarray) -> None:  # fmt: skip
        self.events += events
        self.sources += sources
        self.etype.append(etype)
        self.values.append(values)
        self.hashes.append(hashes)


class BatchCore:
    def __init__(
        self,
        names: TopicNames,
        specs: list[FeatureSpec],
        detector: Detector,
        hashes: ColumnHashes,
        lateness_ms: int,
        dedup_retention_ms: int,
        features_topic: str | None = None,
    ) -> None:
        self._names = names
        self._type_of = names.input_type()
        self._detector = detector
        self._hashes = hashes
        self._features_topic = features_topic
        self.layout = Layout(specs, lateness_ms)
        self.fingerprint = layout_fingerprint(self.layout, hashes)
        self.state = ColumnarState(self.layout, dedup_retention_ms)
        self.pending = PendingEvents(len(specs), len(self.layout.hash_columns) + 1, self.layout.fingerprint_column)
        self._read_everything = self.layout.plan(None)
        self._plan: tuple[Program | None, ReadPlan] = (None, self._read_everything)
        self._widths = (len(self.layout.number_columns), len(self.layout.hash_columns) + 1, len(specs))
        # What changed since the last `take_changes`, besides the entities (the state marks those).
        self._expired: list[np.ndarray] = []
        self._ids: list[np.ndarray] = []
        self._links: list[np.ndarray] = []
        self.own(range(names.shards))

    def own(self, shards: Iterable[int]) -> None:
        """Hold `shards` (their events and entities) from now on; the entities of the others are forgotten."""
        owned = np.zeros(self._names.shards, np.bool_)
        owned[list(shards)] = True
        self.state.owned = owned
        self._forget(~owned)
        self.pending.forget_done(owned)
        self._expired = [gone[owned[shard_of_keys(gone, self._names.shards)]] for gone in self._expired]

    def forget(self, shard: int) -> None:
        """Forget what is held of `shard` (its entities, memos, pending events), and go on holding it."""
        gone = np.zeros(self._names.shards, np.bool_)
        gone[shard] = True
        self._forget(gone)

    def _forget(self, gone: np.ndarray) -> None:
        forget_shards(self.state, gone)
        keys = self.pending.keys()
        self.pending.forget(keys[gone[shard_of_keys(keys, self._names.shards)]])

    # --- durability: the state of a shard as records ---------------------------------

    def take_changes(self) -> dict[int, list[bytes]]:
        """Per shard, the records of what the batches since the last call changed: what the changelog carries."""
        shards = self._names.shards
        empty = np.empty(0, np.uint64)
        records = changes.take_changes(
            self.state, self.fingerprint, np.concatenate([empty, *self._expired]), np.concatenate([empty, *self._ids]),
            np.concatenate([empty, *self._links]), shards,
        )  # fmt: skip
        self._expired, self._ids, self._links = [], [], []
        for shard, (rows, done) in self.pending.take_changes(shards).items():
            held = records.get(shard) or [ShardRecord(self.fingerprint, shard, False, self.state.newest_ts)]
            records[shard] = held[:-1] + changes.fill(held[-1], changes.pending_pieces(rows, done))
        return {shard: [changes.encode(record) for record in held] for shard, held in records.items()}

    def snapshots(self, which: Iterable[int] | None = None) -> dict[int, list[bytes]]:
        """Per shard held (of `which`, if given), everything held of it: records whose first replaces the shard."""
        held_now = np.flatnonzero(self.state.owned).tolist()
        wanted = held_now if which is None else sorted(set(which) & set(held_now))
        records = changes.snapshots(self.state, self.fingerprint, self._names.shards, wanted)
        for shard, held in records.items():
            rows = self.pending.of_shard(shard, self._names.shards)
            records[shard] = held[:-1] + changes.fill(held[-1], changes.pending_pieces(rows, np.empty(0, np.uint64)))
        return {shard: [changes.encode(record) for record in held] for shard, held in records.items()}

    def decode(self, record: bytes) -> ShardRecord:
        """A record of `take_changes` or `snapshots`, for `restore` (`LayoutMismatch` if made under another layout)."""
        return changes.decode(record, self.fingerprint)

    def restore(self, records: list[ShardRecord]) -> None:
        """Apply one shard's records, in changelog order: its entities, memos and pending events as they committed."""
        if len({record.shard for record in records}) > 1:
            raise ValueError("records of one shard at a time: a snapshot replaces only its own shard")
        shards = self._names.shards
        changes.apply_records(self.state, records, shards)
        start = max((i for i, record in enumerate(records) if record.snapshot), default=0)
        for record in records[start:]:
            self._restore_pending(record, shards)

    def _restore_pending(self, record: ShardRecord, shards: int) -> None:
        keys = self.pending.keys()
        if record.snapshot:
            self.pending.forget(keys[shard_of_keys(keys, shards) == record.shard])
        self.pending.forget(np.frombuffer(record.done, np.uint64))
        _, hash_columns, features = self._widths
        rows = PendingRows.from_bytes(record.pending, record.pending_rows, features, hash_columns)
        self.pending.forget(rows.hashes[:, -1])  # replaced by what the record has of them
        sources = [Incoming(*source) for source in rows.sources]
        events = [decode_event(s.value, self._type_of[s.topic], RESTORE_NOW_MS) for s in sources]
        self.pending.park(events, sources, rows.etype, rows.values, rows.hashes, rows.asked, rows.answered)

    def encode(self, outbox: Outbox) -> list[bytes]:
        """The shards-topic record of what a batch sends one shard."""
        return exchange.encode(outbox, self.fingerprint, *self._widths)

    def process(self, records: list[Incoming], now_ms: int, inbound: Iterable[bytes] = ()) -> BatchOutput:
        """Decide a batch: `records` from the input topics, `inbound` the shards-topic records that reached it.

        Raises `LayoutMismatch` for a shards record of another layout: the
        workers of a cluster must agree on what state means.
        """
        boxes = [exchange.decode(data, self.fingerprint, *self._widths) for data in inbound]
        numbers, hashes, features = self._widths
        apply = Rows.concat([box.apply for box in boxes], numbers, hashes)
        answers = Answers.concat([box.answers for box in boxes], features)
        return self._batch([*records, *(r for box in boxes for r in box.forward)], apply, answers, now_ms)

    def _batch(self, records: list[Incoming], apply: Rows, answers: Answers, now_ms: int) -> BatchOutput:
        output = BatchOutput()
        events, sources = self._decode(records, now_ms, output)
        try:
            columns = columns_of(events, self.layout, self._hashes)
        except MemoryError:
            raise
        except Exception as exc:  # a defect one of them meets: find which, one event at a time
            output.add(self._one_at_a_time(sources, apply, answers, now_ms, exc))
            return output
        event_shards = shard_of_keys(columns.hashes[:, -1], self._names.shards)
        here = self.state.owned[event_shards]
        for i in np.flatnonzero(~here).tolist():  # decided on a shard of another worker
            output.outbox(int(event_shards[i])).forward.append(sources[i])
        keep = np.flatnonzero(here)
        events, sources = [events[i] for i in keep.tolist()], [sources[i] for i in keep.tolist()]
        mine = len(events)
        rows = Rows.concat([Rows(columns.ts[keep], columns.etype[keep], columns.flags[keep],
                                 np.full(mine, -1, np.int64), columns.numbers[keep], columns.hashes[keep]),
                            apply], *self._widths[:2])  # fmt: skip
        program = self._detector.program  # one ruleset for the whole batch, even if it is replaced meanwhile
        order = np.argsort(rows.ts, kind="stable")  # ties keep the batch's order
        decide = np.arange(len(rows)) < mine
        counted = self.state.count(order, rows.ts, rows.etype, rows.flags, rows.numbers, rows.hashes,
                                   self._read_plan(program), rows.want, decide)  # fmt: skip
        output.duplicates = int(counted.duplicate[:mine].sum())
        decided = _Decided()
        mine_in_order = order[order < mine]
        kept = mine_in_order[~counted.duplicate[mine_in_order]]
        complete, waiting = kept[counted.remote[kept] == 0], kept[counted.remote[kept] != 0]
        decided.add([events[i] for i in complete.tolist()], [sources[i] for i in complete.tolist()],
                    rows.etype[complete], counted.values[complete], rows.hashes[complete])  # fmt: skip
        asked = self._route(waiting, rows, counted.remote, output)
        self.pending.park([events[i] for i in waiting.tolist()], [sources[i] for i in waiting.tolist()],
                          rows.etype[waiting], counted.values[waiting], rows.hashes[waiting], asked)  # fmt: skip
        local = self._answer(np.arange(mine, len(rows)), rows, counted, output)
        self._take_answers(Answers.concat([answers, local], features=self._widths[2]), decided, output)
        self._publish(program, decided, now_ms, output)
        self._note_memos(rows, kept, counted)
        self._expired.append(self.state.expire(len(rows)))
        return output

    def _note_memos(self, rows: Rows, kept: np.ndarray, counted: CountResult) -> None:
        """The event ids this batch decided, and the devices whose fingerprint it may have learned."""
        self._ids.append(rows.hashes[kept, -1])
        device = self.layout.device_column
        if device >= 0:
            reports = (rows.etype == TYPE_CODE["device"]) & ~counted.duplicate
            self._links.append(rows.hashes[reports, device])

    def _held(self, keys: np.ndarray) -> np.ndarray:
        held: np.ndarray = self.state.owned[shard_of_keys(keys, self._names.shards)]
        return held

    def _route(self, which: np.ndarray, rows: Rows, bits: np.ndarray, output: BatchOutput) -> np.ndarray:
        """Send rows `which` to count their `bits` on the shards of those columns' hashes; each row's bits asked.

        A device's shard is asked for the fingerprint too when the event has
        none of its own: the device's memory may give it one.
        """
        if which.size == 0:
            return np.zeros(0, np.int64)
        columns = self._widths[1] - 1
        fp, device = self.layout.fingerprint_column, self.layout.device_column
        pair_row, pair_col = np.nonzero((bits[which, None] >> np.arange(columns)) & 1)
        pair_row = which[pair_row]
        targets = shard_of_keys(rows.hashes[pair_row, pair_col], self._names.shards)
        want = np.left_shift(1, pair_col).astype(np.int64)
        if fp >= 0:
            asks_fingerprint = (pair_col == device) & (rows.hashes[pair_row, fp] == np.uint64(ABSENT))
            want[asks_fingerprint] |= np.left_shift(np.int64(1), np.int64(fp))
        by_pair = np.argsort(pair_row * self._names.shards + targets, kind="stable")
        pair_row, targets, want = pair_row[by_pair], targets[by_pair], want[by_pair]
        starts = np.flatnonzero(np.r_[True, (pair_row[1:] != pair_row[:-1]) | (targets[1:] != targets[:-1])])
        wants = np.bitwise_or.reduceat(want, starts)  # a row's bits for one shard, together
        rows_of, shards_of = pair_row[starts], targets[starts]
        for shard in np.unique(shards_of).tolist():
            sel = np.flatnonzero(shards_of == shard)
            r = rows_of[sel]
            output.outbox(shard).apply.append(
                Rows(rows.ts[r], rows.etype[r], rows.flags[r], wants[sel], rows.numbers[r], rows.hashes[r])
            )
        asked = np.zeros(len(rows), np.int64)
        np.bitwise_or.at(asked, rows_of, wants)
        out: np.ndarray = asked[which]
        return out

    def _answer(self, which: np.ndarray, rows: Rows, counted: CountResult, output: BatchOutput) -> Answers:
        """Answer the apply rows `which`: to their events' shards; those held here are returned."""
        remote = counted.remote[which]
        self._route(which[remote != 0], rows, counted.remote, output)  # a fingerprint the device's memory gave
        fp = self.layout.fingerprint_column
        fingerprint = rows.hashes[which, fp] if fp >= 0 else np.full(which.size, ABSENT, np.uint64)
        event = rows.hashes[which, -1]
        answers = Answers(event, rows.want[which] & ~remote, remote, fingerprint, counted.values[which])
        here = self._held(event)
        shards = shard_of_keys(event, self._names.shards)
        for shard in np.unique(shards[~here]).tolist():
            output.outbox(shard).answers.append(answers.take(np.flatnonzero(shards == shard)))
        return answers.take(np.flatnonzero(here))

    def _take_answers(self, answers: Answers, decided: _Decided, output: BatchOutput) -> None:
        """Merge what entities' shards answered into their pending events; decide those complete."""
        complete, strays = self.pending.answer(answers)
        decided.add(complete.events, complete.sources, complete.etype, complete.values, complete.hashes)
        if strays.size:
            self._stray(answers.take(strays), output)

    def _stray(self, answers: Answers, output: BatchOutput) -> None:
        """Answers for events not pending here: to their shard's owner, or (their shard is here) dropped."""
        shards = shard_of_keys(answers.event, self._names.shards)
        for shard in np.unique(shards).tolist():
            mine = np.flatnonzero(shards == shard)
            if not self.state.owned[shard]:
                output.outbox(shard).answers.append(answers.take(mine))
            else:
                log.warning("%d answers reached shard %d, which has no such events pending", mine.size, shard)

    def _publish(self, program: Program, decided: _Decided, now_ms: int, output: BatchOutput) -> None:
        """The verdicts (or processing_error dead letters) of the events decided, in event-time order."""
        if not decided.events:
            return
        values, hashes = np.concatenate(decided.values), np.concatenate(decided.hashes)
        etype = np.concatenate(decided.etype)
        verdicts = self._decide(program, decided.events, values, hashes, etype, now_ms)
        ts = np.fromiter((event.ts for event in decided.events), np.int64, len(decided.events))
        for i in np.argsort(ts, kind="stable").tolist():
            verdict, event = verdicts[i], decided.events[i]
            if isinstance(verdict, Exception):
                output.processing_errors += 1
                output.outs.append(self._dead_letter(decided.sources[i], verdict))  # logged when it raised
                continue
            kind = EVENT_TYPES[int(etype[i])]
            output.outs.append(Outgoing(self._names.verdicts[kind], verdict, key=event.event_id.encode()))
            if self._features_topic:
                output.outs.append(self._feature_record(event, kind, values[i], hashes[i]))

    def _one_at_a_time(
        self, records: list[Incoming], apply: Rows, answers: Answers, now_ms: int, exc: Exception
    ) -> BatchOutput:
        """The shards' work alone, then each record as a batch of its own: one that raises is a dead letter."""
        if len(records) == 1 and not len(apply) and not len(answers):
            return self._failed(records[0], exc)
        numbers, hashes, features = self._widths
        output = self._batch([], apply, answers, now_ms)
        for record in records:
            output.add(self._batch([record], Rows.concat([], numbers, hashes), Answers.concat([], features), now_ms))
        return output

    def _failed(self, record: Incoming, exc: Exception) -> BatchOutput:
        """The dead letter of a record whose processing raised (`processing_error`), with its own bytes."""
        log_failure("deciding an event", exc)
        return BatchOutput(outs=[self._dead_letter(record, exc)], processing_errors=1)

    def _dead_letter(self, record: Incoming, exc: Exception) -> Outgoing:
        """A `processing_error` dead letter: it stands in for the event's verdict, with the record's own bytes."""
        return dead_letter(record, ErrorCode.PROCESSING_ERROR, describe(exc), self._names.deadletter)

    def _read_plan(self, program: Program) -> ReadPlan:
        """What the batch reads: what `program`'s rules look at, or every feature.

        Every feature for the features topic, and while another worker holds
        shards: an event that waits for their answers is decided by the
        ruleset in force when the last answer comes, which may read others.
        """
        if self._features_topic or not self.state.owned.all():
            return self._read_everything
        if self._plan[0] is program:
            return self._plan[1]
        plan = self.layout.plan({kind: program.features_read(kind) for kind in EVENT_TYPES})
        self._plan = (program, plan)
        return plan

    def _decode(
        self, records: list[Incoming], now_ms: int, output: BatchOutput
    ) -> tuple[list[AnyEvent], list[Incoming]]:
        events, sources = [], []
        deadletter = self._names.deadletter
        for record in records:
            try:
                events.append(decode_event(record.value, self._type_of[record.topic], now_ms))
                sources.append(record)
            except InvalidEvent as exc:
                output.outs.append(dead_letter(record, exc.code, exc.detail, deadletter))
            except MemoryError:
                raise
            except Exception as exc:  # a defect: this record goes to the dead letters, the batch goes on
                log_failure("ingesting a record", exc)
                output.processing_errors += 1
                output.outs.append(dead_letter(record, ErrorCode.PROCESSING_ERROR, describe(exc), deadletter))
        return events, sources

    def _decide(
        self,
        program: Program,
        events: list[AnyEvent],
        values: np.ndarray,
        hashes: np.ndarray,
        etype: np.ndarray,
        now_ms: int,
    ) -> list[bytes | Exception | None]:
        """Each event's verdict bytes (the exception if deciding it raised)."""
        detector = self._detector
        label = _encode(program.ruleset.label)
        decided: list[bytes | Exception | None] = [None] * len(events)
        listed = len(detector.lists) > 0
        for code, kind in enumerate(EVENT_TYPES):
            rows = np.flatnonzero(etype == code)
            if rows.size == 0:
                continue
            kind_events = [events[i] for i in rows.tolist()]
            evaluated: Evaluated | None
            try:
                evaluated = evaluate_rules(program, kind, kind_events, values[rows], self.layout.index)
                fired = evaluated.fired_any
            except MemoryError:
                raise
            except Exception as exc:  # a fact that raises: each event goes through the detector, alone
                log_failure("running the rules over a batch", exc)
                evaluated, fired = None, np.ones(len(kind_events), np.bool_)
            template = _allow_template(kind, label, now_ms)
            for j, (i, event) in enumerate(zip(rows.tolist(), kind_events, strict=True)):
                if not (listed or fired[j]):
                    decided[i] = template % (_encode(event.event_id), event.ts)
                    continue
                try:
                    entities = self._entities(hashes[i])
                    if evaluated is None:
                        inputs = self._values(program, kind, values[i])
                        verdict = detector.decide(event, inputs, entities, now_ms, program)
                    else:
                        verdict = detector.decide(event, {}, entities, now_ms, program, evaluated.row(j))
                    decided[i] = encode_verdict(verdict)
                except MemoryError:
                    raise
                except Exception as exc:  # a defect, met by this event: it goes to the dead letters
                    log_failure("deciding an event", exc)
                    decided[i] = exc
        return decided

    def _values(self, program: Program, kind: str, row: np.ndarray) -> dict[str, float]:
        return {name: float(row[self.layout.index[name]]) for name in program.features_read(kind)}

    def _entities(self, row: np.ndarray) -> dict[str, bytes]:
        """Kind -> pseudonym (its hash, as bytes) of each entity the event has: what reasons and lists name."""
        return {kind: int(row[c]).to_bytes(8, "big") for c, kind in enumerate(self.layout.kinds) if row[c] != ABSENT}

    def _feature_record(self, event: AnyEvent, kind: str, row: np.ndarray, hashes: np.ndarray) -> Outgoing:
        kinds = self.layout.arrays.kind
        values = {
            spec.name: (None if np.isnan(row[f]) else float(row[f]))
            for f, spec in enumerate(self.layout.specs)
            if hashes[kinds[f]] != ABSENT
        }
        record = {"event_id": event.event_id, "type": kind, "ts": event.ts, "features": values}
        return Outgoing(self._features_topic or "", orjson.dumps(record, option=orjson.OPT_SORT_KEYS),
                        key=event.event_id.encode())  # fmt: skip


def _allow_template(kind: str, label: bytes, now_ms: int) -> bytes:
    """An `allow` verdict with `%b` for the encoded event id and `%d` for its ts: what `encode_verdict` writes."""
    return (
        b'{"event_id":%b,"type":"' + kind.encode() + b'","ts":%d,"decision":"allow","score":0,"reasons":[],'
        b'"ruleset":' + label.replace(b"%", b"%%") + b',"decided_at":' + str(now_ms).encode() + b"}"
    )


def core_for(settings: Settings, names: TopicNames, detector: Detector | None = None) -> BatchCore:
    """A core as a worker of `settings` makes it; by default deciding by the ruleset file, lists empty."""
    specs = load_features(settings.allowed_lateness_ms)
    hashes = ColumnHashes(settings.require_hash_key())
    detector = detector or Detector(Program(load_ruleset(specs), specs), hashes)
    features_topic = settings.topic(settings.features_topic) if settings.features_topic else None
    return BatchCore(names, specs, detector, hashes, settings.allowed_lateness_ms, settings.dedup_retention_s * 1000,
                     features_topic)  # fmt: skip
