"""kill -9 of a broker: a three-node cluster keeps taking (transactional) writes and the node rejoins;
a single broker killed and restarted keeps what it had acknowledged.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, Producer, TopicCollection, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from tests.integration.harness import Broker, Cluster, free_port_block

pytestmark = pytest.mark.integration


def _wait(check: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds until `check()` holds."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if check():
            return time.monotonic() - started
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {timeout} s")


def _port_closed(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _create_topic(bootstrap: str, topic: str, replicas: int, min_isr: int) -> AdminClient:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    new = NewTopic(topic, num_partitions=6, replication_factor=replicas, config={"min.insync.replicas": str(min_isr)})
    admin.create_topics([new], operation_timeout=30)[topic].result(60)
    return admin


def _isr(admin: AdminClient, topic: str) -> dict[int, set[int]]:
    """Partition -> the ids of its in-sync replicas."""
    try:
        desc = admin.describe_topics(TopicCollection([topic]), request_timeout=10)[topic].result(15)
    except Exception:  # a node just killed or started: ask again
        return {}
    return {p.id: {n.id for n in p.isr} for p in desc.partitions}


def _isr_is(admin: AdminClient, topic: str, nodes: set[int]) -> bool:
    """Every partition of `topic` (6) has exactly `nodes` in sync."""
    isr = _isr(admin, topic)
    return len(isr) == 6 and all(replicas == nodes for replicas in isr.values())


def _isr_without(admin: AdminClient, topic: str, node: int) -> bool:
    """No partition of `topic` (6) has `node` in sync any more."""
    isr = _isr(admin, topic)
    return len(isr) == 6 and all(node not in replicas for replicas in isr.values())


def _leader(admin: AdminClient, topic: str, partition: int) -> int:
    desc = admin.describe_topics(TopicCollection([topic]), request_timeout=10)[topic].result(15)
    return int(next(p.leader.id for p in desc.partitions if p.id == partition))


class _Writer:
    """An idempotent acks=all producer and a transactional one, on one topic; `sent` is what was committed."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self.sent: set[str] = set()
        self.errors: list[KafkaError] = []
        common = {"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5}
        self.plain = Producer({**common, "enable.idempotence": True})
        self.tx = Producer({**common, "transactional.id": f"sg-cluster-{uuid.uuid4().hex[:8]}"})
        self.tx.init_transactions(60)

    def _delivered(self, err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            self.errors.append(err)

    def _send(self, producer: Producer, label: str, n: int) -> list[str]:
        values = [f"{label}-{i:04d}" for i in range(n)]
        for value in values:
            producer.produce(self.topic, value.encode(), value.encode(), on_delivery=self._delivered)
            producer.poll(0)
        return values

    def plain_batch(self, label: str, n: int = 100) -> None:
        values = self._send(self.plain, label, n)
        assert self.plain.flush(90) == 0, "acks=all records still unacknowledged"
        assert not self.errors, self.errors
        self.sent.update(values)

    def tx_batch(self, label: str, n: int = 100, commit: bool = True) -> None:
        self.tx.begin_transaction()
        values = self._send(self.tx, label, n)
        if commit:
            self.tx.commit_transaction(90)
            self.sent.update(values)
        else:
            self.tx.flush(90)
            self.tx.abort_transaction(90)
        assert not self.errors, self.errors


def _read_committed(bootstrap: str, topic: str, expect: int, timeout: float = 60.0) -> list[str]:
    """Every committed value of `topic` (read_committed, from the beginning): `expect` of them, then 2 s more."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4()}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
        }
    )
    try:
        partitions = consumer.list_topics(topic, timeout=15).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        values: list[str] = []
        deadline, reached = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            values += [m.value().decode() for m in consumer.consume(1000, 0.5) if not m.error()]
            if len(values) >= expect:
                reached = reached or time.monotonic()
                if time.monotonic() - reached >= 2:
                    return values
        raise AssertionError(f"read {len(values)}/{expect} committed records of {topic} in {timeout} s")
    finally:
        consumer.close()


# Twice in CI-like runs its ISR did not settle in time: `make faults` runs it (the matrix cluster scenario always runs).
@pytest.mark.long_fault
def test_cluster_survives_kill_9_and_the_node_rejoins(cluster: Cluster) -> None:
    started = time.monotonic()
    timings: dict[str, float] = {}
    everyone = set(range(1, cluster.nodes + 1))
    topic = f"cluster-{uuid.uuid4().hex[:8]}"
    admin = _create_topic(cluster.bootstrap, topic, replicas=3, min_isr=2)
    _wait(lambda: _isr_is(admin, topic, everyone), 90, "ISR of 3 after create")

    writer = _Writer(cluster.bootstrap, topic)
    writer.plain_batch("plain-before")
    writer.tx_batch("tx-before")

    # kill -9 the leader of partition 0: leadership, and maybe the transaction coordinator, must move.
    victim = _leader(admin, topic, 0)
    pid = cluster.pid(victim)
    t = time.monotonic()
    cluster.kill(victim)
    assert cluster.pid(victim) is None and pid is not None
    assert _port_closed(cluster.node_port(victim))
    assert cluster.script("status").returncode == 3

    # With two of three replicas left (= min.insync.replicas), writes go on, transactions too.
    writer.tx_batch("tx-after")
    writer.plain_batch("plain-after")
    writer.tx_batch("tx-aborted", n=50, commit=False)
    timings["writes after kill -9"] = time.monotonic() - t
    survivors = ",".join(cluster.node_bootstrap(i) for i in sorted(everyone - {victim}))
    asked = AdminClient({"bootstrap.servers": survivors})  # not the dead node, which a client may keep asking
    _wait(lambda: _isr_without(asked, topic, victim), 120, f"node {victim} out of the ISR")
    t = time.monotonic()
    values = _read_committed(survivors, topic, expect=len(writer.sent))
    timings["read committed, two nodes"] = time.monotonic() - t
    assert sorted(values) == sorted(writer.sent)  # each committed record once; the aborted ones not at all
    assert len(writer.sent) == 400

    t = time.monotonic()
    cluster.start_node(victim)
    timings["start-node"] = time.monotonic() - t
    timings["ISR back to 3"] = timings["start-node"] + _wait(
        lambda: _isr_is(admin, topic, everyone), 90, "ISR back to 3"
    )

    # The node has caught up, not only rejoined: with another node killed, its copy is one of the two left.
    other = next(i for i in sorted(everyone) if i != victim)
    cluster.kill(other)
    t = time.monotonic()
    writer.tx_batch("tx-second-kill")
    remaining = ",".join(cluster.node_bootstrap(i) for i in sorted(everyone - {other}))
    values = _read_committed(remaining, topic, expect=len(writer.sent))
    assert sorted(values) == sorted(writer.sent)
    timings["write + read, second kill"] = time.monotonic() - t
    cluster.start_node(other)
    _wait(lambda: _isr_is(admin, topic, everyone), 90, "ISR of 3 again")
    assert cluster.running()

    writer.plain.flush(10)
    writer.tx.flush(10)
    timings["total"] = time.monotonic() - started
    print(f"\ncluster kill -9 (node {victim}, then {other}):", {k: round(v, 1) for k, v in timings.items()})


def test_single_broker_kill_9_and_restart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMGUARD_KAFKA_HEAP", "512m")
    for name in ("STREAMGUARD_KAFKA_NODES", "STREAMGUARD_KAFKA_CONTROLLER_PORT"):
        monkeypatch.delenv(name, raising=False)
    broker = Broker(free_port_block(2), tmp_path / "kafka")
    started = time.monotonic()
    try:
        broker.start()
        topic = f"single-{uuid.uuid4().hex[:8]}"
        _create_topic(broker.bootstrap, topic, replicas=1, min_isr=1)
        writer = _Writer(broker.bootstrap, topic)
        writer.plain_batch("plain-before", n=50)
        writer.tx_batch("tx-before", n=50)
        writer.plain.flush(10)
        writer.tx.flush(10)
        del writer

        t = time.monotonic()
        broker.kill()
        status = broker.script("status")
        assert status.returncode == 3 and status.stdout.strip() == "not running"
        assert _port_closed(broker.port)
        assert not (broker.home / "broker.pid").exists()
        broker.start()  # ready only once this run logged "Kafka Server started", not the killed one
        restart = time.monotonic() - t
        assert broker.script("status").returncode == 0

        # Acknowledged before the kill is still there, and the restarted broker takes transactions at once.
        writer = _Writer(broker.bootstrap, topic)
        writer.tx_batch("tx-after", n=50)
        values = _read_committed(broker.bootstrap, topic, expect=150)
        assert sorted(values) == sorted(
            {f"{label}-{i:04d}" for label in ("plain-before", "tx-before", "tx-after") for i in range(50)}
        )
        print(f"\nsingle broker: kill -9 + start {restart:.1f} s, total {time.monotonic() - started:.1f} s")
    finally:
        broker.script("stop")
