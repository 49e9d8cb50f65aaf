"""A whole pipeline in one process: the batch core through the in-memory driver, one worker holding every shard.

For unit tests of features and rules on hand-written event sequences: an
event in, its verdict (and feature values) out, each event done before the
next, as a worker decides events far enough apart.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec

from streamguard.columnar.core import BatchCore
from streamguard.columnar.driver import Cluster
from streamguard.columnar.hashing import ColumnHashes
from streamguard.events import AnyEvent
from streamguard.features.spec import load_features
from streamguard.rules.program import Program
from streamguard.rules.spec import Ruleset, load_ruleset
from streamguard.topics.names import TopicNames
from streamguard.topics.spec import load_specs
from streamguard.verdicts import Detector

LATENESS_MS = 300_000
DEDUP_RETENTION_MS = 3_600_000
HASHES = ColumnHashes(b"local-pipeline-test-key")
NAMES = TopicNames.resolve(load_specs("", "sg"), "", "sg")
FEATURES_TOPIC = "features"


class LocalPipeline:
    def __init__(self, ruleset: Ruleset | None = None, features_topic: bool = True) -> None:
        """`features_topic` False is a worker's default: only the features the rules look at are read."""
        self.specs = load_features(LATENESS_MS)
        self.detector = Detector(Program(ruleset or load_ruleset(self.specs), self.specs), HASHES)
        topic = FEATURES_TOPIC if features_topic else None
        self.cluster = Cluster(NAMES, lambda: BatchCore(NAMES, self.specs, self.detector, HASHES, LATENESS_MS,
                                                        DEDUP_RETENTION_MS, topic))  # fmt: skip

    def run(self, event: AnyEvent, now_ms: int | None = None) -> dict[str, Any]:
        """Decide `event`: its verdict, with the feature values under "features"; {} for a duplicate."""
        self.cluster.now_ms = event.ts if now_ms is None else now_ms
        kind = type(event).__struct_config__.tag
        assert isinstance(kind, str)
        self.cluster.produce(kind, msgspec.json.encode(event))
        records = {out.topic: json.loads(out.value) for out in self.cluster.run()}
        if not records:
            return {}
        verdict: dict[str, Any] = records[NAMES.verdicts[kind]]
        return {**verdict, "features": records[FEATURES_TOPIC]["features"]} if FEATURES_TOPIC in records else verdict

    def codes(self, event: AnyEvent) -> list[str]:
        """The reason codes of `event`'s verdict."""
        return [r["code"] for r in self.run(event)["reasons"]]
