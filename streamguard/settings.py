"""The one settings object, built once from `STREAMGUARD_*` variables and flags.

Nothing else in streamguard reads the environment: the CLI builds `Settings`
and passes it down. Every setting is declared once in `SETTINGS`, with its
variable, default and meaning; the README's table is generated from it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from streamguard.errors import ConfigError

ENV_PREFIX: Final = "STREAMGUARD_"
DEFAULT_SHARDS: Final = 24  # see the README, "Shards": what more of them cost per transaction, measured
MAX_SHARDS: Final = 512
ENGINES: Final = ("item", "columnar")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    bootstrap: str = "127.0.0.1:9092"
    topic_prefix: str = ""
    app_id: str = "streamguard"
    data_dir: Path = Path(".run/worker")
    web_port: int = 6066
    web_host: str = "127.0.0.1"
    hash_key: str = ""
    dedup_retention_s: int = 6 * 3600
    allowed_lateness_ms: int = 300_000
    features_topic: str = ""
    batch_max_events: int = 5000
    batch_max_span_ms: int = 60_000
    partition_buffer: int = 50_000
    log_level: str = "WARNING"
    shards: int = DEFAULT_SHARDS
    engine: str = "columnar"

    def __post_init__(self) -> None:
        if not 1 <= self.shards <= MAX_SHARDS:
            raise ConfigError(f"the shard count ({ENV_PREFIX}SHARDS) must be from 1 to {MAX_SHARDS}, not {self.shards}")
        if self.engine not in ENGINES:
            raise ConfigError(f"{ENV_PREFIX}ENGINE must be one of {', '.join(ENGINES)}, not {self.engine!r}")

    def topic(self, name: str) -> str:
        """The full name of a contract topic, with the configured prefix."""
        return self.topic_prefix + name

    def require_hash_key(self) -> bytes:
        if len(self.hash_key) < 16:
            raise ConfigError(
                f"{ENV_PREFIX}HASH_KEY must be set to a secret of at least 16 characters: "
                "identifiers are pseudonymised with it (make up writes one to .run/hash_key)"
            )
        return self.hash_key.encode()


DOCS: Final[dict[str, str]] = {
    "bootstrap": "Kafka bootstrap servers, comma-separated.",
    "topic_prefix": "Prefix for every topic name, the contract's and the internal ones.",
    "app_id": "Application id: the consumer group, the transactional ids and the prefix of internal topics.",
    "data_dir": (
        "Where a worker keeps its identity (its transactional id), its lock and, with the item engine, its RocksDB "
        "state; one per worker on a machine."
    ),
    "web_port": "Port of the worker's web server (`/streamguard/stats/`).",
    "web_host": "Interface the worker's web server binds to.",
    "hash_key": "Secret key of the keyed hash that pseudonymises identifiers (at least 16 characters).",
    "dedup_retention_s": "How long a decided event_id is remembered (event time behind the newest on its shard).",
    "allowed_lateness_ms": "How far behind the newest event of an entity an event may arrive and still count.",
    "features_topic": (
        "If set, every decided event's feature values, all of its entities' (not only those the rules read), "
        "are published there (keyed by event_id)."
    ),
    "batch_max_events": "The most records one transaction takes (a batch is what is there when it polls).",
    "batch_max_span_ms": "The most event time one transaction covers while shards are spread over workers "
    "(how far a replay may run ahead of the work it sends them).",
    "partition_buffer": "An input partition is paused while the event-time merge holds more of it (a memory bound).",
    "log_level": "Log level of the worker (DEBUG, INFO, WARNING, ERROR).",
    "shards": (
        "The shard count of a new app (the partitions of its shards and changelog topics, at most the useful "
        "workers); an existing app keeps the count its topics and `<app>.cluster` have (`streamguard reshard`)."
    ),
    "engine": (
        "How a worker processes a batch: `columnar` (the batch core over in-memory columnar state; the default) or "
        "`item` (work items over RocksDB stores, the engine before it). All workers of an app run the same one, on "
        "a changelog written by it."
    ),
}


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def load(env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Settings from `env` (default: the process environment), then `overrides` (flags)."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for field in dataclasses.fields(Settings):
        raw = env.get(env_name(field.name))
        if raw is not None and raw != "":
            values[field.name] = _parse(field, raw)
    values.update({k: v for k, v in overrides.items() if v is not None})
    unknown = set(values) - {f.name for f in dataclasses.fields(Settings)}
    if unknown:
        raise ConfigError(f"unknown settings: {sorted(unknown)}")
    return Settings(**values)


def unknown_env(env: Mapping[str, str]) -> list[str]:
    """Variables that look like streamguard settings but are not (likely typos)."""
    known = {env_name(f.name) for f in dataclasses.fields(Settings)}
    return sorted(k for k in env if k.startswith(ENV_PREFIX) and k not in known)


def _parse(field: dataclasses.Field[Any], raw: str) -> Any:
    kind = type(field.default)
    try:
        if kind is int:
            return int(raw)
        if isinstance(field.default, Path):
            return Path(raw)
        return raw
    except ValueError:
        raise ConfigError(f"{env_name(field.name)}={raw!r} is not a valid {kind.__name__}") from None
