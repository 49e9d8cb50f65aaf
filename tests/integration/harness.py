"""A real local broker and real worker processes, for the integration tests.

Each test gets its own topic prefix, app id (consumer group) and data
directories, so tests never see each other's records.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from confluent_kafka import Consumer, Producer, TopicPartition

from streamguard.events import EVENT_TYPES
from streamguard.settings import load
from streamguard.topics import admin
from streamguard.topics.spec import TopicSpec, load_specs

ROOT = Path(__file__).resolve().parents[2]
KAFKA_SH = ROOT / "deploy" / "kafka" / "kafka.sh"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Broker:
    """The test broker, started and stopped through the project's own script."""

    port: int
    home: Path

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def script(self, action: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "STREAMGUARD_KAFKA_PORT": str(self.port), "STREAMGUARD_KAFKA_HOME": str(self.home)}
        return subprocess.run([str(KAFKA_SH), action], env=env, text=True, capture_output=True, timeout=300)

    def start(self) -> None:
        """Start the broker (no-op if running) and wait until it is ready."""
        _check(self.script("start"), "start")

    def kill(self) -> None:
        """SIGKILL the broker (kill -9 of its recorded PID): no controlled shutdown."""
        _check(self.script("kill"), "kill")


def _check(done: subprocess.CompletedProcess[str], what: str) -> subprocess.CompletedProcess[str]:
    assert done.returncode == 0, f"kafka.sh {what} exited with {done.returncode}:\n{done.stderr}{done.stdout}"
    return done


def free_port_block(n: int) -> int:
    """The first of `n` consecutive free ports on 127.0.0.1, below the kernel's ephemeral range."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 32000 - n)
        try:
            with contextlib.ExitStack() as stack:
                for port in range(base, base + n):
                    stack.enter_context(socket.socket()).bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise AssertionError(f"no {n} consecutive free ports")


@dataclass
class Cluster:
    """A local N-node KRaft cluster (kafka.sh with STREAMGUARD_KAFKA_NODES=N).

    Node i (1..N) listens on `port + 2*(i-1)` and its controller on the port after that;
    its data, log and PID file are in `home/node-i`.
    """

    home: Path
    port: int  # node 1's client port; the cluster uses 2*nodes ports from here
    nodes: int = 3
    heap: str = "512m"

    def node_port(self, node: int) -> int:
        return self.port + 2 * (node - 1)

    def node_bootstrap(self, node: int) -> str:
        return f"127.0.0.1:{self.node_port(node)}"

    @property
    def bootstrap(self) -> str:
        """Every node's address, comma-separated."""
        return ",".join(self.node_bootstrap(i) for i in range(1, self.nodes + 1))

    def node_home(self, node: int) -> Path:
        return self.home / f"node-{node}"

    def pid(self, node: int) -> int | None:
        """The PID kafka.sh recorded for the node, if it is still recorded."""
        try:
            return int((self.node_home(node) / "broker.pid").read_text())
        except FileNotFoundError:
            return None

    def script(self, action: str, *args: str | int) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "STREAMGUARD_KAFKA_NODES": str(self.nodes),
            "STREAMGUARD_KAFKA_PORT": str(self.port),
            "STREAMGUARD_KAFKA_HOME": str(self.home),
            "STREAMGUARD_KAFKA_HEAP": self.heap,
        }
        env.pop("STREAMGUARD_KAFKA_CONTROLLER_PORT", None)  # controllers follow the client ports
        command = [str(KAFKA_SH), action, *map(str, args)]
        return subprocess.run(command, env=env, text=True, capture_output=True, timeout=300)

    def start(self) -> None:
        """Start every node that is not running and wait until all are ready."""
        _check(self.script("start"), "start")

    def stop(self) -> None:
        _check(self.script("stop"), "stop")

    def kill(self, node: int) -> None:
        """SIGKILL (kill -9) one node by its recorded PID."""
        _check(self.script("kill", node), f"kill {node}")

    def start_node(self, node: int) -> None:
        """Start one node and wait until it is ready (the others must hold the quorum)."""
        _check(self.script("start-node", node), f"start-node {node}")

    def stop_node(self, node: int) -> None:
        """SIGTERM one node (a controlled shutdown) and wait until it is gone."""
        _check(self.script("stop-node", node), f"stop-node {node}")

    def running(self) -> bool:
        return self.script("status").returncode == 0


@dataclass
class Worker:
    process: subprocess.Popen[bytes]
    web_port: int
    log: Path

    def stats(self) -> dict[str, Any]:
        return self._page("stats")

    def rules(self) -> dict[str, Any]:
        """The ruleset in force, the list entries and what was rejected (`/streamguard/rules/`)."""
        return self._page("rules")

    def _page(self, name: str) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.web_port}/streamguard/{name}/"
        with urllib.request.urlopen(url, timeout=2) as response:
            return dict(json.load(response))

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"worker exited with {self.process.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                stats = self.stats()
                if stats["ready"] and stats["shards"]:
                    return
            except OSError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"worker not ready in {timeout} s:\n{self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    def terminate(self, timeout: float = 60) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)


@dataclass
class Stack:
    """One test's topics, workers, producer and readers."""

    broker: Broker
    workdir: Path
    prefix: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:8]}-")
    app_id: str = "sg"
    workers: list[Worker] = field(default_factory=list)
    readers: list[Reader] = field(default_factory=list)

    features: bool = False  # publish per-event feature values on "<prefix>features"
    replication: int = 1  # of every topic it creates (3 on a three-broker cluster)
    # The tests' apps have the 6 shards every app had before the count was a setting: fewer stores and
    # partitions per worker on a small machine (test_topics and test_reshard create other counts).
    shards: int = 6
    engine: str = ""  # the workers' STREAMGUARD_ENGINE, for a test of one engine; else the environment's

    def env(self) -> dict[str, str]:
        extra = {"STREAMGUARD_FEATURES_TOPIC": "features"} if self.features else {}
        engine = self.engine or os.environ.get("STREAMGUARD_ENGINE")  # the whole suite on another engine
        if engine:
            extra["STREAMGUARD_ENGINE"] = engine
        return {
            **extra,
            "STREAMGUARD_BOOTSTRAP": self.broker.bootstrap,
            "STREAMGUARD_TOPIC_PREFIX": self.prefix,
            "STREAMGUARD_APP_ID": self.app_id,
            "STREAMGUARD_HASH_KEY": "integration-test-key-0123456789",
            "STREAMGUARD_LOG_LEVEL": "INFO",
            "STREAMGUARD_SHARDS": str(self.shards),
        }

    def topic(self, name: str) -> str:
        return self.prefix + name

    def create_topics(self) -> list[str]:
        settings = load(self.env())
        specs = load_specs(settings.topic_prefix, settings.app_id, shards=settings.shards)
        if self.features:
            specs.append(TopicSpec(name=self.topic("features"), partitions=6))
        specs = [msgspec.structs.replace(spec, replication=self.replication) for spec in specs]
        return admin.create_missing(admin.admin_client(settings), specs)

    def start_worker(self, name: str = "w1", wait: bool = True, env: dict[str, str] | None = None) -> Worker:
        """A worker with data in `workdir/name` and its log in `workdir/name.log`; `env` overrides the variables."""
        port = free_port()
        log = self.workdir / f"{name}.log"
        env = {
            **os.environ,
            **self.env(),
            "STREAMGUARD_WEB_PORT": str(port),
            "STREAMGUARD_DATA_DIR": str(self.workdir / name),
            **(env or {}),
        }
        with log.open("ab") as out:  # the child keeps its own copy of the descriptor
            process = subprocess.Popen(
                [sys.executable, "-m", "streamguard.cli", "worker"], env=env, stdout=out, stderr=subprocess.STDOUT
            )
        worker = Worker(process, port, log)
        self.workers.append(worker)
        if wait:
            worker.wait_ready()
        return worker

    def produce(self, messages: Iterable[tuple[str, bytes | None, bytes | None]], partition: int | None = None) -> int:
        """Send (topic, key, value) messages, topic names without the prefix; how many."""
        producer = Producer(
            {"bootstrap.servers": self.broker.bootstrap, "linger.ms": 5, "partitioner": "murmur2_random"}
        )
        n = 0
        for topic, key, value in messages:
            extra = {} if partition is None else {"partition": partition}
            producer.produce(self.topic(topic), value, key, **extra)
            producer.poll(0)
            n += 1
        assert producer.flush(30) == 0
        return n

    def reader(self, topics: list[str] | None = None) -> Reader:
        """Reads verdicts and dead letters, or the records of `topics` (full names) as verdicts."""
        reader = Reader(self, topics)
        self.readers.append(reader)
        return reader

    def stop(self) -> None:
        for reader in self.readers:
            reader.close()
        for worker in self.workers:
            if worker.process.poll() is None:
                worker.process.kill()
                worker.process.wait(30)


class Reader:
    """Reads verdicts and dead letters (committed only) from the beginning."""

    def __init__(self, stack: Stack, topics: list[str] | None = None) -> None:
        self.deadletter_topic = stack.topic("deadletter")
        self.consumer = Consumer(
            {
                "bootstrap.servers": stack.broker.bootstrap,
                "group.id": f"reader-{uuid.uuid4()}",
                "isolation.level": "read_committed",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            }
        )
        topics = topics or [stack.topic(f"verdicts.{t}") for t in EVENT_TYPES] + [self.deadletter_topic]
        meta = self.consumer.list_topics(timeout=10).topics
        self.consumer.assign([TopicPartition(t, p, 0) for t in topics for p in meta[t].partitions])
        self.verdicts: list[dict[str, Any]] = []
        self.verdict_keys: list[bytes] = []
        self.deadletters: list[Any] = []
        self.closed = False

    def read_until(self, verdicts: int, deadletters: int = 0, timeout: float = 60.0, settle: float = 3.0) -> None:
        """Read until the counts are reached, then `settle` seconds more to catch any extra record."""
        deadline = time.monotonic() + timeout
        reached_at = None
        while time.monotonic() < deadline:
            for msg in self.consumer.consume(1000, 0.2):
                if msg.error():
                    continue
                if msg.topic() == self.deadletter_topic:
                    self.deadletters.append(msg)
                else:
                    self.verdicts.append(json.loads(msg.value()))
                    self.verdict_keys.append(msg.key())
            if len(self.verdicts) >= verdicts and len(self.deadletters) >= deadletters:
                reached_at = reached_at or time.monotonic()
                if time.monotonic() - reached_at >= settle:
                    return
        raise AssertionError(
            f"got {len(self.verdicts)}/{verdicts} verdicts and "
            f"{len(self.deadletters)}/{deadletters} dead letters in {timeout} s"
        )

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.consumer.close()


def make_events(n: int, run: str, ts: int | None = None) -> list[tuple[str, bytes, bytes, str]]:
    """`n` valid events over all five types: (topic, key, value, event_id)."""
    ts = ts or int(time.time() * 1000)
    out = []
    for i in range(n):
        kind = EVENT_TYPES[i % len(EVENT_TYPES)]
        event_id = f"{run}-{i:06d}"
        account, ip = f"acct_{i % 97}", f"10.{i % 7}.{i % 11}.{1 + i % 250}"
        fields: dict[str, Any] = {
            "device": {"device_id": f"dev_{i % 89}", "account_id": account, "ip": ip},
            "login": {"account_id": account, "ip": ip, "success": i % 3 != 0},
            "registration": {"account_id": account, "ip": ip, "phone": f"+86138{i:08d}"},
            "sms": {"phone": f"+86138{i % 1000:08d}", "ip": ip, "purpose": "login"},
            "transaction": {"account_id": account, "amount": 100 + i, "currency": "CNY", "kind": "payment"},
        }[kind]
        value = json.dumps({"event_id": event_id, "type": kind, "ts": ts + i, **fields}).encode()
        out.append((f"events.{kind}", account.encode(), value, event_id))
    return out
