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

from dataclasses import dataclass, field

import msgspec
import numpy as np
import orjson

from streamguard.codec import decode_event, encode_verdict
from streamguard.columnar.columns import columns_of
from streamguard.columnar.hashing import ABSENT, ColumnHashes
from streamguard.columnar.layout import Layout, ReadPlan
from streamguard.columnar.rules import rules_fired
from streamguard.columnar.state import ColumnarState
from streamguard.errors import InvalidEvent
from streamguard.events import EVENT_TYPES, AnyEvent, ErrorCode
from streamguard.features.spec import FeatureSpec
from streamguard.pipeline.failures import describe, log_failure
from streamguard.pipeline.ingest import dead_letter
from streamguard.pipeline.records import Incoming, Outgoing
from streamguard.rules.program import Program
from streamguard.topics.names import TopicNames
from streamguard.verdicts import Detector

_encode = msgspec.json.Encoder().encode


@dataclass
class BatchOutput:
    outs: list[Outgoing] = field(default_factory=list)  # verdicts, dead letters, feature records
    duplicates: int = 0
    processing_errors: int = 0


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
        self.state = ColumnarState(self.layout, dedup_retention_ms)
        self._plan: tuple[Program | None, ReadPlan] = (None, self.layout.plan(None))

    def process(self, records: list[Incoming], now_ms: int) -> BatchOutput:
        output = BatchOutput()
        events, sources = self._decode(records, now_ms, output)
        if not events:
            return output
        try:
            columns = columns_of(events, self.layout, self._hashes)
        except MemoryError:
            raise
        except Exception as exc:  # a defect one of them meets: find which, one event at a time
            return self._one_at_a_time(records, now_ms) if len(records) > 1 else self._failed(records[0], exc)
        program = self._detector.program  # one ruleset for the whole batch, even if it is replaced meanwhile
        order = np.argsort(columns.ts, kind="stable")  # ties keep the batch's order
        counted = self.state.count(order, columns.ts, columns.etype, columns.flags, columns.numbers, columns.hashes,
                                   self._read_plan(program))  # fmt: skip
        output.duplicates = int(counted.duplicate.sum())
        decided = self._decide(program, events, counted.values, counted.duplicate, columns.hashes, columns.etype,
                               now_ms)  # fmt: skip
        for i in order.tolist():
            verdict = decided[i]
            if verdict is None:
                continue
            event = events[i]
            if isinstance(verdict, Exception):
                output.processing_errors += 1
                output.outs.append(self._dead_letter(sources[i], verdict))  # logged when it raised
                continue
            kind = EVENT_TYPES[int(columns.etype[i])]
            output.outs.append(Outgoing(self._names.verdicts[kind], verdict, key=event.event_id.encode()))
            if self._features_topic:
                output.outs.append(self._feature_record(event, kind, counted.values[i], columns.hashes[i]))
        self.state.expire()
        return output

    def _one_at_a_time(self, records: list[Incoming], now_ms: int) -> BatchOutput:
        """Each record as a batch of its own: one that raises goes to the dead letters (`processing_error`)."""
        output = BatchOutput()
        for record in records:
            one = self.process([record], now_ms)
            output.outs += one.outs
            output.duplicates += one.duplicates
            output.processing_errors += one.processing_errors
        return output

    def _failed(self, record: Incoming, exc: Exception) -> BatchOutput:
        """The dead letter of a record whose processing raised (`processing_error`), with its own bytes."""
        log_failure("deciding an event", exc)
        return BatchOutput(outs=[self._dead_letter(record, exc)], processing_errors=1)

    def _dead_letter(self, record: Incoming, exc: Exception) -> Outgoing:
        """A `processing_error` dead letter: it stands in for the event's verdict, with the record's own bytes."""
        return dead_letter(record, ErrorCode.PROCESSING_ERROR, describe(exc), self._names.deadletter)

    def _read_plan(self, program: Program) -> ReadPlan:
        """What the batch reads: every feature for the features topic, else what `program`'s rules look at."""
        if self._features_topic or self._plan[0] is program:
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
        duplicate: np.ndarray,
        hashes: np.ndarray,
        etype: np.ndarray,
        now_ms: int,
    ) -> list[bytes | Exception | None]:
        """Each event's verdict bytes (None for a duplicate; the exception if deciding it raised)."""
        detector = self._detector
        label = _encode(program.ruleset.label)
        decided: list[bytes | Exception | None] = [None] * len(events)
        listed = len(detector.lists) > 0
        for code, kind in enumerate(EVENT_TYPES):
            rows = np.flatnonzero((etype == code) & ~duplicate)
            if rows.size == 0:
                continue
            kind_events = [events[i] for i in rows.tolist()]
            try:
                fired = rules_fired(program, kind, kind_events, values[rows], self.layout.index)
            except MemoryError:
                raise
            except Exception as exc:  # a fact that raises: each event goes through the detector, alone
                log_failure("running the rules over a batch", exc)
                fired = np.ones(len(kind_events), np.bool_)
            template = _allow_template(kind, label, now_ms)
            for j, (i, event) in enumerate(zip(rows.tolist(), kind_events, strict=True)):
                if not (listed or fired[j]):
                    decided[i] = template % (_encode(event.event_id), event.ts)
                    continue
                try:
                    inputs = self._values(program, kind, values[i])
                    verdict = detector.decide(event, inputs, self._entities(hashes[i]), now_ms, program)
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
