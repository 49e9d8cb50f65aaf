"""Send demo traffic at a steady rate and draw a live summary of the verdicts that come back."""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import orjson
from confluent_kafka import Consumer, Producer, TopicPartition

from streamguard import kafka_config
from streamguard.demo.traffic import DemoTraffic
from streamguard.events import EVENT_TYPES
from streamguard.settings import Settings

BAR_WIDTH = 30


@dataclass
class Tally:
    sent: int = 0
    expected_verdicts: int = 0
    expected_deadletters: int = 0
    verdicts: Counter[str] = field(default_factory=Counter)  # "type decision"
    flagged: Counter[str] = field(default_factory=Counter)  # label -> non-allow verdicts
    labels: Counter[str] = field(default_factory=Counter)  # label -> valid events sent
    deadletters: Counter[str] = field(default_factory=Counter)  # sg-error -> count
    label_of: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


def run_demo(settings: Settings, rate: float, seconds: float, seed: int) -> int:
    tally = Tally()
    stop = threading.Event()
    consumer = _results_consumer(settings)  # positioned before the first message is sent, or early results are missed
    reader = threading.Thread(target=_read_results, args=(settings, consumer, tally, stop), daemon=True)
    reader.start()
    total = int(rate * seconds)
    producer = Producer(kafka_config.demo_producer(settings))
    traffic = DemoTraffic(seed=seed)
    started = last_draw = time.monotonic()
    for i in range(total):
        _pace(started, i, rate)
        message = traffic.next_message(int(time.time() * 1000))
        producer.produce(settings.topic(message.topic), message.value, message.key)
        producer.poll(0)
        with tally.lock:
            tally.sent += 1
            if message.event_id is not None:
                tally.expected_verdicts += 1
                tally.labels[message.label] += 1
                tally.label_of[message.event_id] = message.label
            elif message.label == "bad_input":
                tally.expected_deadletters += 1
        if time.monotonic() - last_draw > 0.5:
            _draw(tally, total, time.monotonic() - started)
            last_draw = time.monotonic()
    producer.flush(30)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not _caught_up(tally):
        _draw(tally, total, time.monotonic() - started)
        time.sleep(0.5)
    stop.set()
    _draw(tally, total, time.monotonic() - started, final=True)
    print("\nThe broker and the worker keep running: `make down` stops them.")
    return 0 if _caught_up(tally) else 1


def _pace(started: float, i: int, rate: float) -> None:
    delay = started + i / rate - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def _caught_up(tally: Tally) -> bool:
    with tally.lock:
        return (
            sum(tally.verdicts.values()) >= tally.expected_verdicts
            and sum(tally.deadletters.values()) >= tally.expected_deadletters
        )


def _results_consumer(settings: Settings) -> Consumer:
    """A consumer of the verdict and dead-letter topics, assigned at their current ends."""
    topics = [settings.topic(f"verdicts.{t}") for t in EVENT_TYPES] + [settings.topic("deadletter")]
    consumer = Consumer(kafka_config.demo_results_reader(settings))
    consumer.assign(_end_offsets(consumer, topics))
    return consumer


def _read_results(settings: Settings, consumer: Consumer, tally: Tally, stop: threading.Event) -> None:
    deadletter = settings.topic("deadletter")
    while not stop.is_set():
        for msg in consumer.consume(1000, 0.2):
            if msg.error():
                continue
            with tally.lock:
                if msg.topic() == deadletter:
                    code = dict(msg.headers() or []).get("sg-error") or b"?"
                    tally.deadletters[code.decode() if isinstance(code, bytes) else code] += 1
                    continue
                verdict = orjson.loads(msg.value() or b"{}")
                tally.verdicts[f"{verdict['type']} {verdict['decision']}"] += 1
                label = tally.label_of.get(verdict["event_id"], "?")
                if verdict["decision"] != "allow":
                    tally.flagged[label] += 1
    consumer.close()


def _end_offsets(consumer: Consumer, topics: list[str]) -> list[TopicPartition]:
    partitions = []
    metadata = consumer.list_topics(timeout=10)
    for topic in topics:
        for p in metadata.topics[topic].partitions:
            _, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            partitions.append(TopicPartition(topic, p, high))
    return partitions


def _draw(tally: Tally, total: int, elapsed: float, final: bool = False) -> None:
    with tally.lock:
        done = tally.sent / total if total else 1.0
        bar = "#" * int(BAR_WIDTH * done) + "." * (BAR_WIDTH - int(BAR_WIDTH * done))
        decided = sum(tally.verdicts.values())
        lines = [
            f"[{bar}] {100 * done:5.1f}%  sent {tally.sent}/{total}  {tally.sent / max(elapsed, 1e-3):7.0f} events/s",
            f"verdicts {decided}/{tally.expected_verdicts}   dead letters "
            f"{sum(tally.deadletters.values())}/{tally.expected_deadletters} {dict(tally.deadletters)}",
            "by type and decision: " + ", ".join(f"{k} {v}" for k, v in sorted(tally.verdicts.items())),
            "flagged by label: "
            + ", ".join(f"{label} {tally.flagged[label]}/{n}" for label, n in sorted(tally.labels.items())),
        ]
    if sys.stdout.isatty() and not final:
        sys.stdout.write("\x1b[2K" + "\n\x1b[2K".join(lines) + f"\x1b[{len(lines) - 1}F")
    elif final or int(elapsed) % 5 == 0:
        sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()
