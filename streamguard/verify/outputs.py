"""V1 and V2: what the input topics owe (verdicts, dead letters) against what the output topics hold.

The inputs are classified with the workers' own codec. Only the `ts` range
check depends on the processor's clock, and the verifier does not know when a
worker read a record: it was after the record's broker timestamp and before
now. A record classified alike at both ends owes exactly its output. One that
is not (a `ts` near the five-minute edge) is "either": it owes a dead letter
or nothing of its own, and when it got no dead letter it was taken for a
valid event, whose id is then owed a verdict.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from streamguard.codec import decode_event
from streamguard.errors import InvalidEvent
from streamguard.events import DeadLetterHeader as H
from streamguard.events import ErrorCode
from streamguard.verify.records import Record, Source, where
from streamguard.verify.report import Check

Kind = Literal["valid", "invalid", "either"]


@dataclass(frozen=True)
class Classified:
    record: Record
    event_type: str  # the type of the topic it came on
    kind: Kind
    event_id: str | None  # for "valid" and "either": the id it has when it is valid


def classify(records: Iterable[Record], type_of: Mapping[str, str], now_ms: int) -> list[Classified]:
    """Each input record as the workers saw it, judged at its broker timestamp and at `now_ms`."""
    out = []
    for record in records:
        kind = type_of[record.topic]
        late = _event_id(record, kind, now_ms)
        early = late if record.timestamp_ms is None else _event_id(record, kind, record.timestamp_ms)
        if early is not None and late is not None:
            out.append(Classified(record, kind, "valid", late))
        elif early is None and late is None:
            out.append(Classified(record, kind, "invalid", None))
        else:
            out.append(Classified(record, kind, "either", late if late is not None else early))
    return out


def _event_id(record: Record, kind: str, now_ms: int) -> str | None:
    try:
        return decode_event(record.value, kind, now_ms).event_id
    except InvalidEvent:
        return None


def dead_letter_sources(deadletters: Iterable[Record]) -> tuple[dict[Source, list[Record]], list[Record]]:
    """Dead letters by the input record their headers name; and those whose headers name none."""
    by_source: dict[Source, list[Record]] = defaultdict(list)
    unnamed = []
    for dead in deadletters:
        topic, partition, offset = (dead.header(h) for h in (H.SOURCE_TOPIC, H.SOURCE_PARTITION, H.SOURCE_OFFSET))
        if topic is None or partition is None or offset is None or not (partition + offset).isdigit():
            unnamed.append(dead)
        else:
            by_source[(topic, int(partition), int(offset))].append(dead)
    return by_source, unnamed


def check_verdicts(
    inputs: list[Classified],
    verdicts: Iterable[Record],
    dead: Mapping[Source, list[Record]],
    type_of: Mapping[str, str],
) -> Check:
    """V1: exactly one verdict per distinct valid event_id, keyed by it on its type's topic; none for anything else."""
    types: dict[str, set[str]] = defaultdict(set)  # owed id -> the types its valid copies came as
    for item in inputs:
        if item.event_id is not None and (item.kind == "valid" or not dead.get(item.record.source)):
            types[item.event_id].add(item.event_type)
    seen: Counter[str] = Counter()
    standing_in = 0
    for item in inputs:  # a valid event whose processing raised has a dead letter in place of its verdict
        standing = sum(map(stands_for_verdict, dead.get(item.record.source, [])))
        if item.event_id is not None and item.kind != "invalid" and standing:
            seen[item.event_id] += standing
            standing_in += standing
    unreadable, misplaced = [], []
    for verdict in verdicts:
        event_id = _verdict_id(verdict)
        if event_id is None:
            unreadable.append(where(verdict.source))
            continue
        seen[event_id] += 1
        if verdict.key != event_id.encode() or (event_id in types and type_of[verdict.topic] not in types[event_id]):
            misplaced.append(event_id)
    valid = sum(1 for item in inputs if item.kind == "valid")
    counts = {
        "valid records": valid,
        "distinct valid ids": len(types),
        "either": sum(1 for item in inputs if item.kind == "either"),
        "verdicts": sum(seen.values()) - standing_in + len(unreadable),
        "processing_error dead letters": standing_in,
    }
    problems = {
        "missing": [i for i in types if i not in seen],
        "repeated": [i for i, n in seen.items() if n > 1 and i in types],
        "unexpected": [i for i in seen if i not in types],
        "unreadable": unreadable,
        "misplaced": misplaced,
    }
    return Check.of("V1", "one verdict per valid event", counts, problems)


def _verdict_id(verdict: Record) -> str | None:
    try:
        event_id = json.loads(verdict.value or b"").get("event_id")
    except (ValueError, AttributeError):
        return None
    return event_id if isinstance(event_id, str) else None


def check_deadletters(inputs: list[Classified], dead: Mapping[Source, list[Record]], unnamed: list[Record]) -> Check:
    """V2: exactly one dead letter per invalid input record, with its key and value bytes unchanged."""
    by_source = {item.record.source: item for item in inputs}
    missing, repeated, unexpected, altered = [], [], [], []
    for item in inputs:
        got = dead.get(item.record.source, [])
        name = where(item.record.source)
        if item.kind == "valid" and not all(map(stands_for_verdict, got)):
            unexpected.append(name)
        elif item.kind == "invalid" and not got:
            missing.append(name)
        elif len(got) > 1:
            repeated.append(name)
        if any(not stands_for_verdict(letter) and not _same_evidence(item.record, letter) for letter in got):
            altered.append(name)
    unexpected += [where(source) for source in dead if source not in by_source]
    counts = {
        "invalid records": sum(1 for item in inputs if item.kind == "invalid"),
        "either": sum(1 for item in inputs if item.kind == "either"),
        "either dead-lettered": sum(1 for item in inputs if item.kind == "either" and dead.get(item.record.source)),
        "dead letters": sum(map(len, dead.values())) + len(unnamed),
    }
    problems = {
        "missing": missing,
        "repeated": repeated,
        "unexpected": unexpected,
        "altered": altered,
        "no source headers": [where(letter.source) for letter in unnamed],
    }
    return Check.of("V2", "one dead letter per invalid message, key and bytes unchanged", counts, problems)


def stands_for_verdict(letter: Record) -> bool:
    """A `processing_error` dead letter: processing a valid event raised; it holds the event as validated."""
    return letter.header(H.ERROR) == ErrorCode.PROCESSING_ERROR


def _same_evidence(original: Record, letter: Record) -> bool:
    """Key and value equal, or their start where `sg-truncated(-key)` gives the original length.

    An empty value and none (a tombstone) are the same to a Kafka client.
    """
    return _kept(original.key, letter.key, letter.header(H.TRUNCATED_KEY)) and _kept(
        original.value, letter.value, letter.header(H.TRUNCATED)
    )


def _kept(original: bytes | None, kept: bytes | None, truncated_from: str | None) -> bool:
    original, kept = original or b"", kept or b""
    if truncated_from is None:
        return original == kept
    return truncated_from == str(len(original)) and original.startswith(kept)
