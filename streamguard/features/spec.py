"""Feature declarations, loaded and validated from `features/*.toml`.

A feature is counted per entity over a sliding event-time window:

    [[feature]]
    name = "login_failures_by_ip_10m"
    events = ["login"]
    entity = "ip"
    aggregate = "count"            # count | sum | min | max | distinct | since_last
    where = [{ field = "success", op = "==", value = false }]
    window = "10m"
    resolution = "30s"

A typo is a ConfigError naming the file and the path. A feature's `state_id`
is a hash of everything that shapes its state, so changing a parameter gives
the feature fresh state instead of a silent mix with the old.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from pathlib import Path
from typing import Any, Final, Literal

import msgspec

from streamguard.entities import DERIVED, SOURCE_FIELD
from streamguard.errors import ConfigError
from streamguard.events import EVENT_CLASSES, EVENT_TYPES

Entity = Literal[
    "ip", "ip_network", "device_id", "fingerprint", "account_id", "phone", "phone_block",
    "instrument_id", "invite_code", "promo_code", "merchant_id", "global",
]  # fmt: skip
Aggregate = Literal["count", "sum", "min", "max", "distinct", "since_last"]
Op = Literal["==", "!=", "<", "<=", ">", ">=", "in"]

MAX_SLOTS: Final = 64  # a window ring, lateness included, fits in one 64-bit mask
MIN_WINDOW_MS: Final = 1_000
MAX_WINDOW_MS: Final = 24 * 3_600_000
_UNITS: Final = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000}
_NAME: Final = re.compile(r"^[a-z][a-z0-9_]{0,79}$")

# The event field each entity kind is read from, and the fields computed from others: see `entities`.
ENTITY_FIELD: Final = SOURCE_FIELD


class Predicate(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    field: str
    op: Op
    value: bool | int | float | str | list[str | int]


class FeatureSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str
    events: list[str]
    entity: Entity
    aggregate: Aggregate
    window: str
    resolution: str
    field: str | None = None  # what sum/min/max/distinct read: an event field, or a derived one (DERIVED)
    where: list[Predicate] = []
    phone_block_digits: int | None = None  # with phone blocks: how many digits (after "+") make a block
    distinct_cap: int = 256  # exact distinct values kept per entity-window; beyond, an estimate

    @property
    def window_ms(self) -> int:
        return parse_duration(self.window)

    @property
    def resolution_ms(self) -> int:
        return parse_duration(self.resolution)

    def slots(self, lateness_ms: int) -> int:
        """Ring slots this feature needs: its window plus the allowed lateness, in buckets."""
        return -(-(self.window_ms + lateness_ms) // self.resolution_ms)

    @property
    def state_id(self) -> str:
        """Changes whenever anything that shapes the feature's state changes."""
        shape = msgspec.json.encode(msgspec.structs.replace(self, name=""))
        return hashlib.blake2b(shape, digest_size=6).hexdigest()


class _File(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    feature: list[FeatureSpec]


def parse_duration(text: str) -> int:
    """Milliseconds in "500ms", "30s", "10m" or "24h"."""
    match = re.fullmatch(r"(\d+)(ms|s|m|h)", text)
    if match is None:
        raise ValueError(f"{text!r} is not a duration like 30s, 10m or 24h")
    return int(match[1]) * _UNITS[match[2]]


def default_dir() -> Path:
    """`features/` of the source tree (streamguard is installed editable, beside it)."""
    return Path(__file__).resolve().parents[2] / "features"


def load_features(lateness_ms: int, directory: Path | None = None) -> list[FeatureSpec]:
    """Every feature declared in `directory` (default `features/`), validated."""
    directory = directory or default_dir()
    features: dict[str, FeatureSpec] = {}
    for path in sorted(directory.glob("*.toml")):
        try:
            parsed = msgspec.convert(tomllib.loads(path.read_text()), _File)
        except (tomllib.TOMLDecodeError, msgspec.ValidationError) as exc:
            raise ConfigError(f"{path}: {exc}") from None
        for i, feature in enumerate(parsed.feature):
            where = f"{path}: `$.feature[{i}]` ({feature.name})"
            for problem in problems(feature, lateness_ms):
                raise ConfigError(f"{where}: {problem}")
            if feature.name in features:
                raise ConfigError(f"{where}: the name {feature.name!r} is declared twice")
            features[feature.name] = feature
    return list(features.values())


def problems(feature: FeatureSpec, lateness_ms: int) -> list[str]:
    """What is wrong with a declaration that its types alone cannot say (empty: nothing)."""
    found = []
    if not _NAME.match(feature.name):
        found.append("`name` must be snake_case, starting with a letter")
    events_problem = event_types_problem(feature.events)
    if events_problem:
        return [*found, events_problem]
    found += _field_problems(feature)
    try:
        window, resolution = feature.window_ms, feature.resolution_ms
    except ValueError as exc:
        return [*found, f"`window`/`resolution`: {exc}"]
    if not MIN_WINDOW_MS <= window <= MAX_WINDOW_MS:
        found.append("`window` must be from 1s to 24h")
    elif window % resolution:
        found.append("`resolution` must divide `window`")
    elif feature.slots(lateness_ms) > MAX_SLOTS:
        least = -(-(window + lateness_ms) // MAX_SLOTS)
        found.append(f"window plus lateness is over {MAX_SLOTS} buckets: make `resolution` at least {least} ms")
    uses_blocks = "phone_block" in (feature.entity, feature.field)
    if uses_blocks != (feature.phone_block_digits is not None):
        found.append("`phone_block_digits` goes with phone blocks (as entity or field), and only with them")
    return found


def event_types_problem(events: list[str]) -> str | None:
    """What is wrong with a declaration's `events` list (None: nothing)."""
    unknown = [e for e in events if e not in EVENT_TYPES]
    if unknown or not events:
        return f"`events` must list event types of {list(EVENT_TYPES)}, not {unknown or '[]'}"
    return None


def _field_problems(feature: FeatureSpec) -> list[str]:
    found = []
    entity_field = ENTITY_FIELD[feature.entity]
    for kind in feature.events:
        fields = event_fields(kind)
        if entity_field is not None and entity_field not in fields:
            found.append(f"`entity` {feature.entity!r}: {kind} events have no `{entity_field}`")
        source = DERIVED.get(feature.field, feature.field) if feature.field else None
        if source is not None and source not in fields:
            found.append(f"`field`: {kind} events have no `{source}`")
        found += [f"`where`: {kind} events have no `{p.field}`" for p in feature.where if p.field not in fields]
    for p in feature.where:
        if (p.op == "in") != isinstance(p.value, list):
            found.append(f"`where`: op {p.op!r} takes {'a list' if p.op == 'in' else 'a single value'}")
    needs_field = feature.aggregate in ("sum", "min", "max", "distinct")
    if needs_field != (feature.field is not None):
        found.append(f"`field` is {'required' if needs_field else 'not used'} with aggregate = {feature.aggregate!r}")
    return found


def event_fields(kind: str) -> set[str]:
    info: Any = msgspec.inspect.type_info(EVENT_CLASSES[kind])
    return {f.name for f in info.fields}
