"""What the peers (Quix Streams, Kafka Streams) compute, derived from streamguard's own feature declarations.

One branch per (entity, window, resolution) that `features/*.toml` declare
for the entities both can key by directly (IP, device, account, phone): the
events of the types those features read, counted, with a distinct count of
every field those features count distinct values of. Filters (`where`) are
left out, and so are derived entities and fields (networks, fingerprints,
number blocks), which need streamguard's own derivations. Both peers read the
same spec document, and the bench uses it to know how many records a peer
owes for each event.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

from streamguard.entities import DERIVED
from streamguard.features.spec import FeatureSpec

PEER_ENTITIES = ("ip", "device_id", "account_id", "phone")
PEER_AGGREGATES = ("count", "distinct")


@dataclass(frozen=True)
class Branch:
    name: str
    entity: str
    window_ms: int
    step_ms: int  # streamguard's resolution: the peers' buckets
    events: list[str]
    distinct: list[str]

    def applies_to(self, event: dict[str, object]) -> bool:
        return event.get("type") in self.events and event.get(self.entity) is not None


def branches(features: Iterable[FeatureSpec]) -> list[Branch]:
    """The peer's branches, in a stable order."""
    grouped: dict[tuple[str, int, int], list[FeatureSpec]] = {}
    for feature in features:
        if feature.entity in PEER_ENTITIES and feature.aggregate in PEER_AGGREGATES:
            grouped.setdefault((feature.entity, feature.window_ms, feature.resolution_ms), []).append(feature)
    return [_branch(key, group) for key, group in sorted(grouped.items())]


def _branch(key: tuple[str, int, int], group: list[FeatureSpec]) -> Branch:
    entity, window_ms, step_ms = key
    events = sorted({t for f in group for t in f.events})
    distinct = sorted({f.field for f in group if f.field is not None and f.field not in DERIVED})
    return Branch(f"{entity}_{window_ms // 1000}s", entity, window_ms, step_ms, events, distinct)


def outputs_owed(event: dict[str, object], peer_branches: list[Branch]) -> int:
    """How many records the peer writes for `event`: one per branch it falls in."""
    return sum(1 for b in peer_branches if b.applies_to(event))


def spec_document(
    peer_branches: list[Branch], *, bootstrap: str, inputs: list[str], output: str, group: str, state_dir: str
) -> dict[str, object]:
    """The JSON document the peers read (`quix_peer.py`, `bench/kstreams`)."""
    return {
        "bootstrap": bootstrap,
        "group": group,
        "input_topics": inputs,
        "output_topic": output,
        "state_dir": state_dir,
        "commit_interval_s": 1.0,
        "distinct_cap": 256,  # streamguard's default distinct_cap
        "branches": [asdict(b) for b in peer_branches],
    }


def describe(peer_branches: list[Branch]) -> list[str]:
    """One line per branch, for the report."""
    return [
        f"{b.name}: per {b.entity}, {b.window_ms // 1000}s in {b.step_ms // 1000}s buckets, "
        f"{'/'.join(b.events)} events: count{''.join(f', distinct {f}' for f in b.distinct)}"
        for b in peer_branches
    ]
