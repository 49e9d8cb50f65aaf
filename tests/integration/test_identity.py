"""A worker refuses to start when it would route events differently from its cluster, or share a data dir."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from streamguard.settings import Settings
from streamguard.topics import admin
from streamguard.topics.spec import TopicSpec
from tests.integration.harness import Broker, Stack, Worker

pytestmark = pytest.mark.integration

REFUSED_WITHIN_S = 60.0


def _refused(worker: Worker) -> str:
    """Wait for `worker` to exit, check it failed, and give the one-line error it printed."""
    returncode = worker.process.wait(REFUSED_WITHIN_S)
    text = worker.log.read_text()
    assert returncode == 1, f"exit code {returncode}:\n{text[-3000:]}"
    errors = [line for line in text.splitlines() if line.startswith("streamguard: ")]
    assert len(errors) == 1, text[-3000:]
    return errors[0]


def _cluster_records(stack: Stack) -> list[dict[str, object]]:
    topic = f"{stack.prefix}{stack.app_id}.cluster"
    consumer = Consumer({"bootstrap.servers": stack.broker.bootstrap, "group.id": "test-identity"})
    try:
        _, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        records: list[dict[str, object]] = []
        deadline = time.monotonic() + 30
        while len(records) < high and time.monotonic() < deadline:
            for message in consumer.consume(10, 0.5):
                assert not message.error()
                records.append(json.loads(message.value()))
        return records
    finally:
        consumer.close()


@pytest.fixture
def bare_stack(broker: Broker, tmp_path: Path) -> Iterator[Stack]:
    """A stack whose topics the test creates itself."""
    stack = Stack(broker, tmp_path)
    yield stack
    stack.stop()


def test_workers_with_the_same_key_join_the_cluster_and_it_records_one_identity(stack: Stack):
    stack.start_worker("w1")
    stack.start_worker("w2")
    records = _cluster_records(stack)
    assert len(records) == 1, "the second worker found the identity and wrote none"
    assert set(records[0]) == {"hash_key_fingerprint", "shards", "created_at"}
    assert records[0]["shards"] == 6
    assert re.fullmatch(r"[0-9a-f]{16}", str(records[0]["hash_key_fingerprint"]))
    assert "integration-test-key" not in json.dumps(records[0])


def test_a_worker_takes_the_shard_count_of_the_apps_topics_whatever_its_setting(stack: Stack):
    """An app made with 6 shards stays at 6 when workers come with another STREAMGUARD_SHARDS (or a new default)."""
    worker = stack.start_worker("w1", env={"STREAMGUARD_SHARDS": "24"})
    assert worker.stats()["shards"] == list(range(6))
    assert [r["shards"] for r in _cluster_records(stack)] == [6]


def test_workers_started_together_agree_on_the_first_record(stack: Stack):
    """Both may find the topic empty and write; the first record is the identity, and it is theirs."""
    workers = [stack.start_worker(name, wait=False) for name in ("w1", "w2", "w3")]
    for worker in workers:
        worker.wait_ready()
    records = _cluster_records(stack)
    assert 1 <= len(records) <= 3
    assert len({(r["hash_key_fingerprint"], r["shards"]) for r in records}) == 1


def test_a_worker_with_another_hash_key_is_refused(stack: Stack):
    stack.start_worker("w1")
    error = _refused(stack.start_worker("w2", wait=False, env={"STREAMGUARD_HASH_KEY": "another-key-0123456789"}))
    assert "STREAMGUARD_HASH_KEY" in error and "fingerprint" in error
    assert "another-key" not in error
    assert len(_cluster_records(stack)) == 1


def test_a_first_worker_with_another_key_is_refused_too(stack: Stack):
    """The identity is whatever the first worker of the cluster recorded, whichever key that was."""
    stack.start_worker("w1", env={"STREAMGUARD_HASH_KEY": "the-first-key-0123456789"})
    error = _refused(stack.start_worker("w2", wait=False))
    assert "STREAMGUARD_HASH_KEY" in error


@pytest.mark.parametrize("internal", ["shards", "state-changelog"])
def test_a_worker_whose_shard_count_is_not_the_topics_is_refused(bare_stack: Stack, internal: str):
    name = f"{bare_stack.prefix}{bare_stack.app_id}.{internal}"
    client = admin.admin_client(Settings(bootstrap=bare_stack.broker.bootstrap))
    admin.create_missing(client, [TopicSpec(name=name, partitions=3)])
    bare_stack.create_topics()  # the others, as topics/ defines them
    error = _refused(bare_stack.start_worker(wait=False))
    shards, changelog = (3, 6) if internal == "shards" else (6, 3)
    prefix = f"{bare_stack.prefix}{bare_stack.app_id}"
    assert f"{prefix}.shards has {shards} partitions on the broker and {prefix}.state-changelog {changelog}" in error
    assert "must be equal" in error
    assert _cluster_records(bare_stack) == [], "nothing recorded for a topology that does not match"


def test_a_worker_whose_shard_count_is_not_the_clusters_is_refused(stack: Stack):
    """E.g. the shard topics were recreated with other partitions while the cluster kept its identity."""
    from streamguard.topics.identity import fingerprint

    topic = f"{stack.prefix}{stack.app_id}.cluster"
    first = {"hash_key_fingerprint": fingerprint(b"integration-test-key-0123456789"), "shards": 4, "created_at": 1}
    producer = Producer({"bootstrap.servers": stack.broker.bootstrap})
    producer.produce(topic, json.dumps(first).encode(), b"first")
    assert producer.flush(30) == 0
    error = _refused(stack.start_worker(wait=False))
    assert "have 6 partitions on the broker, but the cluster routes with 4 shards" in error
    assert "STREAMGUARD_HASH_KEY" not in error, "the key matches: only the shard count is named"


def test_a_second_worker_on_a_data_directory_in_use_is_refused_until_the_first_dies(stack: Stack):
    first = stack.start_worker("w1")
    same_dir = {"STREAMGUARD_DATA_DIR": str(stack.workdir / "w1")}
    error = _refused(stack.start_worker("w1-again", wait=False, env=same_dir))
    assert f"data directory {stack.workdir / 'w1'} is in use by another worker (pid {first.process.pid})" in error
    assert first.process.poll() is None, "the first worker is left alone"
    first.wait_ready(10)
    first.kill()
    stack.start_worker("w1-after", env=same_dir)  # the lock died with its process
