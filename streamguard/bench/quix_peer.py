"""The Quix Streams peer of `streamguard bench`: the same windows, computed the Quix way.

Run as a script in its own virtualenv (quixstreams 3.28 pins
confluent-kafka < 2.13, streamguard needs 2.16), so it imports quixstreams and
the standard library only, never streamguard. `streamguard.bench.peer_spec`
writes the JSON spec it reads: the input topics, the output topic and one
branch per (entity, window) that streamguard's `features/*.toml` declare for
IPs, devices, accounts and phones.

Per branch, the events of its types that have the entity are re-keyed by it
(`group_by`, a repartition topic per entity) and aggregated in a sliding
window of the feature's length (Quix's own way to get "the last W before this
event"; it is exact where streamguard's ring of buckets rounds to its
resolution, and cheaper in Quix than a hopping window stepping by that
resolution): a count, a distinct count per declared field (a list capped at
the same 256 values) and the event's id. Of the windows `.current()` emits for
an event, the one that ends at it becomes one small record keyed by the event
id. The event time is the event's `ts`; processing is exactly-once, as
streamguard's is.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from quixstreams import Application
from quixstreams.dataframe.windows.aggregations import Count, Last, Reduce

Row = dict[str, Any]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("spec", type=Path, help="the JSON spec written by streamguard.bench.peer_spec")
    spec = json.loads(parser.parse_args().spec.read_text())
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
        for branch in branches:
            _window(keyed, branch, spec["distinct_cap"], spec["grace_ms"]).to_topic(output, key=_event_id)
    app.run()


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


def _window(keyed: Any, branch: Row, cap: int, grace_ms: int) -> Any:
    """The branch's sliding window, one record per event: the window that ends at the event."""
    types = set(branch["events"])
    distinct = {f"distinct_{f}": Reduce(_capped_add(f, cap), _capped_first(f)) for f in branch["distinct"]}
    windows = (
        keyed.filter(lambda event: event["type"] in types)
        .sliding_window(branch["window_ms"], grace_ms=grace_ms, name=branch["name"])
        .agg(count=Count(), event_id=Last("event_id"), ts=Last("ts"), **distinct)
        .current()
    )
    # An event older than others of its key also updates their windows; keep only its own.
    own = windows.filter(lambda row: row["end"] == row["ts"])
    return own.apply(_summary(branch["name"], list(distinct)))


def _capped_first(field: str) -> Callable[[Row], list[Any]]:
    return lambda event: [] if event.get(field) is None else [event[field]]


def _capped_add(field: str, cap: int) -> Callable[[list[Any], Row], list[Any]]:
    def add(values: list[Any], event: Row) -> list[Any]:
        value = event.get(field)
        if value is not None and len(values) < cap and value not in values:
            values.append(value)
        return values

    return add


def _summary(branch: str, distinct: list[str]) -> Callable[[Row], Row]:
    def summary(row: Row) -> Row:
        values = {name: len(row[name]) for name in distinct}
        return {"event_id": row["event_id"], "branch": branch, "count": row["count"], **values}

    return summary


def _event_id(row: Row) -> str:
    return str(row["event_id"])


if __name__ == "__main__":
    main()
