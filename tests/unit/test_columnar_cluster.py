"""Several simulated workers (`columnar.driver.Cluster`): routing between shards, de-duplication, layouts."""

from __future__ import annotations

import json

import msgspec
import numpy as np
import pytest

from streamguard.columnar import changes, exchange
from streamguard.columnar.changes import LayoutMismatch
from streamguard.columnar.core import BatchCore
from streamguard.columnar.driver import Cluster
from streamguard.columnar.exchange import Outbox, Rows
from streamguard.columnar.hashing import DELETED, ColumnHashes
from streamguard.columnar.layout import Layout
from streamguard.columnar.pack import shard_of_keys
from streamguard.demo.traffic import DemoTraffic
from streamguard.errors import ConfigError
from streamguard.events import LoginEvent
from streamguard.features.spec import load_features
from streamguard.pipeline.columnar_engine import CoreShard
from streamguard.pipeline.records import Incoming
from streamguard.pipeline.restore import Restore
from streamguard.rules.program import Program
from streamguard.rules.spec import Condition, Decision, Rule, Ruleset, load_ruleset
from streamguard.verdicts import Detector
from tests.local import LATENESS_MS, NAMES
from tests.unit.test_restore import FakeConsumer, Log

T0 = 1_790_000_000_000
HASHES = ColumnHashes(b"columnar-cluster-test-key")
SPECS = load_features(LATENESS_MS)


def _core() -> BatchCore:
    detector = Detector(Program(load_ruleset(SPECS), SPECS), HASHES)
    return BatchCore(NAMES, SPECS, detector, HASHES, LATENESS_MS, 6 * 3_600_000, "features")


def _play(workers: int, n: int, drain_each: bool, batch: int = 500) -> tuple[Cluster, dict, dict, int]:
    """Demo traffic (attacks, malformed and re-sent messages) over 3 partitions: verdicts, features, dead letters."""
    cluster = Cluster(NAMES, _core, workers, batch_max_events=batch, batch_max_span_ms=1000)
    cluster.now_ms = T0 + 20 * n
    traffic = DemoTraffic(seed=5, run="cluster")
    for i in range(n):
        message = traffic.next_message(T0 + 20 * i)
        cluster.produce(message.topic.split(".")[-1], message.value, message.key, partition=i % 3)
        if drain_each:
            cluster.run()
    cluster.run()
    verdicts, features, dead = {}, {}, 0
    for out in cluster.outputs:
        if out.topic == NAMES.deadletter:
            dead += 1
            continue
        record = json.loads(out.value)
        (features if out.topic == "features" else verdicts)[record["event_id"]] = record
    return cluster, verdicts, features, dead


def test_three_workers_read_every_feature_as_one_does_when_each_event_is_done_before_the_next():
    _, one, one_features, one_dead = _play(1, 1200, drain_each=True)
    cluster, three, three_features, three_dead = _play(3, 1200, drain_each=True)
    assert set(one) == set(three) and one_dead == three_dead > 0 and cluster.pending() == 0
    assert one_features == three_features
    assert [v["decision"] for v in one.values()] == [three[k]["decision"] for k in one]
    assert any(v["decision"] != "allow" for v in three.values())


def test_in_batches_every_event_is_decided_once_and_work_crosses_workers():
    one_cluster, one, _, one_dead = _play(1, 4000, drain_each=False)
    cluster, three, _, three_dead = _play(3, 4000, drain_each=False)
    assert set(one) == set(three) and one_dead == three_dead and cluster.pending() == 0
    moved = sum(one[k]["decision"] != three[k]["decision"] for k in one)
    # What another worker's events do to an entity is counted a batch or two later than its own:
    # decisions near a threshold may move, within the span of a batch.
    assert moved < 0.02 * len(one)
    assert len(cluster.shards_topic()) > 0 == len(one_cluster.shards_topic())


def test_a_message_re_sent_to_partitions_read_by_different_workers_gets_one_verdict():
    cluster = Cluster(NAMES, _core, workers=3)
    cluster.now_ms = T0
    value = msgspec.json.encode(LoginEvent(event_id="twice", ts=T0, account_id="a", ip="10.0.0.1", success=True))
    for partition in range(3):  # read by three workers: its event's shard is one of theirs
        cluster.produce("login", value, partition=partition)
    outs = cluster.run()
    verdicts = [o for o in outs if o.topic == NAMES.verdicts["login"]]
    assert len(verdicts) == 1 and json.loads(verdicts[0].value)["event_id"] == "twice"


def test_a_shards_record_of_another_layout_is_refused():
    core, other = _core(), BatchCore(NAMES, SPECS[:-1], Detector(Program(load_ruleset(SPECS), SPECS), HASHES),
                                     HASHES, LATENESS_MS, 6 * 3_600_000)  # fmt: skip
    numbers, hashes = len(other.layout.number_columns), len(other.layout.hash_columns) + 1
    one = np.zeros(1, np.int64)
    rows = Rows(one, one, one, one, np.zeros((1, numbers)), np.zeros((1, hashes), np.uint64))
    (record,) = other.encode(Outbox(apply=[rows]))
    with pytest.raises(LayoutMismatch, match="every worker must run the same features"):
        core.process([], T0, [record])


def test_shards_given_up_are_forgotten_and_the_rest_kept():
    cluster = Cluster(NAMES, _core, workers=1)
    cluster.now_ms = T0 + 20 * 500
    traffic = DemoTraffic(seed=7, run="own")
    for i in range(500):
        message = traffic.next_message(T0 + 20 * i)
        cluster.produce(message.topic.split(".")[-1], message.value, message.key)
    cluster.run()
    state = cluster.workers[0].core.state
    before = sum(state.entity_counts().values())
    kept = [shard for shard in range(NAMES.shards) if shard % 2 == 0]
    cluster.workers[0].core.own(kept)
    after = sum(state.entity_counts().values())
    keys = state.entities.key[: int(state.entities.counters[2])]
    assert 0 < after < before
    assert set(shard_of_keys(keys[keys > DELETED], NAMES.shards).tolist()) <= set(kept)
    ids = state.ids.keys[state.ids.keys > DELETED]
    assert ids.size > 0 and set(shard_of_keys(ids, NAMES.shards).tolist()) <= set(kept)


def _play_with_crashes(n: int, crash_every: int) -> tuple[Cluster, dict, dict]:
    """`_play` event by event on 3 workers, snapshots every 5 batches; every `crash_every` events a worker
    crashes with its batch in flight (never committed), and comes back from the changelog."""
    cluster = Cluster(NAMES, _core, 3, batch_max_span_ms=1000, snapshot_every=5)
    cluster.now_ms = T0 + 20 * n
    traffic = DemoTraffic(seed=5, run="cluster")
    lost = 0
    for i in range(n):
        message = traffic.next_message(T0 + 20 * i)
        cluster.produce(message.topic.split(".")[-1], message.value, message.key, partition=i % 3)
        if i % crash_every == crash_every - 1:
            lost += cluster.crash(i // crash_every % 3, in_flight=True)
        cluster.run()
    assert lost > 5
    verdicts, features = {}, {}
    for out in cluster.outputs:
        if out.topic != NAMES.deadletter:
            record = json.loads(out.value)
            (features if out.topic == "features" else verdicts).setdefault(record["event_id"], []).append(record)
    return cluster, verdicts, features


def test_workers_that_crash_mid_batch_come_back_from_snapshots_and_changes_and_decide_as_if_they_had_not():
    _, expected, expected_features, _ = _play(3, 1200, drain_each=True)
    cluster, verdicts, features = _play_with_crashes(1200, crash_every=37)
    assert all(len(v) == 1 for v in verdicts.values()) and set(verdicts) == set(expected)
    assert {k: v[0]["features"] for k, v in features.items()} == {
        k: v["features"] for k, v in expected_features.items()
    }
    assert sum(is_snapshot for log in cluster.changelog.values() for is_snapshot, _ in log) > 3 * NAMES.shards
    assert cluster.pending() == 0


def test_records_split_to_fit_a_message_restore_the_same_state(monkeypatch):
    _, expected, expected_features, _ = _play(3, 600, drain_each=True)
    whole = _play_with_crashes(600, crash_every=37)[0]
    monkeypatch.setattr(changes, "MAX_RECORD_BYTES", 2_000)
    monkeypatch.setattr(exchange, "MAX_RECORD_BYTES", 300)
    cluster, verdicts, features = _play_with_crashes(600, crash_every=37)
    assert sum(map(len, cluster.changelog.values())) > 2 * sum(map(len, whole.changelog.values()))
    assert len(cluster.shards_topic()) > len(whole.shards_topic())
    assert all(len(v) == 1 for v in verdicts.values()) and set(verdicts) == set(expected)
    assert {k: v[0]["features"] for k, v in features.items()} == {
        k: v["features"] for k, v in expected_features.items()
    }


def test_in_batches_crashes_lose_no_event_and_decide_none_twice():
    _, expected, _, expected_dead = _play(3, 3000, drain_each=False)
    cluster = Cluster(NAMES, _core, 3, batch_max_events=400, batch_max_span_ms=1000, snapshot_every=3)
    cluster.now_ms = T0 + 20 * 3000
    traffic = DemoTraffic(seed=5, run="cluster")
    lost = 0
    for i in range(3000):
        message = traffic.next_message(T0 + 20 * i)
        cluster.produce(message.topic.split(".")[-1], message.value, message.key, partition=i % 3)
        if i % 500 == 499:  # a backlog has built up: each worker goes down with a batch in flight
            cluster.step(0)
            lost += sum(cluster.crash(w, in_flight=True) for w in range(3))
    cluster.run()
    verdicts = [json.loads(o.value)["event_id"] for o in cluster.outputs if o.topic in NAMES.verdicts.values()]
    dead = sum(o.topic == NAMES.deadletter for o in cluster.outputs)
    assert lost > 5 and sorted(verdicts) == sorted(expected) and dead == expected_dead and cluster.pending() == 0


def test_a_ruleset_put_in_force_while_events_wait_for_other_shards_reads_what_it_needs():
    """An event that waits is decided by the ruleset in force when its last answer comes."""
    quiet = Ruleset(name="quiet", version=1, decision=Decision(100, 500, 900), rule=[])
    strict = Ruleset(
        name="strict", version=2, decision=Decision(100, 500, 900),
        rule=[Rule(code="login.any", events=["login"], score=600, when=[Condition("logins_by_ip_10m", ">=", 1)])],
    )  # fmt: skip
    detectors = []

    def core() -> BatchCore:
        detectors.append(Detector(Program(quiet, SPECS), HASHES))
        return BatchCore(NAMES, SPECS, detectors[-1], HASHES, LATENESS_MS, 6 * 3_600_000)

    cluster = Cluster(NAMES, core, workers=3)
    cluster.now_ms = T0
    for i in range(60):
        login = LoginEvent(event_id=f"l{i}", ts=T0 + i, account_id=f"a{i}", ip=f"10.0.{i}.1", success=True)
        cluster.produce("login", msgspec.json.encode(login), partition=i % 3)
    for w in range(3):
        cluster.step(w)
    assert cluster.pending() > 0
    for detector in detectors:
        detector.program = Program(strict, SPECS)
    cluster.run()
    verdicts = [json.loads(o.value) for o in cluster.outputs if o.topic == NAMES.verdicts["login"]]
    strict_ones = [v for v in verdicts if v["ruleset"].startswith("strict")]
    assert len(verdicts) == 60 and len(strict_ones) >= cluster.pending() + 10
    assert all([r["code"] for r in v["reasons"]] == ["login.any"] for v in strict_ones)


def test_a_distinct_count_of_fingerprints_over_other_events_is_refused():
    spec = next(s for s in SPECS if s.aggregate == "distinct")
    odd = msgspec.structs.replace(spec, name="fingerprints_by_account_24h", entity="account_id", field="fingerprint",
                                  events=["login"])  # fmt: skip
    with pytest.raises(ConfigError, match="only device reports carry their own fingerprint"):
        Layout([*SPECS, odd], LATENESS_MS)


def test_a_core_restored_from_each_shards_committed_snapshot_decides_as_one_replayed_from_the_start():
    """What the columnar engine's restore does: `Restore` from the snapshot's offset (`CoreShard`), or from 0."""
    cluster = Cluster(NAMES, _core, 1, batch_max_events=300, batch_max_span_ms=1000, snapshot_every=4)
    traffic = DemoTraffic(seed=9, run="restore")
    for i in range(3000):
        message = traffic.next_message(T0 + 20 * i)
        cluster.produce(message.topic.split(".")[-1], message.value, message.key, partition=i % 3)
    cluster.now_ms = T0 + 20 * 3000
    cluster.run()
    logs = {shard: Log(dict(enumerate(r for _, r in log)), 0, len(log)) for shard, log in cluster.changelog.items()}
    snapshot_at = {shard: max(i for i, (is_snapshot, _) in enumerate(log) if is_snapshot)
                   for shard, log in cluster.changelog.items()}  # fmt: skip
    assert all(at > 0 for at in snapshot_at.values())

    def restored(from_snapshot: bool) -> BatchCore:
        core = _core()
        targets = {shard: CoreShard(core, shard, snapshot_at[shard] if from_snapshot else None) for shard in logs}
        Restore(FakeConsumer(logs), NAMES.changelog, targets).run()
        for target in targets.values():
            target.apply()
        return core

    later = [traffic.next_message(T0 + 20 * (3000 + i)) for i in range(400)]
    probes = [Incoming(m.topic, i % 3, 10_000 + i, m.key, m.value) for i, m in enumerate(later)]
    cores = [restored(from_snapshot=True), restored(from_snapshot=False), cluster.workers[0].core]
    assert sum(cores[0].state.entity_counts().values()) > 1000
    decided = [core.process(probes, T0 + 20 * 3400).outs for core in cores]
    assert [out.value for out in decided[0]] == [out.value for out in decided[1]] == [out.value for out in decided[2]]
    assert len([out for out in decided[0] if out.topic == "features"]) > 300
