"""Re-sharding an app offline: its committed state moved to another shard count, with every worker stopped.

Every state key embeds the keyed hash that decides its shard
(`state.keys.owner_digest`), so the committed changelog replayed key by key is
the state of any shard count. In order:

1. Check the app is at rest (`checks.busy`): nothing in flight is lost.
2. Stage: replay the whole committed changelog into a local RocksDB, each key
   under its new shard (`stage`); check that nothing moved meanwhile, then
   write the staging's manifest: from here on it is the app's whole state.
3. Delete the shards, changelog and cluster topics and create them with the
   new partition count.
4. Write each new shard's state to its changelog partition, as one change
   per live key; make sure the group has no offset past 0 on the new shards topic.
5. Record the cluster's identity with the new count (`resharded_from` set),
   the cluster topic's first record again; delete the staging.

Input topics, their committed offsets, the verdicts and the dead letters are
untouched. A run that fails in step 3 or later leaves a complete staging and
no identity: run it again and it resumes at step 3. Workers' data directories
still hold stores of the old numbering: a worker wipes them at start
(`state.layout`) and rebuilds its shards from the new changelog.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Final

import msgspec
from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from streamguard import kafka_config
from streamguard.codec import MAX_RECORD_BYTES
from streamguard.columnar.changes import LayoutMismatch
from streamguard.columnar.core import core_for
from streamguard.errors import AppBusy, BrokerError, ConfigError
from streamguard.reshard import checks
from streamguard.reshard.columnar import Regroup
from streamguard.reshard.stage import Manifest, Staging, discard, read_manifest
from streamguard.settings import MAX_SHARDS, Settings
from streamguard.state.store import decode_changes, encode_changes
from streamguard.topics.identity import ClusterIdentity, app_topics, first_identity, record
from streamguard.topics.names import TopicNames
from streamguard.topics.spec import TopicSpec, load_specs
from streamguard.verify import kafka
from streamguard.verify.records import Record

log = logging.getLogger(__name__)

TIMEOUT_S: Final = 60.0  # for topics to disappear after deletion, or to appear after creation
CHUNK_KEYS: Final = 20_000  # keys read from the staging at a time
EMPTY_CHANGES: Final = b"\x90"  # a msgpack empty list: what a changelog record without a value stands for


def reshard(settings: Settings, to_shards: int, workdir: Path) -> str:
    """Re-shard the app of `settings` to `to_shards`; what was done, for the operator.

    Raises AppBusy while workers run or work is in flight (nothing changed then).
    """
    if not 1 <= to_shards <= MAX_SHARDS:
        raise ConfigError(f"--to {to_shards}: the shard count must be from 1 to {MAX_SHARDS}")
    _, names = app_topics(settings)
    client = kafka.admin_client(settings)
    directory = workdir / f"{settings.topic_prefix}{settings.app_id}"
    manifest = _unfinished(settings, client, names, directory)
    if manifest is not None:
        if manifest.to_shards != to_shards:
            raise ConfigError(
                f"a re-sharding to {manifest.to_shards} shards is half done (its state is staged in {directory}): "
                f"finish it first, `streamguard reshard --to {manifest.to_shards}`"
            )
        print(f"resuming the re-sharding staged in {directory}", flush=True)
    elif names.shards == to_shards:
        return f"{settings.app_id} has {to_shards} shards already: nothing to do"
    else:
        manifest = _stage(settings, client, names, to_shards, directory)
    _rewrite(settings, client, names, manifest, directory)
    discard(directory)
    return (
        f"re-sharded {settings.app_id} from {manifest.from_shards} to {to_shards} shards: {manifest.keys:,} state keys "
        f"from {manifest.records:,} changelog records. Start the workers: each wipes the stores of the old numbering "
        "in its data directory (a WARNING says so) and rebuilds its shards from the new changelog."
    )


def _identity(settings: Settings, client: AdminClient, names: TopicNames) -> ClusterIdentity | None:
    exists = names.cluster in client.list_topics(timeout=kafka.TIMEOUT_S).topics
    return first_identity(settings, names.cluster) if exists else None


def _unfinished(settings: Settings, client: AdminClient, names: TopicNames, directory: Path) -> Manifest | None:
    """The manifest of a re-sharding that deleted the old topics and did not finish; None if there is none.

    A staging whose old changelog is still there (the run stopped before
    deleting anything) or whose identity was written (it finished) is thrown
    away: the broker holds the truth then.
    """
    manifest = read_manifest(directory)
    if manifest is None:
        return None
    topics = client.list_topics(timeout=kafka.TIMEOUT_S).topics
    cluster = _identity(settings, client, names)
    finished = cluster is not None and (cluster.shards, cluster.resharded_from) == (
        manifest.to_shards,
        manifest.from_shards,
    )
    old = names.changelog in topics and len(topics[names.changelog].partitions) == manifest.from_shards
    if finished or old:
        discard(directory)
        return None
    return manifest


def _check_at_rest(settings: Settings, client: AdminClient, names: TopicNames) -> dict[tuple[str, int], int]:
    """Raise AppBusy unless no worker runs and nothing is in flight (`checks.busy`); the changelog's ends."""
    written = kafka.partitions(client, [*names.verdicts.values(), names.deadletter, names.shard_topic, names.changelog])
    stable, end = kafka.offsets(client, written, "latest"), kafka.offsets(client, written, "latest", committed=False)
    shard_tps = kafka.partitions(client, [names.shard_topic])
    committed = kafka.group_offsets(client, settings.app_id, shard_tps)
    gaps = {tp: committed.get(tp) for tp in shard_tps if committed.get(tp) != end[tp]}
    unread: dict[tuple[str, int], int] = {}
    for row in kafka.read(settings, gaps):
        unread[(row.topic, row.partition)] = unread.get((row.topic, row.partition), 0) + 1
    members = _members(client, settings.app_id, names)
    problems = checks.busy(settings.app_id, members, stable, end, committed, unread)
    if problems:
        raise AppBusy(f"{settings.app_id} is not at rest, nothing was changed: " + "; ".join(problems))
    return {tp: offset for tp, offset in end.items() if tp[0] == names.changelog}


def _members(client: AdminClient, group: str, names: TopicNames) -> int:
    """Members of `group` that hold partitions of this app (apps of other prefixes may share the group id)."""
    ours = {*names.inputs.values(), names.shard_topic}
    try:
        (future,) = client.describe_consumer_groups([group], request_timeout=kafka.TIMEOUT_S).values()
        members = future.result().members
    except KafkaException as exc:
        if exc.args[0].name() == "GROUP_ID_NOT_FOUND":
            return 0
        raise BrokerError(f"describing the consumer group {group!r}: {exc.args[0].str()}") from None
    return sum(1 for m in members if any(tp.topic in ours for tp in m.assignment.topic_partitions))


def _stage(settings: Settings, client: AdminClient, names: TopicNames, to_shards: int, directory: Path) -> Manifest:
    """Steps 1-2: check the app is at rest, replay its committed changelog into a new staging, check again.

    The manifest is written last, once nothing moved meanwhile: a staging with
    a manifest is the app's whole state.
    """
    before = _check_at_rest(settings, client, names)
    cluster = _identity(settings, client, names)
    discard(directory)  # an incomplete staging: the changelog is the truth
    staging = _open_staging(directory, to_shards)
    try:
        print(f"staging the state of {names.changelog} in {directory}", flush=True)
        stage = _stage_columnar if settings.engine == "columnar" else _stage_items
        records, staged = stage(settings, client, names, staging)
        identity = None if cluster is None else cluster.encode().decode()
        manifest = Manifest(from_shards=names.shards, to_shards=to_shards, identity=identity, records=records,
                            keys=staged, engine=settings.engine)  # fmt: skip
        if _check_at_rest(settings, client, names) != before:
            raise AppBusy(f"{names.changelog} changed while it was staged (a worker ran): nothing was changed")
        staging.write_manifest(manifest)
    finally:
        staging.close()
    return manifest


def _changelog(settings: Settings, client: AdminClient, names: TopicNames) -> Iterator[Record]:
    return kafka.read(settings, dict.fromkeys(kafka.partitions(client, [names.changelog])))


def _stage_items(settings: Settings, client: AdminClient, names: TopicNames, staging: Staging) -> tuple[int, int]:
    """The item engine's changelog, key by key under each key's new shard; the records read and the keys staged."""
    records = 0
    for row in _changelog(settings, client, names):
        try:
            staging.add(decode_changes(row.value or EMPTY_CHANGES), row.partition)
        except (ValueError, msgspec.DecodeError) as exc:
            raise _not_state(row, exc) from None
        records += 1
    staged = sum(len(chunk) for shard in range(staging.shards) for chunk in staging.chunks(shard, CHUNK_KEYS))
    return records, staged


def _stage_columnar(settings: Settings, client: AdminClient, names: TopicNames, staging: Staging) -> tuple[int, int]:
    """The columnar engine's changelog replayed into one core, staged as each new shard's snapshot records."""
    regroup = Regroup(core_for(settings, names))
    for row in _changelog(settings, client, names):
        if row.value is None:
            continue
        try:
            regroup.add(row.value)
        except (LayoutMismatch, ValueError, msgspec.DecodeError) as exc:
            raise _not_state(row, exc) from None
    for shard, records in regroup.records(staging.shards).items():
        staging.put_records(shard, records)
    return regroup.records_read, regroup.entities


def _not_state(row: Record, exc: Exception) -> ConfigError:
    return ConfigError(
        f"{row.topic}[{row.partition}]@{row.offset} is no state this version can re-shard ({exc}); is "
        f"STREAMGUARD_ENGINE the workers'? Nothing was changed"
    )


def _open_staging(directory: Path, shards: int) -> Staging:
    try:
        return Staging(directory, shards)
    except Exception as exc:  # rocksdict raises plain Exception; OSError for the directory
        raise ConfigError(f"{directory}: cannot stage the state there ({exc}); choose another --workdir") from None


def _rewrite(settings: Settings, client: AdminClient, names: TopicNames, manifest: Manifest, directory: Path) -> None:
    """Steps 3-5, from a complete staging: after the first deletion, only the staging holds the state."""
    members = _members(client, settings.app_id, names)
    if members:  # the state staged is the app's: a worker must not run on a half-written changelog
        raise AppBusy(f"the consumer group {settings.app_id!r} has {members} members: stop every worker first")
    specs = {s.name: s for s in load_specs(settings.topic_prefix, settings.app_id, shards=manifest.to_shards)}
    internal = [specs[names.shard_topic], specs[names.changelog], specs[names.cluster]]
    _recreate(client, [_with_replication(client, s) for s in internal])
    staging = _open_staging(directory, manifest.to_shards)
    try:
        _write_changelog(settings, names.changelog, staging, manifest.engine)
    finally:
        staging.close()
    _reset_offsets(client, settings.app_id, names.shard_topic, manifest.to_shards)
    if manifest.identity is not None:
        _record_identity(settings, names, manifest)
    log.info("re-sharded %s: %s", settings.app_id, manifest)


def _with_replication(client: AdminClient, spec: TopicSpec) -> TopicSpec:
    """`spec` with the replication its topic has on the broker, if it is there (an operator may have raised it)."""
    topic = client.list_topics(timeout=kafka.TIMEOUT_S).topics.get(spec.name)
    if topic is None or not topic.partitions:
        return spec
    return msgspec.structs.replace(spec, replication=len(topic.partitions[0].replicas))


def _recreate(client: AdminClient, specs: list[TopicSpec]) -> None:
    """Delete the topics of `specs` and create them anew, once the broker no longer lists the old ones."""
    names = [s.name for s in specs]
    present = [n for n in names if n in client.list_topics(timeout=kafka.TIMEOUT_S).topics]
    for name, future in client.delete_topics(present, request_timeout=TIMEOUT_S).items() if present else []:
        try:
            future.result()
        except KafkaException as exc:
            if exc.args[0].name() != "UNKNOWN_TOPIC_OR_PART":
                raise BrokerError(f"deleting {name}: {exc.args[0].str()}") from None
    _wait(lambda: not set(names) & set(client.list_topics(timeout=kafka.TIMEOUT_S).topics), "deleted", names)
    wanted = {s.name: s for s in specs}
    while wanted:  # a name deleted a moment ago may be refused for a while ("marked for deletion")
        new = [NewTopic(s.name, s.partitions, s.replication, config=s.configs()) for s in wanted.values()]
        for name, future in client.create_topics(new, request_timeout=TIMEOUT_S).items():
            try:
                future.result()
                del wanted[name]
            except KafkaException as exc:
                log.info("creating %s again: %s", name, exc.args[0].str())
        time.sleep(0.5 if wanted else 0)

    def visible() -> bool:
        topics = client.list_topics(timeout=kafka.TIMEOUT_S).topics
        return all(s.name in topics and len(topics[s.name].partitions) == s.partitions for s in specs)

    _wait(visible, "created", names)


def _wait(done: Callable[[], bool], what: str, names: list[str]) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not done():
        if time.monotonic() > deadline:
            raise BrokerError(f"{names} not {what} within {TIMEOUT_S:.0f} s: run `streamguard reshard` again")
        time.sleep(0.2)


def _write_changelog(settings: Settings, changelog: str, staging: Staging, engine: str) -> None:
    """Each new shard's staged state as records of its changelog partition.

    The item engine's as puts only, so any order is right; the columnar
    engine's as staged, a snapshot whose first record replaces the shard.
    """
    producer = Producer(kafka_config.reshard_writer(settings))
    failures: list[str] = []

    def delivered(err: object, _: object) -> None:
        if err is not None:
            failures.append(str(err))

    for shard in range(staging.shards):
        if engine == "columnar":
            values: Iterable[bytes] = staging.records(shard)
        else:
            values = (v for chunk in staging.chunks(shard, CHUNK_KEYS) for v in encode_changes(chunk, MAX_RECORD_BYTES))
        for value in values:
            _produce(producer, changelog, value, shard, delivered)
    if producer.flush(TIMEOUT_S) or failures:
        raise BrokerError(f"writing {changelog}: {failures[:1] or 'not delivered in time'}; run it again")


def _produce(producer: Producer, topic: str, value: bytes, partition: int, on_delivery: Callable[..., None]) -> None:
    while True:
        try:
            producer.produce(topic, value, partition=partition, on_delivery=on_delivery)
            return
        except BufferError:
            producer.poll(0.05)


def _reset_offsets(client: AdminClient, group: str, shard_topic: str, shards: int) -> None:
    """No offset of the group past 0 on the new shards topic: the broker drops a deleted topic's, this makes sure."""
    committed = kafka.group_offsets(client, group, [(shard_topic, p) for p in range(shards)])
    left = [TopicPartition(t, p, 0) for (t, p), offset in committed.items() if offset]
    if not left:
        return
    request = ConsumerGroupTopicPartitions(group, left)
    try:
        (future,) = client.alter_consumer_group_offsets([request], request_timeout=kafka.TIMEOUT_S).values()
        future.result()
    except KafkaException as exc:
        raise BrokerError(
            f"{group!r} kept offsets of the old {shard_topic} and they could not be reset ({exc.args[0].str()}): "
            f"reset them to the earliest (kafka-consumer-groups --reset-offsets --to-earliest --topic {shard_topic})"
        ) from None


def _record_identity(settings: Settings, names: TopicNames, manifest: Manifest) -> None:
    """The cluster's identity with the new count, as the first record of the new cluster topic."""
    assert manifest.identity is not None
    before = msgspec.json.decode(manifest.identity, type=ClusterIdentity)
    after = ClusterIdentity(
        hash_key_fingerprint=before.hash_key_fingerprint,
        shards=manifest.to_shards,
        created_at=int(time.time() * 1000),
        resharded_from=manifest.from_shards,
    )
    record(settings, names.cluster, after)
    first = first_identity(settings, names.cluster)
    if first != after:
        raise AppBusy(
            f"{names.cluster} starts with another identity ({first}): a worker started while re-sharding. Stop it, "
            f"delete {names.cluster} and run `streamguard reshard --to {manifest.to_shards}` again"
        )
