"""Declarative topic definitions, loaded and validated from `topics/*.toml`.

A file has an optional `[defaults]` table and a list of `[[topic]]` tables.
A typo (an unknown key, a wrong type) is a ConfigError naming file and path.
`partitions = "shards"` stands for the app's shard count, which is not in the
files: it is chosen when the app is created (`STREAMGUARD_SHARDS`), then read
from the broker (`topics.identity.app_topics`).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

import msgspec

from streamguard.errors import ConfigError
from streamguard.settings import DEFAULT_SHARDS

PER_SHARD = "shards"  # the value of `partitions` that means one partition per shard


class TopicSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str
    partitions: int
    replication: int = 1
    cleanup: Literal["delete", "compact"] = "delete"
    retention_ms: int = 604_800_000
    max_message_bytes: int | None = None  # None: the broker's default
    internal: bool = False

    def configs(self) -> dict[str, str]:
        """The topic-level broker configs this definition pins."""
        configs = {"cleanup.policy": self.cleanup, "retention.ms": str(self.retention_ms)}
        if self.max_message_bytes is not None:
            configs["max.message.bytes"] = str(self.max_message_bytes)
        return configs

    def named(self, prefix: str, app_id: str) -> TopicSpec:
        """This topic under its full name: internal topics also carry the app id."""
        name = f"{prefix}{app_id}.{self.name}" if self.internal else prefix + self.name
        return msgspec.structs.replace(self, name=name)


class _Defaults(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    replication: int | None = None
    cleanup: Literal["delete", "compact"] | None = None
    retention_ms: int | None = None
    internal: bool | None = None


class _File(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    topic: list[dict[str, object]]
    defaults: _Defaults = _Defaults()


def default_dir() -> Path:
    """`topics/` of the source tree (streamguard is installed editable, beside it)."""
    return Path(__file__).resolve().parents[2] / "topics"


def load_specs(
    prefix: str, app_id: str, directory: Path | None = None, shards: int = DEFAULT_SHARDS
) -> list[TopicSpec]:
    """Every topic declared in `directory` (default `topics/`), under its full name, with `shards` shards."""
    directory = directory or default_dir()
    specs: dict[str, TopicSpec] = {}
    for path in sorted(directory.glob("*.toml")):
        for spec in _load_file(path, shards):
            if spec.name in specs:
                raise ConfigError(f"{path}: topic {spec.name!r} is declared twice")
            specs[spec.name] = spec.named(prefix, app_id)
    if not specs:
        raise ConfigError(f"{directory}: no topic definitions")
    return list(specs.values())


def _load_file(path: Path, shards: int) -> list[TopicSpec]:
    try:
        raw = tomllib.loads(path.read_text())
        parsed = msgspec.convert(raw, _File)
    except (tomllib.TOMLDecodeError, msgspec.ValidationError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    defaults = {k: v for k, v in msgspec.structs.asdict(parsed.defaults).items() if v is not None}
    specs = []
    for i, table in enumerate(parsed.topic):
        if table.get("partitions") == PER_SHARD:
            table = {**table, "partitions": shards}
        try:
            specs.append(msgspec.convert({**defaults, **table}, TopicSpec))
        except msgspec.ValidationError as exc:
            raise ConfigError(f"{path}: topic[{i}]: {exc}") from None
    return specs
