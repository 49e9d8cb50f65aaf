"""The full names of the topics a worker reads and writes, resolved once at start."""

from __future__ import annotations

from dataclasses import dataclass

from streamguard.errors import ConfigError
from streamguard.events import EVENT_TYPES
from streamguard.topics.spec import TopicSpec


@dataclass(frozen=True)
class TopicNames:
    inputs: dict[str, str]  # event type -> topic
    verdicts: dict[str, str]  # event type -> topic
    deadletter: str
    shard_topic: str
    changelog: str
    cluster: str  # the cluster's identity (see `topics.identity`)
    control_rules: str
    control_lists: str
    shards: int  # partitions of shard_topic, and of changelog

    @classmethod
    def resolve(cls, specs: list[TopicSpec], prefix: str, app_id: str) -> TopicNames:
        by_name = {s.name: s for s in specs}
        internal = f"{prefix}{app_id}."

        def need(name: str) -> TopicSpec:
            if name not in by_name:
                raise ConfigError(f"topics/: no definition of {name!r}")
            return by_name[name]

        shard_topic, changelog = need(internal + "shards"), need(internal + "state-changelog")
        if shard_topic.partitions != changelog.partitions:
            raise ConfigError("topics/internal.toml: shards and state-changelog must have the same partitions")
        cluster = need(internal + "cluster")
        if cluster.partitions != 1:
            raise ConfigError("topics/internal.toml: cluster must have 1 partition (its first record is the identity)")
        return cls(
            inputs={t: need(f"{prefix}events.{t}").name for t in EVENT_TYPES},
            verdicts={t: need(f"{prefix}verdicts.{t}").name for t in EVENT_TYPES},
            deadletter=need(prefix + "deadletter").name,
            shard_topic=shard_topic.name,
            changelog=changelog.name,
            cluster=cluster.name,
            control_rules=need(prefix + "control.rules").name,
            control_lists=need(prefix + "control.lists").name,
            shards=shard_topic.partitions,
        )

    def input_type(self) -> dict[str, str]:
        """Topic -> event type, for the inputs."""
        return {topic: kind for kind, topic in self.inputs.items()}
