"""`streamguard bench-core`: the batch core alone, offline, on the demo mix or a scenario file.

No Kafka: the records go through `BatchCore.process` in batches, as a
worker's merge would release them, and the figures are CPU time on this
thread (so a busy machine disturbs them less than wall time). Then every
entity is packed, as a changelog record or a snapshot would carry it, and
loaded into fresh state, as a restore would: the restore rate.

`bench_cluster` puts the same records through several simulated workers in
this one process (`columnar.driver.Cluster`), each batch committed with its
change records and every 20th with snapshots: the CPU every event costs when
its shards are spread over workers, and what crosses between them.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from streamguard.columnar.core import core_for
from streamguard.columnar.driver import Cluster
from streamguard.columnar.state import ColumnarState, load, packed
from streamguard.demo.traffic import DemoTraffic
from streamguard.pipeline.records import Incoming
from streamguard.settings import Settings
from streamguard.topics.names import TopicNames
from streamguard.topics.spec import load_specs

T = TypeVar("T")
DEMO_STEP_MS = 20  # event time between two demo events: 50 events/s of history


@dataclass(frozen=True)
class CoreFigures:
    records: int
    batch: int
    us_per_record: float
    records_per_s: float
    verdicts: int
    dead_letters: int
    duplicates: int
    entities: int
    state_bytes_per_entity: float
    packed_bytes_per_entity: float
    pack_entities_per_s: float
    restore_entities_per_s: float


def bench_core(settings: Settings, records: list[Incoming], batch: int, now_ms: int) -> CoreFigures:
    names = _names(settings)
    core = core_for(settings, names)
    core.process(records[:20], now_ms)  # compiles, or loads the cached kernels
    core = core_for(settings, names)
    verdicts = dead = duplicates = 0
    started = time.thread_time()
    for start in range(0, len(records), batch):
        output = core.process(records[start : start + batch], now_ms)
        duplicates += output.duplicates
        for out in output.outs:
            dead += out.topic == names.deadletter
            verdicts += out.topic != names.deadletter
    elapsed = time.thread_time() - started
    state = core.state
    entities = sum(state.entity_counts().values())
    ids = np.flatnonzero(state.entities.key[: int(state.entities.counters[2])] > 1)
    pack_s, words = _timed(lambda: packed(state, ids)[0])
    fresh = ColumnarState(core.layout, state.dedup_retention_ms)
    load_s, _ = _timed(lambda: load(fresh, words))
    return CoreFigures(
        records=len(records),
        batch=batch,
        us_per_record=round(1e6 * elapsed / len(records), 2),
        records_per_s=round(len(records) / elapsed),
        verdicts=verdicts,
        dead_letters=dead,
        duplicates=duplicates,
        entities=entities,
        state_bytes_per_entity=round(state.nbytes / max(entities, 1)),
        packed_bytes_per_entity=round(words.nbytes / max(entities, 1)),
        pack_entities_per_s=round(ids.size / pack_s),
        restore_entities_per_s=round(ids.size / load_s),
    )


@dataclass(frozen=True)
class ClusterFigures:
    records: int
    workers: int
    us_per_record: float
    records_per_s: float
    verdicts: int
    dead_letters: int
    shard_records: int
    shard_bytes_per_record: float
    changelog_bytes_per_record: float
    snapshots: int


def bench_cluster(settings: Settings, records: list[Incoming], batch: int, now_ms: int, workers: int) -> ClusterFigures:
    names = _names(settings)
    core_for(settings, names).process(records[:20], now_ms)  # compiles, or loads the cached kernels
    cluster = Cluster(names, lambda: core_for(settings, names), workers, partitions=6, batch_max_events=batch,
                      batch_max_span_ms=settings.batch_max_span_ms)  # fmt: skip
    cluster.now_ms = now_ms
    kind_of = names.input_type()
    for record in records:
        cluster.produce(kind_of[record.topic], record.value, record.key, record.partition % 6)
    started = time.thread_time()
    outs = cluster.run()
    elapsed = time.thread_time() - started
    dead = sum(out.topic == names.deadletter for out in outs)
    shards = cluster.shards_topic()
    changelog = [entry for log in cluster.changelog.values() for entry in log]
    return ClusterFigures(
        records=len(records),
        workers=workers,
        us_per_record=round(1e6 * elapsed / len(records), 2),
        records_per_s=round(len(records) / elapsed),
        verdicts=len(outs) - dead,
        dead_letters=dead,
        shard_records=len(shards),
        shard_bytes_per_record=round(sum(len(r) for r in shards) / len(records), 1),
        changelog_bytes_per_record=round(sum(len(r) for snap, r in changelog if not snap) / len(records), 1),
        snapshots=sum(is_snapshot for is_snapshot, _ in changelog),
    )


def demo_records(settings: Settings, events: int, seed: int, now_ms: int) -> list[Incoming]:
    """`events` demo messages (attacks, malformed and re-sent ones among them) ending at `now_ms`."""
    names = _names(settings)
    traffic = DemoTraffic(seed=seed, run=f"core{seed}")
    start = now_ms - DEMO_STEP_MS * events
    records = []
    for i in range(events):
        message = traffic.next_message(start + DEMO_STEP_MS * i)
        topic = names.inputs[message.topic.rsplit(".", 1)[-1]]
        records.append(Incoming(topic, i % 6, i, message.key, message.value))
    return records


def scenario_records(settings: Settings, path: Path) -> list[Incoming]:
    """The records of a file `../shared/scenarios/generate.py` wrote."""
    names = _names(settings)
    records: list[Incoming] = []
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if "topic" not in row:
            continue  # the header
        value = base64.b64decode(row["raw_b64"]) if "raw_b64" in row else json.dumps(row["value"]).encode()
        key = (row.get("key") or "").encode() or None
        topic = names.inputs[row["topic"].rsplit(".", 1)[-1]]
        records.append(Incoming(topic, len(records) % 6, len(records), key, value))
    return records


def print_figures(figures: CoreFigures | ClusterFigures) -> None:
    for name, value in asdict(figures).items():
        print(f"{name:28s} {value:>14,}" if isinstance(value, int) else f"{name:28s} {value:>14,.2f}")


def _names(settings: Settings) -> TopicNames:
    return TopicNames.resolve(
        load_specs(settings.topic_prefix, settings.app_id), settings.topic_prefix, settings.app_id
    )


def _timed(work: Callable[[], T]) -> tuple[float, T]:
    started = time.perf_counter()
    result = work()
    return time.perf_counter() - started, result
