"""One verification run: read what is committed, then check V1-V4, V6 and V7 on it.

Meant for after traffic has stopped and the workers have finished (or are
idle): a record still on its way would show as missing. Nothing here writes
to Kafka or to the data directories.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from confluent_kafka.admin import AdminClient

from streamguard.columnar.core import core_for
from streamguard.errors import ConfigError
from streamguard.settings import Settings
from streamguard.topics.identity import app_topics
from streamguard.topics.names import TopicNames
from streamguard.verify import core_state, kafka, offsets, outputs, state
from streamguard.verify.records import TP, Record
from streamguard.verify.report import Check, Report


def topic_names(settings: Settings) -> TopicNames:
    """The app's topics, with the shard count its topics on the broker have."""
    return app_topics(settings)[1]


def read_topics(settings: Settings, topics: Iterable[str]) -> list[Record]:
    """Every committed record of `topics`, from the beginning (the verifier's reader, for tests and helpers)."""
    admin = kafka.admin_client(settings)
    return list(kafka.read(settings, dict.fromkeys(kafka.partitions(admin, topics))))


def read_inputs(settings: Settings, now_ms: int | None = None) -> list[outputs.Classified]:
    """Every input record, classified as the workers' codec does (see `outputs.classify`)."""
    names = topic_names(settings)
    records = read_topics(settings, names.inputs.values())
    return outputs.classify(records, names.input_type(), _now(now_ms))


def verify(settings: Settings, data_dirs: Sequence[Path] = (), now_ms: int | None = None) -> Report:
    """Check the exactly-once guarantees on what is committed; V6 only when `data_dirs` are given.

    `data_dirs` are the workers' `STREAMGUARD_DATA_DIR`s; `now_ms` (default:
    now) is the latest a worker can have read an input record at.
    """
    for directory in data_dirs:
        if not directory.is_dir():
            raise ConfigError(f"{directory}: no such data directory")
    names = topic_names(settings)
    admin = kafka.admin_client(settings)
    inputs = read_inputs(settings, now_ms)
    verdict_type = {topic: kind for kind, topic in names.verdicts.items()}
    verdicts = read_topics(settings, names.verdicts.values())
    dead, unnamed = outputs.dead_letter_sources(read_topics(settings, [names.deadletter]))
    checks = [
        outputs.check_verdicts(inputs, verdicts, dead, verdict_type),
        outputs.check_deadletters(inputs, dead, unnamed),
        _open_transactions(admin, names),
        _group_offsets(settings, admin, names),
        *_state(settings, admin, names, data_dirs),
    ]
    return Report(checks, f"prefix {settings.topic_prefix!r}, app {settings.app_id!r}, broker {settings.bootstrap}")


def _now(now_ms: int | None) -> int:
    return int(time.time() * 1000) if now_ms is None else now_ms


def _open_transactions(admin: AdminClient, names: TopicNames) -> Check:
    topics = [*names.verdicts.values(), names.deadletter, names.shard_topic, names.changelog]
    tps = kafka.partitions(admin, topics)
    stable, end = kafka.offsets(admin, tps, "latest"), kafka.offsets(admin, tps, "latest", committed=False)
    return offsets.check_open_transactions(stable, end)


def _group_offsets(settings: Settings, admin: AdminClient, names: TopicNames) -> Check:
    """V4; where the committed offset is short of the end, count the committed records left there."""
    tps = kafka.partitions(admin, [*names.inputs.values(), names.shard_topic])
    end = kafka.offsets(admin, tps, "latest", committed=False)
    committed = kafka.group_offsets(admin, settings.app_id, tps)
    gaps: dict[TP, int | None] = {tp: committed.get(tp) for tp in tps if committed.get(tp) != end[tp]}
    unread = Counter((r.topic, r.partition) for r in kafka.read(settings, gaps))
    return offsets.check_group_offsets(committed, end, unread)


def _state(settings: Settings, admin: AdminClient, names: TopicNames, data_dirs: Sequence[Path]) -> list[Check]:
    """V6 and V7, on the state the engine of `settings` keeps."""
    if settings.engine == "columnar":
        changelog = read_topics(settings, [names.changelog])
        return list(core_state.replay(core_for(settings, names), changelog))
    stores = {shard: state.newest_store(data_dirs, shard) for shard in range(names.shards)}
    replays = _replays(settings, admin, names, stores)
    return [_stores(replays, stores, data_dirs), state.check_parked(replays)]


def _replays(
    settings: Settings, admin: AdminClient, names: TopicNames, stores: dict[int, state.Store | None]
) -> list[state.Replay]:
    """Each shard's changelog replayed from 0 (a shard whose log no longer starts there is left empty)."""
    starts = kafka.offsets(admin, kafka.partitions(admin, [names.changelog]), "earliest", committed=False)
    replays: dict[int, state.Replay] = {}
    for (_, shard), start in sorted(starts.items()):
        store = stores.get(shard)
        replays[shard] = state.Replay(shard, start, store.checkpoint if store else None)
    readable = {(names.changelog, s): None for s, r in replays.items() if r.log_start == 0}
    for record in kafka.read(settings, readable):
        replays[record.partition].feed(record.offset, record.value)
    return list(replays.values())


def _stores(replays: list[state.Replay], stores: dict[int, state.Store | None], data_dirs: Sequence[Path]) -> Check:
    if not data_dirs:
        return Check.skipped("V6", state.TITLE, "no data directory given (--data-dir)")
    return state.check_stores(replays, stores)
