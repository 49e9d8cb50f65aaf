"""The item engine's shard work in one process, every shard local: events in, verdicts out.

For the unit tests of the item engine (`STREAMGUARD_ENGINE=item`), and those
that compare the batch core with it; no Kafka. Tests of features and rules
use `tests.local`, the batch core through the in-memory driver.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rocksdict import Cache

from streamguard.codec import DecideItem
from streamguard.events import AnyEvent
from streamguard.features.spec import load_features
from streamguard.features.table import EntityFeatures
from streamguard.pipeline.shard import Result, ShardWork
from streamguard.privacy import Pseudonymizer
from streamguard.rules.program import Program
from streamguard.rules.spec import Ruleset, load_ruleset
from streamguard.state.dedup import RecentIds
from streamguard.state.store import PartitionStore, StoreOptions
from streamguard.topics.names import TopicNames
from streamguard.topics.spec import load_specs
from streamguard.verdicts import Detector

LATENESS_MS = 300_000
PSEUDO = Pseudonymizer(b"item-pipeline-test-key")
NAMES = TopicNames.resolve(load_specs("", "sg"), "", "sg")


class ItemPipeline:
    def __init__(self, directory: Path, ruleset: Ruleset | None = None, features_topic: bool = True) -> None:
        """`features_topic` False is a worker's default: only the features the rules look at are computed."""
        self.specs = load_features(LATENESS_MS)
        self.store = PartitionStore(directory / "store", StoreOptions().to_options(Cache(1 << 20)))
        self.recent = RecentIds(self.store, 3_600_000)
        self.detector = Detector(Program(ruleset or load_ruleset(self.specs), self.specs), PSEUDO)
        features = EntityFeatures(self.specs, LATENESS_MS)
        self.work = ShardWork(
            NAMES,
            features,
            self.detector,
            PSEUDO,
            lambda _: self.store,
            lambda _: self.recent,
            "features" if features_topic else None,
            0.0,
        )

    def close(self) -> None:
        self.store.close()

    def run(self, event: AnyEvent, now_ms: int | None = None) -> dict[str, Any]:
        """Decide `event`: its verdict, with the feature values under "features"; {} for a duplicate."""
        now_ms = event.ts if now_ms is None else now_ms
        result, queue = Result(), [DecideItem(PSEUDO.digest("event_id", event.event_id), event)]
        while queue:
            self.work.handle(0, queue.pop(0), now_ms, result)
            queue += result.items
            result.items.clear()
        self.work.flush()
        self.work.expire([0])
        self.store.apply(self.store.take_changes(), 0)
        records = {o.topic: json.loads(o.value) for o in result.outs}
        if not records:
            return {}
        verdict = next(v for topic, v in records.items() if topic.startswith("verdicts."))
        return {**verdict, "features": records["features"]["features"]} if "features" in records else verdict

    def codes(self, event: AnyEvent) -> list[str]:
        """The reason codes of `event`'s verdict."""
        return [r["code"] for r in self.run(event)["reasons"]]
