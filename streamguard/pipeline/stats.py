"""The counters a worker exposes on its stats page; they hold no identifiers."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class EngineStats:
    """Counters of the engine and of its transactions."""

    events_in: int = 0
    deadletters: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    verdicts: Counter[str] = field(default_factory=Counter)  # event type -> verdicts published
    transactions: int = 0
    aborted: int = 0
    shards: list[int] = field(default_factory=list)
    last_commit_ms: float = 0.0
    pauses: int = 0  # input partitions paused for holding over `partition_buffer` records
    processing_errors: int = 0  # records and work items whose processing raised (their events were dead-lettered)
    memory_state_bytes: int = 0  # the state held in memory (the columnar engine's; the item engine's is on disk)

    def as_dict(self) -> dict[str, Any]:
        return {
            "events_in": self.events_in,
            "deadletters": dict(self.deadletters),
            "duplicates": self.duplicates,
            "verdicts": dict(self.verdicts),
            "transactions": self.transactions,
            "aborted_transactions": self.aborted,
            "shards": sorted(self.shards),
            "last_commit_ms": round(self.last_commit_ms, 2),
            "pauses": self.pauses,
            "processing_errors": self.processing_errors,
            "memory_state_bytes": self.memory_state_bytes,
        }
