"""Re-sharding the columnar engine's state (`reshard.columnar`): from 6 shards to 12, the same features and verdicts."""

from __future__ import annotations

import json

import pytest

from streamguard.columnar.core import BatchCore
from streamguard.columnar.driver import Cluster
from streamguard.demo.traffic import DemoTraffic, Message
from streamguard.errors import AppBusy
from streamguard.pipeline.records import Outgoing
from streamguard.reshard.columnar import Regroup
from streamguard.topics.names import TopicNames
from streamguard.topics.spec import load_specs
from tests.local import NAMES
from tests.unit.test_columnar_cluster import HASHES, SPECS, T0, _core

TWELVE = TopicNames.resolve(load_specs("", "sg", shards=12), "", "sg")


def _core_of(names: TopicNames) -> BatchCore:
    core = _core()
    return BatchCore(names, SPECS, core._detector, HASHES, core.layout.lateness_ms, 6 * 3_600_000, "features")


def _send(clusters: list[Cluster], messages: list[Message], start: int) -> None:
    """Each message to every cluster, one at a time, each cluster done with it before the next."""
    for i, message in enumerate(messages, start):
        for cluster in clusters:
            cluster.now_ms = T0 + 20 * i
            cluster.produce(message.topic.split(".")[-1], message.value, message.key, partition=i % 3)
            cluster.run()


def _decided(outs: list[Outgoing]) -> dict[str, tuple[object, ...]]:
    """Per event id: its verdict's decision, score and reasons, and its feature record."""
    found: dict[str, dict[str, dict[str, object]]] = {}
    for out in outs:
        if out.topic != NAMES.deadletter:
            record = json.loads(out.value)
            found.setdefault(record["event_id"], {})["features" if out.topic == "features" else "verdict"] = record
    return {
        event: (r["verdict"]["decision"], r["verdict"]["score"], r["verdict"]["reasons"], r.get("features"))
        for event, r in found.items()
    }


def _regrouped(cluster: Cluster) -> Regroup:
    regroup = Regroup(_core_of(cluster.names))
    for log in cluster.changelog.values():
        for _, record in log:
            regroup.add(record)
    return regroup


def test_state_moved_from_6_shards_to_12_decides_the_next_events_as_6_would_have():
    traffic = DemoTraffic(seed=9, run="reshard")
    before, after = ([traffic.next_message(T0 + 20 * i) for i in range(a, b)] for a, b in ((0, 900), (900, 1400)))
    six = Cluster(NAMES, lambda: _core_of(NAMES), workers=2, snapshot_every=7)
    _send([six], before, 0)
    regroup = _regrouped(six)
    records = regroup.records(12)
    assert sorted(records) == list(range(12)) and regroup.entities > 500

    twelve = Cluster(TWELVE, lambda: _core_of(TWELVE), workers=3)
    twelve.changelog = {shard: [(i == 0, r) for i, r in enumerate(held)] for shard, held in records.items()}
    for w in range(3):
        twelve.crash(w)  # each worker restores its shards from the new changelog, as a new owner would
    assert sum(sum(w.core.state.entity_counts().values()) for w in twelve.workers) == regroup.entities

    start = len(six.outputs)
    _send([six, twelve], after + before[:50], 900)  # 50 decided before the move: remembered after it
    expected, moved = _decided(six.outputs[start:]), _decided(twelve.outputs)
    assert len(expected) > 400 and any(decision != "allow" for decision, *_ in expected.values())
    assert moved == expected


def test_events_waiting_for_other_shards_answers_are_not_re_sharded():
    traffic = DemoTraffic(seed=9, run="parked")
    six = Cluster(NAMES, lambda: _core_of(NAMES), workers=2)
    six.now_ms = T0 + 20 * 200
    for i in range(200):
        message = traffic.next_message(T0 + 20 * i)
        six.produce(message.topic.split(".")[-1], message.value, message.key, partition=i % 3)
    six.step(0)  # worker 0 decides its events and asks worker 1's shards, whose answers never come
    assert six.pending() > 0
    with pytest.raises(AppBusy, match="events wait for other shards' answers"):
        _regrouped(six).records(12)
