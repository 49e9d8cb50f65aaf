"""`streamguard reshard` against the real broker: state made with 6 shards carries over to 12, exactly."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from streamguard.errors import AppBusy
from streamguard.reshard import run
from streamguard.settings import load
from streamguard.topics import admin
from streamguard.verify import verify
from tests.integration.harness import Stack, make_events
from tests.integration.test_features import _assert_exact, _history, _send

pytestmark = pytest.mark.integration


def _reshard(stack: Stack, to: int) -> subprocess.CompletedProcess[str]:
    workdir = str(stack.workdir / "reshard")
    return subprocess.run(
        [sys.executable, "-m", "streamguard.cli", "reshard", "--to", str(to), "--workdir", workdir],
        env={**stack.env(), "PATH": "/usr/bin:/bin"},
        text=True,
        capture_output=True,
        timeout=300,
    )


def _partitions(stack: Stack, name: str) -> int:
    topics = admin.admin_client(load(stack.env())).list_topics(timeout=30).topics
    return len(topics[stack.topic(f"{stack.app_id}.{name}")].partitions)


def _identity(stack: Stack) -> dict[str, object]:
    topic = stack.topic(f"{stack.app_id}.cluster")
    consumer = Consumer({"bootstrap.servers": stack.broker.bootstrap, "group.id": "test-reshard"})
    try:
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        while True:
            message = consumer.poll(30)
            assert message is not None and not message.error()
            return dict(json.loads(message.value()))
    finally:
        consumer.close()


def test_features_and_remembered_ids_carry_over_from_6_shards_to_12(feature_stack: Stack):
    reports, history, fingerprint_of, probes = sent = _history(feature_stack.prefix)
    worker = feature_stack.start_worker("w1")
    reader = feature_stack.reader([feature_stack.topic("features")])
    _send(feature_stack, reports)
    reader.read_until(len(reports), settle=0)
    _send(feature_stack, history)
    reader.read_until(len(reports) + len(history), timeout=120, settle=0)
    assert worker.terminate() == 0

    done = _reshard(feature_stack, 12)
    assert done.returncode == 0, done.stderr
    assert "re-sharded sg from 6 to 12 shards" in done.stdout
    assert _partitions(feature_stack, "shards") == _partitions(feature_stack, "state-changelog") == 12
    identity = _identity(feature_stack)
    assert (identity["shards"], identity["resharded_from"]) == (12, 6)

    again = feature_stack.start_worker("w1")  # the same data directory
    assert again.stats()["shards"] == list(range(12))
    assert "entities after their restore" in again.log.read_text(), "each new shard restored from its snapshot"
    _send(feature_stack, history[:50] + probes)  # 50 ids decided before re-sharding, sent again
    reader.read_until(len(reports) + len(history) + len(probes), timeout=60)
    by_id = {v["event_id"]: v for v in reader.verdicts}
    assert len(by_id) == len(reader.verdicts), "no second record for an id remembered before re-sharding"
    _assert_exact(({p.event_id: by_id[p.event_id]["features"] for p in probes}, 0.0, sent))
    assert again.terminate() == 0
    report = verify(load(feature_stack.env()), [feature_stack.workdir / "w1"])
    assert report.passed, report.format()


def test_a_reshard_is_refused_while_a_worker_runs_and_changes_nothing(stack: Stack):
    stack.start_worker("w1")
    refused = _reshard(stack, 12)
    assert refused.returncode == 1
    (line,) = refused.stderr.strip().splitlines()[-1:]
    assert line.startswith("streamguard: sg is not at rest, nothing was changed: the consumer group 'sg' has 1 members")
    assert _partitions(stack, "shards") == 6 and _identity(stack)["shards"] == 6


def test_a_reshard_that_failed_midway_resumes_from_its_staging(stack: Stack, monkeypatch):
    events = make_events(300, stack.prefix)
    worker = stack.start_worker("w1")
    reader = stack.reader()
    stack.produce((topic, key, value) for topic, key, value, _ in events)
    reader.read_until(len(events), settle=0)
    assert worker.terminate() == 0
    settings = load(stack.env())

    def broker_lost(*_: object) -> None:
        raise AppBusy("the broker went away while the changelog was written")

    with monkeypatch.context() as patched:
        patched.setattr(run, "_write_changelog", broker_lost)
        with pytest.raises(AppBusy):
            run.reshard(settings, 3, stack.workdir / "reshard")
    assert _partitions(stack, "shards") == 3, "the old topics are gone: only the staging holds the state"
    other = _reshard(stack, 12)
    assert other.returncode == 1 and "finish it first, `streamguard reshard --to 3`" in other.stderr
    resumed = _reshard(stack, 3)
    assert resumed.returncode == 0 and "resuming" in resumed.stdout, resumed.stderr
    assert _identity(stack)["shards"] == 3

    stack.start_worker("w1")
    stack.produce((topic, key, value) for topic, key, value, _ in events[:100])  # all decided before
    more = make_events(50, stack.prefix + "more")
    stack.produce((topic, key, value) for topic, key, value, _ in more)
    reader.read_until(len(events) + len(more))
    assert sorted(v["event_id"] for v in reader.verdicts) == sorted(e[3] for e in events + more)
