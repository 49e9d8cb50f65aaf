"""The bench's findings: a JSON document for machines, a table for people, and the targets judged.

Targets (the columnar engine's issue, its "must" column): the worker at
least a quarter of the raw pass-through, 3 times the Quix peer and as fast as
the Kafka Streams peer (when it ran); at 50% of its throughput a p99 at most
1.5 times the exactly-once floor's at that load; two workers at most 1.25
times one's CPU per event; a peak RSS of at most 1 GiB; a restarted worker
ready within 5 s, restoring at least 200,000 entities/s; no event-loop stall
over 300 ms (no late-timer warning over it in the worker's log, nor a
`max_stall_ms` over it on its stats page).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from streamguard.bench.latency import LatencyLevel
from streamguard.bench.worker import STALL_MS, Stalls

CAUGHT_UP_S = 1.0  # a load is sustained when the last verdict came within this of the last send

METHODS = {
    "traffic": "streamguard.demo mix (benign sessions, 8% attack episodes), users scaled to events/6, no malformed "
    "or re-sent messages; pre-produced events stamped at event_rate_stamped, ending when produced",
    "throughput": "pre-produced events consumed from the beginning by a new group; outputs read read_committed as "
    "they come; events/s = outputs read between 10% and 90% of those owed over the time between, "
    "divided by outputs per event",
    "raw": "one confluent-kafka process: batch consume, orjson decode, one small record per event, no transactions",
    "quix": "quixstreams 3.28.1, exactly-once, commit every 1 s: per IP/device/account/phone, re-keyed (group_by), "
    "one apply(stateful=True) over the State API (RocksDB, changelog) keeping per entity a ring of buckets per "
    "branch of peer_spec at the feature's resolution, counts summed and capped distinct values (per-slot bits) over "
    "the window ending at the event, one record per (event, branch)",
    "kstreams": "Kafka Streams 4.4.0 (bench/kstreams), exactly_once_v2, commit every 1 s, one stream thread unless "
    "kstreams_stream_threads says otherwise: per IP/device/account/phone, re-keyed through a repartition topic, a "
    "Processor API processor over a persistent (RocksDB, cached, changelogged) key-value store of one record per "
    "entity: per branch a ring of buckets at the feature's resolution, counts summed and capped distinct values "
    "(per-slot bits) over the window ending at the event, one record per (event, branch)",
    "worker": "one streamguard worker, every feature of features/*.toml and the default ruleset",
    "latency": "events stamped and sent at the wall clock, paced at 25/50/75% of the worker's events/s, after a "
    "warm-up at 25% not recorded; latency = verdict readable (read_committed) - just before produce, one clock",
    "floor": "the same latency runs through streamguard.bench.floor instead of the worker: per poll, one "
    "transaction like a worker's (a record per event on verdicts.<type> keyed by event_id, an empty record on "
    "every state-changelog partition, the consumed offsets) and no other work: exactly-once's own cost",
    "sustained": "the highest latency load after whose last send the last verdict came within 1 s (bounded lag); "
    "the ratios use the drain rates, measured the same way for every path",
    "restart": "a new worker (new data directory) on the app the worker left: seconds from its start to ready "
    "(every shard restored from the changelog, numba's cache warm); entities its restore rebuilt over the seconds "
    "the restore took, from its log",
    "2 workers": "two workers on an app of their own, started and their shards split before the events are "
    "produced, then the same throughput measure; CPU per event = the CPU seconds (utime + stime) both used while "
    "draining over those of the one worker's drain, for the same number of events",
    "rss": "VmHWM of the worker process from /proc/<pid>/status, at the end of the run",
    "state": "bytes of the worker's state in memory (memory_state_bytes of its stats page) plus its <data dir>/state "
    "on disk (the item engine's RocksDB, after it stopped) / distinct entities of every event it decided (ip, /24, "
    "device, fingerprint, account, phone, number block, card, codes, merchant)",
    "stalls": "mode's 'woke up too late' warnings in the worker's log (logged when a 1 s timer is over 300 ms late) "
    "and max_stall_ms of /streamguard/stats/ if the worker reports it",
}


@dataclass
class PathResult:
    """One path's throughput run: what it owed, what it wrote, how fast."""

    name: str
    events: int
    outputs_owed: int
    outputs_read: int
    missing: int
    extra: int
    events_per_s: float  # steady: between 10% and 90% of the owed outputs
    events_per_s_first_to_last: float
    peak_rss_bytes: int

    @property
    def complete(self) -> bool:
        return self.missing == 0 and self.extra == 0


@dataclass
class Target:
    name: str
    measured: float | None
    limit: float
    higher_is_better: bool

    @property
    def passed(self) -> bool:
        if self.measured is None:
            return False
        return self.measured >= self.limit if self.higher_is_better else self.measured <= self.limit


@dataclass
class Restart:
    ready_s: float  # from the process's start to ready, its shards restored
    entities: int  # restored
    restore_s: float

    @property
    def entities_per_s(self) -> float | None:
        return round(self.entities / self.restore_s) if self.restore_s > 0 else None


@dataclass
class Report:
    machine: dict[str, Any]
    broker: str
    sizes: dict[str, Any]
    paths: dict[str, PathResult]
    latency: list[LatencyLevel]
    floor_latency: list[LatencyLevel]  # the exactly-once floor at the same loads
    worker_peak_rss_bytes: int
    state: dict[str, Any]
    stalls: Stalls
    methods: dict[str, Any]
    ratios: dict[str, float | None] = field(default_factory=dict)
    sustained_events_per_s: float | None = None  # the highest latency load the worker kept up with
    restart: Restart | None = None
    cpu_per_event_two_over_one: float | None = None
    targets: list[Target] = field(default_factory=list)

    def judge(self) -> None:
        worker, raw, quix, kstreams = (self.paths.get(n) for n in ("worker", "raw", "quix", "kstreams"))
        self.ratios = {"worker/raw": _ratio(worker, raw), "worker/quix": _ratio(worker, quix)}
        if kstreams is not None:
            self.ratios["worker/kstreams"] = _ratio(worker, kstreams)
        kept_up = [level.sent_rate for level in self.latency if level.caught_up_s <= CAUGHT_UP_S]
        self.sustained_events_per_s = max(kept_up, default=None)
        self.ratios["2 workers/worker"] = _ratio(self.paths.get("2 workers"), worker)
        half = next((level for level in self.latency if level.load == 0.5), None)
        floor = next((level for level in self.floor_latency if level.load == 0.5), None)
        p99_over_floor = round(half.p99_ms / floor.p99_ms, 3) if half and floor and floor.p99_ms > 0 else None
        stall = max(self.stalls.max_drift_ms, self.stalls.max_stall_ms or 0.0)
        restart = self.restart
        self.targets = [
            Target("worker / raw throughput", self.ratios["worker/raw"], 0.25, True),
            Target("worker / quix throughput", self.ratios["worker/quix"], 3.0, True),
            *([Target("worker / kstreams throughput", self.ratios["worker/kstreams"], 1.0, True)] if kstreams else []),
            Target("p99 at 50% load / the floor's", p99_over_floor, 1.5, False),
            Target("CPU per event, 2 workers / 1", self.cpu_per_event_two_over_one, 1.25, False),
            Target("worker peak RSS (MiB)", round(self.worker_peak_rss_bytes / 2**20), 1024, False),
            Target("restarted worker ready (s)", restart.ready_s if restart else None, 5.0, False),
            Target("restore (entities/s)", restart.entities_per_s if restart else None, 200_000, True),
            Target("longest event-loop stall (ms)", stall, STALL_MS, False),
        ]

    def as_json(self) -> dict[str, Any]:
        document = asdict(self)
        document["paths"] = {name: {**asdict(p), "complete": p.complete} for name, p in self.paths.items()}
        document["targets"] = [{**asdict(t), "passed": t.passed} for t in self.targets]
        if self.restart is not None:
            document["restart"]["entities_per_s"] = self.restart.entities_per_s
        return document

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.as_json(), indent=2) + "\n")

    def table(self) -> str:
        floor = ["exactly-once floor (the worker's transactions, no work in them), same loads:"]
        floor += _level_lines(self.floor_latency)
        return "\n".join([*self._throughput_lines(), "", *self._latency_lines(), "", *floor, "", *self._other_lines()])

    def _throughput_lines(self) -> list[str]:
        lines = [
            f"{'path':<10} {'events':>9} {'events/s':>10} {'first→last':>10} {'missing':>8} {'extra':>6} {'RSS MiB':>8}"
        ]
        for p in self.paths.values():
            lines.append(
                f"{p.name:<10} {p.events:>9,} {p.events_per_s:>10,.0f} {p.events_per_s_first_to_last:>10,.0f} "
                f"{p.missing:>8} {p.extra:>6} {p.peak_rss_bytes / 2**20:>8.0f}"
            )
        ratios = "   ".join(f"{k} = {'n/a' if v is None else f'{v:.2f}'}" for k, v in self.ratios.items())
        return [*lines, ratios]

    def _latency_lines(self) -> list[str]:
        sustained = self.sustained_events_per_s
        kept = "none of these loads" if sustained is None else f"{sustained:,.0f} events/s"
        return [
            *_level_lines(self.latency),
            f"kept up (last verdict within {CAUGHT_UP_S:g} s of the last send) at up to: {kept}",
        ]

    def _other_lines(self) -> list[str]:
        s = self.stalls
        reported = "not reported" if s.max_stall_ms is None else f"{s.max_stall_ms:.0f} ms"
        r = self.restart
        restart = "not run" if r is None else (f"ready in {r.ready_s:.1f} s, {r.entities:,} entities restored in "
                                               f"{r.restore_s:.2f} s ({r.entities_per_s or 0:,.0f}/s)")  # fmt: skip
        cpu = self.cpu_per_event_two_over_one
        lines = [
            f"worker peak RSS {self.worker_peak_rss_bytes / 2**20:.0f} MiB; state {self.state['bytes']:,} bytes "
            f"for {self.state['entities']:,} entities = {self.state['bytes_per_entity']:.0f} bytes/entity",
            f"restarted worker: {restart}",
            f"CPU per event, 2 workers / 1: {'n/a' if cpu is None else f'{cpu:.2f}'}",
            f"stalls: {s.late_timer_warnings} late-timer warnings ({s.over_limit} over {STALL_MS:.0f} ms, "
            f"longest {s.max_drift_ms:.0f} ms); max_stall_ms on the stats page: {reported}",
            "targets:",
        ]
        for t in self.targets:
            measured = "n/a" if t.measured is None else f"{t.measured:.2f}"
            sign = ">=" if t.higher_is_better else "<="
            lines.append(f"  {'PASS' if t.passed else 'FAIL'}  {t.name}: {measured} (target {sign} {t.limit:g})")
        return lines


def _level_lines(levels: list[LatencyLevel]) -> list[str]:
    header = f"{'load':>5} {'sent/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} {'max ms':>8} {'caught up s':>11}"
    lines = [header]
    for lv in levels:
        lines.append(
            f"{lv.load:>5.0%} {lv.sent_rate:>8,.0f} {lv.p50_ms:>8.1f} {lv.p99_ms:>8.1f} "
            f"{lv.p999_ms:>9.1f} {lv.max_ms:>8.1f} {lv.caught_up_s:>11.2f}"
        )
    return lines


def _ratio(a: PathResult | None, b: PathResult | None) -> float | None:
    if a is None or b is None or b.events_per_s <= 0:
        return None
    return round(a.events_per_s / b.events_per_s, 3)
