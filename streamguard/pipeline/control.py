"""The control topics: rulesets (`control.rules`) and block/allow lists (`control.lists`).

Every worker reads both topics whole, outside any consumer group, from the
beginning (they are compacted), so every worker holds the same ruleset and
lists. A ruleset is applied when it parses, passes every check and is newer
than the one in force (a higher version under the same name, or another
name); anything else is rejected with an error in the log and on the
`/streamguard/rules/` page, and the ruleset in force stays. The engine waits
for the first catch-up, so a restarted worker never decides with stale rules.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Message, TopicPartition

from streamguard import kafka_config
from streamguard.errors import ConfigError
from streamguard.features.spec import FeatureSpec
from streamguard.rules.program import Program
from streamguard.rules.spec import parse_ruleset
from streamguard.settings import Settings
from streamguard.topics.names import TopicNames
from streamguard.verdicts import Detector

log = logging.getLogger(__name__)

REJECTIONS_KEPT = 20


class ControlReader:
    def __init__(
        self, settings: Settings, names: TopicNames, detector: Detector, features: list[FeatureSpec], worker_id: str
    ) -> None:
        self._settings = settings
        self._names = names
        self._detector = detector
        self._features = features
        self._worker_id = worker_id
        self.caught_up = threading.Event()
        self.rejected: deque[dict[str, Any]] = deque(maxlen=REJECTIONS_KEPT)
        self.applied_at: int | None = None

    def status(self) -> dict[str, Any]:
        return {
            "ruleset": self._detector.program.ruleset.label,
            "applied_at": self.applied_at,
            "list_entries": len(self._detector.lists),
            "caught_up": self.caught_up.is_set(),
            "rejected": list(self.rejected),
        }

    def run(self, stop: threading.Event) -> None:
        consumer = Consumer(kafka_config.control_consumer(self._settings, self._worker_id))
        try:
            ends = self._assign_all(consumer, stop)
            while not stop.is_set():
                for message in consumer.consume(500, 0.5):
                    self._handle(message)
                if not self.caught_up.is_set() and _reached(consumer, ends):
                    self.caught_up.set()
                    log.info("control topics read: ruleset %s in force", self._detector.program.ruleset.label)
                self._detector.lists.expire(int(time.time() * 1000))
        finally:
            consumer.close()

    def _assign_all(self, consumer: Consumer, stop: threading.Event) -> dict[tuple[str, int], int]:
        """Assign every partition of both topics from the beginning; their end offsets now."""
        while not stop.is_set():
            try:
                return self._try_assign_all(consumer)
            except (KafkaException, KeyError) as exc:  # the broker is away, or the topics are not created yet
                log.warning("control topics not readable yet, retrying: %s", exc)
                stop.wait(1.0)
        return {}

    def _try_assign_all(self, consumer: Consumer) -> dict[tuple[str, int], int]:
        topics = [self._names.control_rules, self._names.control_lists]
        metadata = consumer.list_topics(timeout=10)
        partitions = [TopicPartition(t, p, OFFSET_BEGINNING) for t in topics for p in metadata.topics[t].partitions]
        ends = {}
        for tp in partitions:
            _, high = consumer.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=10)
            ends[(tp.topic, tp.partition)] = high
        consumer.assign(partitions)
        return ends

    def _handle(self, message: Message) -> None:
        if message.error():
            log.warning("control topic: %s", message.error())
            return
        try:
            if message.topic() == self._names.control_rules:
                self._apply_ruleset(message)
            else:
                _, record_ms = message.timestamp()
                self._detector.lists.apply(message.key(), message.value(), record_ms)
        except ConfigError as exc:
            self._reject(message, str(exc))

    def _apply_ruleset(self, message: Message) -> None:
        raw = message.value()
        if raw is None:
            log.info("control.rules: a null value (offset %d) is ignored; publish a ruleset instead", message.offset())
            return
        ruleset = parse_ruleset(raw, self._features)
        current = self._detector.program.ruleset
        if ruleset.name == current.name and ruleset.version <= current.version:
            raise ConfigError(f"{ruleset.label} is not newer than {current.label}, in force")
        self._detector.program = Program(ruleset, self._features)
        self.applied_at = int(time.time() * 1000)
        log.info("control.rules: ruleset %s now in force (was %s)", ruleset.label, current.label)

    def _reject(self, message: Message, error: str) -> None:
        where = f"{message.topic()}[{message.partition()}]@{message.offset()}"
        kept = self._detector.program.ruleset.label
        log.error("%s rejected (ruleset %s stays in force): %s", where, kept, error)
        self.rejected.append({"record": where, "error": error, "at": int(time.time() * 1000)})


def _reached(consumer: Consumer, ends: dict[tuple[str, int], int]) -> bool:
    positions = consumer.position([TopicPartition(t, p) for t, p in ends])
    return all(tp.offset >= ends[(tp.topic, tp.partition)] or ends[(tp.topic, tp.partition)] == 0 for tp in positions)
