"""The Quix Streams peer of `streamguard bench`: the same windows, computed the Quix way.

Run as a script in its own virtualenv (quixstreams 3.28 pins
confluent-kafka < 2.13, streamguard needs 2.16), so it imports quixstreams and
the standard library only, never streamguard. `streamguard.bench.peer_spec`
writes the JSON spec it reads: the input topics, the output topic and one
branch per (entity, window) that streamguard's `features/*.toml` declare for
IPs, devices, accounts and phones.

Per entity kind, the events of the types its branches read that have the
entity are re-keyed by it (`group_by`, a repartition topic per entity), and
one stateful function (`apply(stateful=True)`, Quix's State API: RocksDB with a
changelog topic) keeps, under the entity's key, a ring of buckets per branch
at the feature's resolution, as streamguard and the Kafka Streams peer do:
per bucket a count, and per distinct field the values seen with a bit per
bucket they were seen in (at most the same 256 values). Per event and branch
it counts the event into its bucket and writes one small record keyed by the
event id: the count and distinct counts over the window that ends at the
event's bucket. (This peer was first written with Quix's sliding windows,
which update and store every window an event falls in: twice the CPU per
event.)
The event time is the event's `ts`; processing is exactly-once, as
streamguard's is.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from quixstreams import Application
from quixstreams.models.topics.exceptions import TopicNotFoundError

Row = dict[str, Any]
TOPIC_ATTEMPTS = 5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("spec", type=Path, help="the JSON spec written by streamguard.bench.peer_spec")
    spec = json.loads(parser.parse_args().spec.read_text())
    for attempt in range(TOPIC_ATTEMPTS):
        try:
            app = _application(spec)
            break
        except TopicNotFoundError:
            # Quix looks a repartition topic up right after creating it; a busy broker may not list it yet.
            if attempt == TOPIC_ATTEMPTS - 1:
                raise
            time.sleep(1.0)
    app.run()


def _application(spec: Row) -> Application:
    app = Application(
        broker_address=spec["bootstrap"],
        consumer_group=spec["group"],
        auto_offset_reset="earliest",
        processing_guarantee="exactly-once",
        commit_interval=spec["commit_interval_s"],
        state_dir=spec["state_dir"],
        loglevel="WARNING",
    )
    events = _merged_inputs(app, spec["input_topics"])
    output = app.topic(spec["output_topic"], value_serializer="json", key_serializer="str")
    for entity, branches in _branches_by_entity(spec["branches"]).items():
        types = {t for b in branches for t in b["events"]}
        keyed = events.filter(_has(entity, types)).group_by(_field(entity), name=f"by_{entity}")
        counted = keyed.apply(_windows(branches, spec["distinct_cap"]), stateful=True, expand=True)
        counted.to_topic(output, key=_event_id)
    return app


def _merged_inputs(app: Application, topics: list[str]) -> Any:
    """One dataframe over every input topic, on the event's `ts`."""
    frames = [app.dataframe(app.topic(name, timestamp_extractor=_event_time)) for name in topics]
    merged = frames[0]
    for frame in frames[1:]:
        merged = merged.concat(frame)
    return merged


def _event_time(value: Row, headers: Any, timestamp: int, timestamp_type: Any) -> int:
    return int(value["ts"])


def _branches_by_entity(branches: list[Row]) -> dict[str, list[Row]]:
    grouped: dict[str, list[Row]] = {}
    for branch in branches:
        grouped.setdefault(branch["entity"], []).append(branch)
    return grouped


def _has(entity: str, types: set[str]) -> Callable[[Row], bool]:
    return lambda event: event["type"] in types and event.get(entity) is not None


def _field(entity: str) -> Callable[[Row], Any]:
    return lambda event: event[entity]


def _windows(branches: list[Row], cap: int) -> Callable[[Row, Any], list[Row]]:
    """The entity's rings, one per branch, in its state; per event a record per branch it falls in."""
    types = [set(b["events"]) for b in branches]

    def count(event: Row, state: Any) -> list[Row]:
        rings = state.get("rings") or [_empty_ring(b) for b in branches]
        mine = [(b, ring) for b, t, ring in zip(branches, types, rings, strict=True) if event["type"] in t]
        rows = [_count(branch, ring, event, cap) for branch, ring in mine]
        state.set("rings", rings)
        return rows

    return count


def _empty_ring(branch: Row) -> Row:
    slots = branch["window_ms"] // branch["step_ms"]
    return {"buckets": [-1] * slots, "counts": [0] * slots, "values": [{} for _ in branch["distinct"]]}


def _count(branch: Row, ring: Row, event: Row, cap: int) -> Row:
    """Count `event` into its bucket (unless the ring holds a later one there), then read its window."""
    buckets, counts, values = ring["buckets"], ring["counts"], ring["values"]
    bucket = event["ts"] // branch["step_ms"]
    slot = bucket % len(buckets)
    if buckets[slot] < bucket:  # the slot's bucket left the window: its counts and bits go
        buckets[slot], counts[slot] = bucket, 0
        for seen in values:
            _clear(seen, slot)
    if buckets[slot] == bucket:
        counts[slot] += 1
        for field, seen in zip(branch["distinct"], values, strict=True):
            value = event.get(field)
            if value is not None and (str(value) in seen or len(seen) < cap):
                seen[str(value)] = seen.get(str(value), 0) | 1 << slot
    window = [s for s, b in enumerate(buckets) if bucket - len(buckets) < b <= bucket]
    mask = sum(1 << s for s in window)
    row = {"event_id": event["event_id"], "branch": branch["name"], "count": sum(counts[s] for s in window)}
    for field, seen in zip(branch["distinct"], values, strict=True):
        row[f"distinct_{field}"] = sum(1 for bits in seen.values() if bits & mask)
    return row


def _clear(seen: dict[str, int], slot: int) -> None:
    for value, bits in list(seen.items()):
        bits &= ~(1 << slot)
        if bits:
            seen[value] = bits
        else:
            del seen[value]


def _event_id(row: Row) -> str:
    return str(row["event_id"])


if __name__ == "__main__":
    main()
