"""A real local broker and real worker processes, for the integration tests.

Each test gets its own topic prefix, app id (consumer group) and data
directories, so tests never see each other's records.
"""

from __future__ import annotations

import json
import os
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

    def env(self) -> dict[str, str]:
        extra = {"STREAMGUARD_FEATURES_TOPIC": "features"} if self.features else {}
        return {
            **extra,
            "STREAMGUARD_BOOTSTRAP": self.broker.bootstrap,
            "STREAMGUARD_TOPIC_PREFIX": self.prefix,
            "STREAMGUARD_APP_ID": self.app_id,
            "STREAMGUARD_HASH_KEY": "integration-test-key-0123456789",
            "STREAMGUARD_LOG_LEVEL": "INFO",
        }

    def topic(self, name: str) -> str:
        return self.prefix + name

    def create_topics(self) -> list[str]:
        settings = load(self.env())
        specs = load_specs(settings.topic_prefix, settings.app_id)
        if self.features:
            specs.append(TopicSpec(name=self.topic("features"), partitions=6))
        return admin.create_missing(admin.admin_client(self.broker.bootstrap), specs)

    def start_worker(self, name: str = "w1", wait: bool = True) -> Worker:
        port = free_port()
        log = self.workdir / f"{name}.log"
        env = {
            **os.environ,
            **self.env(),
            "STREAMGUARD_WEB_PORT": str(port),
            "STREAMGUARD_DATA_DIR": str(self.workdir / name),
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
