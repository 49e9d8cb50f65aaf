"""Faults on real processes, and the check that follows them.

Workers are real `streamguard worker` processes (tests/integration/harness.py)
on the real broker. A fault scenario plays labelled demo traffic into a stack
(paced, or all at once as a backlog), does things to the workers and the
broker while it plays, waits until the workers have caught up, stops them,
and hands everything committed to `streamguard.verify`, which compares it
with the input topics (V1-V4, V6, V7).
"""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import orjson
from confluent_kafka import Producer

from streamguard.demo.traffic import DemoTraffic, Message
from streamguard.errors import BrokerError
from streamguard.events import EVENT_TYPES, TransactionEvent
from streamguard.features.spec import load_features
from streamguard.settings import load
from streamguard.verify import Report, read_topics, verify
from tests.integration.harness import Stack, Worker
from tests.verify_features import check_probe_features

NOT_ATTACKS = ("benign", "bad_input", "duplicate")


@dataclass
class Played:
    """What a scenario sent: the label of every valid event, and counts by label."""

    labels: dict[str, str] = field(default_factory=dict)
    sent: Counter[str] = field(default_factory=Counter)
    thread: threading.Thread | None = None

    def join(self) -> None:
        if self.thread is not None:
            self.thread.join()


def traffic(seed: int, bad_share: float = 0.02, duplicate_share: float = 0.01) -> DemoTraffic:
    return DemoTraffic(seed=seed, run=f"f{seed}-{time.time_ns() // 1_000_000:x}", bad_share=bad_share,
                       duplicate_share=duplicate_share)  # fmt: skip


def backlog(stack: Stack, events: int, seed: int = 1, rate: float = 1000.0) -> Played:
    """`events` messages produced at once, their `ts` spaced at `rate` and ending now (a catch-up)."""
    demo, played = traffic(seed), Played()
    start_ms = time.time() * 1000 - events * 1000 / rate
    _send(stack, (demo.next_message(int(start_ms + i * 1000 / rate)) for i in range(events)), played, None)
    return played


def play(stack: Stack, rate: float, seconds: float, seed: int = 1) -> Played:
    """Messages stamped and sent at the wall clock, `rate` a second for `seconds`, on a thread of their own."""
    demo, played = traffic(seed), Played()

    def paced() -> Iterator[Message]:
        started = time.monotonic()
        for i in range(int(rate * seconds)):
            delay = started + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            yield demo.next_message(int(time.time() * 1000))

    played.thread = threading.Thread(target=_send, args=(stack, paced(), played, 0.0), daemon=True)
    played.thread.start()
    return played


def _send(stack: Stack, messages: Iterator[Message], played: Played, poll_s: float | None) -> None:
    producer = Producer(
        {"bootstrap.servers": stack.broker.bootstrap, "linger.ms": 5, "enable.idempotence": True,
         "partitioner": "murmur2_random", "message.max.bytes": 2_000_000}
    )  # fmt: skip
    for message in messages:
        while True:
            try:
                producer.produce(stack.topic(message.topic), message.value, message.key)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
        played.sent[message.label] += 1
        if message.event_id is not None and message.label != "duplicate":
            played.labels[message.event_id] = message.label
    producer.flush(300)  # what the broker took is what the verifier checks against: it reads the input topics


# --- faults --------------------------------------------------------------------


def freeze(worker: Worker, seconds: float) -> None:
    """SIGSTOP the worker for `seconds`, then SIGCONT: a VM pause, a long GC, a network partition."""
    worker.process.send_signal(signal.SIGSTOP)
    try:
        time.sleep(seconds)
    finally:
        worker.process.send_signal(signal.SIGCONT)


def restart(stack: Stack, worker: Worker, name: str, how: str, fresh: bool = False) -> Worker:
    """Stop `worker` with SIGKILL ("kill") or SIGTERM ("term") and start it again (on a new data dir if `fresh`)."""
    if how == "kill":
        worker.kill()
    else:
        assert worker.terminate(120) == 0, f"{name} did not stop cleanly on SIGTERM"
    return stack.start_worker(f"{name}-{time.monotonic_ns()}" if fresh else name, wait=False)


def alive(stack: Stack) -> list[Worker]:
    return [w for w in stack.workers if w.process.poll() is None]


# --- the check -----------------------------------------------------------------


def settle_and_verify(stack: Stack, timeout: float = 240.0) -> Report:
    """Wait until the workers have decided everything, stop them, then verify everything (state included)."""
    wait_decided(stack, timeout)
    for worker in alive(stack):
        assert worker.terminate(120) == 0, "a worker did not stop cleanly"
    return verify(load(stack.env()), data_dirs=data_dirs(stack))


def wait_decided(stack: Stack, timeout: float = 240.0) -> None:
    """Until V1-V4 pass (or `timeout`): every input decided and committed. A worker that died on its own fails."""
    settings = load(stack.env())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for worker in stack.workers:
            if worker.process.poll() not in (None, -9, -15, 0):
                tail = worker.log.read_text()[-3000:]
                raise AssertionError(f"a worker died with {worker.process.returncode}:\n{tail}")
        try:
            if verify(settings).passed:
                return
        except BrokerError as exc:  # a broker just restarted: ask again
            print("verify, waiting:", exc)
        time.sleep(3.0)


def data_dirs(stack: Stack) -> list[Path]:
    return sorted(p for p in stack.workdir.iterdir() if (p / "state").is_dir())


def detection(stack: Stack, played: Played) -> dict[str, float]:
    """The share of each attack family's events not allowed, from the committed verdicts."""
    settings = load(stack.env())
    caught: Counter[str] = Counter()
    total: Counter[str] = Counter()
    for record in read_topics(settings, [settings.topic(f"verdicts.{t}") for t in EVENT_TYPES]):
        verdict = orjson.loads(record.value or b"{}")
        label = played.labels.get(verdict.get("event_id", ""))
        if label is None or label in NOT_ATTACKS:
            continue
        total[label] += 1
        caught[label] += verdict["decision"] != "allow"
    return {label: caught[label] / total[label] for label in sorted(total)}


def assert_exactly_once(report: Report) -> None:
    assert report.passed, "\n" + report.format()


def assert_counted_once(stack: Stack, probes: list[TransactionEvent]) -> None:
    """Send `probes` (refunds: they count in no feature) now, and check their feature values against brute force.

    A duplicate counted twice anywhere shows as a value above brute force's.
    """
    stack.produce(("events.transaction", None, msgspec.json.encode(p)) for p in probes)
    assert_exactly_once(settle_and_verify(stack))
    settings = load(stack.env())
    entities = {"ip", "ip_network", "account_id", "global"}  # a refund with an account and an IP reads these
    specs = [s for s in load_features(settings.allowed_lateness_ms) if s.entity in entities]
    check = check_probe_features(settings, [p.event_id for p in probes], specs)
    assert check.passed, check.format()
