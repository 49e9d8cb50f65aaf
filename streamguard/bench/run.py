"""`streamguard bench`: the paths in turn on the same broker, then latency, then the report.

Each throughput run pre-produces its events (the demo mix, see `traffic`),
then starts its consumer on them from the beginning with a group of its own,
and reads its output as it comes (see `outputs`): the raw pass-through, the
Quix peer, the Kafka Streams peer (unless it has no events), then the
worker. The worker stays up for the latency runs at 25%, 50% and 75% of its
measured throughput, then its memory, state and stalls are read and it is
stopped. A new worker then starts on the same app (its data directory new):
how long it takes to be ready, and how fast it restored the state. Then two
workers drain the same number of events on an app of their own: their
events/s, and their CPU per event against the one worker's. Last, the
exactly-once floor (`floor`) runs at the same loads: the latency of the
worker's transactions with no work in them.
"""

from __future__ import annotations

import os
import platform
import secrets
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient

from streamguard.bench import kstreams_env, latency, outputs, peer_spec, quix_env, topics, traffic
from streamguard.bench.entities import EntityCensus
from streamguard.bench.processes import Child, start
from streamguard.bench.report import METHODS, PathResult, Report, Restart
from streamguard.bench.worker import BenchWorker, start_worker
from streamguard.errors import StreamguardError
from streamguard.features.spec import FeatureSpec, load_features
from streamguard.settings import DEFAULT_SHARDS, Settings
from streamguard.topics import admin

LOADS = (0.25, 0.5, 0.75)
WARMUP_S = 5.0  # of live traffic at the lowest load before the latency runs, not recorded
SETTLE_S = 2.0  # read this long after the last owed record, to see any record written twice


@dataclass(frozen=True)
class BenchOptions:
    events: int  # the worker's throughput run
    raw_events: int
    quix_events: int
    latency_seconds: float
    event_rate: float  # the rate the pre-produced events are stamped at
    seed: int
    out: Path
    workdir: Path
    quix_venv: Path
    kstreams_events: int = 0  # 0: no Kafka Streams peer
    kstreams_threads: int = 1
    kstreams_build: Path = Path(".run/bench/kstreams")
    idle_timeout_s: float = 120.0  # no new output for this long: the path is stuck


def run_bench(settings: Settings, options: BenchOptions) -> Report:
    run_id = f"b{secrets.token_hex(3)}"  # short: Quix names its internal topics after all its input topics
    workdir = options.workdir / run_id
    workdir.mkdir(parents=True, exist_ok=True)
    client = admin.admin_client(settings)
    features = load_features(settings.allowed_lateness_ms)
    print(f"bench {run_id}: broker {settings.bootstrap}, work files in {workdir}", flush=True)
    try:
        paths = {"raw": _raw_path(settings, client, f"{run_id}r-", options, workdir)}
        paths.update(_peers(settings, client, run_id, options, workdir, features))
        return _worker_and_latency(settings, client, run_id, options, workdir, features, paths)
    finally:
        topics.delete_run_topics(client, run_id)


def _peers(
    settings: Settings,
    client: AdminClient,
    run_id: str,
    options: BenchOptions,
    workdir: Path,
    features: list[FeatureSpec],
) -> dict[str, PathResult]:
    """The Quix Streams peer, then the Kafka Streams one (unless it has no events), each set up before it produces."""
    python = quix_env.ensure_venv(options.quix_venv)
    paths = {
        "quix": _peer_path(
            "quix",
            lambda spec: quix_env.start_peer(python, spec, workdir),
            options.quix_events,
            settings,
            client,
            f"{run_id}q-",
            options,
            workdir,
            features,
        )
    }
    if options.kstreams_events > 0:
        jar = kstreams_env.ensure_jar(options.kstreams_build)
        paths["kstreams"] = _peer_path(
            "kstreams",
            lambda spec: kstreams_env.start_peer(jar, {**spec, "stream_threads": options.kstreams_threads}, workdir),
            options.kstreams_events,
            settings,
            client,
            f"{run_id}k-",
            options,
            workdir,
            features,
        )
    return paths


def _raw_path(settings: Settings, client: AdminClient, prefix: str, options: BenchOptions, workdir: Path) -> PathResult:
    output = f"{prefix}bench.raw-out"
    topics.create_peer_topics(client, prefix, output)
    sent = _produce("raw", settings, prefix, options.raw_events, options)
    argv = [sys.executable, "-m", "streamguard.bench.passthrough", "--bootstrap", settings.bootstrap]
    argv += ["--group", f"{prefix}g", "--output", output, *topics.input_topics(prefix)]
    consumer = outputs.reader(settings, [output], f"{prefix}reader")
    child = start("the raw pass-through", argv, workdir / "raw.log")
    return _drain_path("raw", child, consumer, sent, options)


def _peer_path(
    name: str,
    start_peer: Callable[[dict[str, object]], Child],
    events: int,
    settings: Settings,
    client: AdminClient,
    prefix: str,
    options: BenchOptions,
    workdir: Path,
    features: list[FeatureSpec],
) -> PathResult:
    """A peer (Quix Streams, Kafka Streams) on the windows of `peer_spec`, started on its spec by `start_peer`."""
    output = f"{prefix}bench.{name}-out"
    topics.create_peer_topics(client, prefix, output)
    branches = peer_spec.branches(features)
    owed = _produce(name, settings, prefix, events, options, lambda e: peer_spec.outputs_owed(e, branches))
    spec = peer_spec.spec_document(
        branches,
        bootstrap=settings.bootstrap,
        inputs=topics.input_topics(prefix),
        output=output,
        group=f"{prefix}g",
        state_dir=str(workdir / f"{name}-state"),
    )
    consumer = outputs.reader(settings, [output], f"{prefix}reader")
    return _drain_path(name, start_peer(spec), consumer, owed, options)


def _produce(
    name: str, settings: Settings, prefix: str, events: int, options: BenchOptions, owed: traffic.Owed | None = None
) -> traffic.Sent:
    mix = traffic.traffic_for(events, options.seed, f"{prefix}e")
    sent = traffic.produce_all(settings, prefix, traffic.stamped(mix, events, options.event_rate), owed)
    print(f"bench {name}: produced {events:,} events in {sent.seconds:.1f} s", flush=True)
    return sent


def _drain_path(name: str, child: Child, consumer: Consumer, sent: traffic.Sent, options: BenchOptions) -> PathResult:
    try:
        drained = outputs.drain(consumer, sent.owed, child.check_alive, options.idle_timeout_s)
        outputs.settle(consumer, drained, SETTLE_S)
        rss = child.peak_rss_bytes()
    finally:
        child.stop()
        consumer.close()
    return _result(name, sent, drained, rss)


def _result(name: str, sent: traffic.Sent, drained: outputs.Drain, rss: int) -> PathResult:
    missing, extra = drained.missing_and_extra(sent.owed)
    per_event = sent.outputs / max(1, len(sent.owed))
    result = PathResult(
        name=name,
        events=len(sent.owed),
        outputs_owed=sent.outputs,
        outputs_read=drained.read,
        missing=missing,
        extra=extra,
        events_per_s=round(drained.steady_rate() / per_event, 1),
        events_per_s_first_to_last=round(drained.first_to_last_rate() / per_event, 1),
        peak_rss_bytes=rss,
    )
    print(f"bench {name}: {result.events_per_s:,.0f} events/s, missing {missing}, extra {extra}", flush=True)
    return result


def _worker_and_latency(
    settings: Settings,
    client: AdminClient,
    run_id: str,
    options: BenchOptions,
    workdir: Path,
    features: list[FeatureSpec],
    paths: dict[str, PathResult],
) -> Report:
    prefix, app_id = f"{run_id}w-", f"{run_id}w"
    topics.create_worker_topics(client, prefix, app_id)
    census = EntityCensus(features)
    sent = _produce("worker", settings, prefix, options.events, options, census.observe)
    consumer = outputs.reader(settings, topics.verdict_topics(prefix), f"{prefix}reader")
    env = _worker_env(settings, prefix, app_id)
    worker = start_worker(env, workdir / "worker", _free_port(), workdir / "worker.log")
    try:
        cpu = worker.child.cpu_seconds()
        drained = outputs.drain(consumer, sent.owed, worker.child.check_alive, options.idle_timeout_s)
        cpu = worker.child.cpu_seconds() - cpu
        outputs.settle(consumer, drained, SETTLE_S)
        consumer.close()
        paths["worker"] = _result("worker", sent, drained, worker.child.peak_rss_bytes())
        throughput = paths["worker"].events_per_s
        levels = _latency("worker", settings, prefix, worker.child.check_alive, throughput, options,
                          census.observe)  # fmt: skip
        stats, rss = worker.stats(), worker.child.peak_rss_bytes()
    finally:
        worker.child.stop()
    restart = _restart(env, workdir)
    paths["2 workers"], cpu_two = _two_workers(settings, client, run_id, options, workdir)
    floor = _floor_latency(settings, client, run_id, throughput, options, workdir)
    report = _report(settings, options, paths, levels, floor, rss, worker, stats, census)
    report.restart = restart
    report.cpu_per_event_two_over_one = round(cpu_two / cpu, 3) if cpu > 0 else None
    report.judge()
    return report


def _restart(env: dict[str, str], workdir: Path) -> Restart:
    """A new worker on the app the worker left (a new data directory): ready when, and its restore's rate."""
    started = time.monotonic()
    again = start_worker(env, workdir / "worker-again", _free_port(), workdir / "worker-again.log")
    ready_s = time.monotonic() - started
    try:
        entities, seconds = again.restored()
    finally:
        again.child.stop()
    restart = Restart(ready_s=round(ready_s, 2), entities=entities, restore_s=seconds)
    print(f"bench restart: ready in {ready_s:.1f} s, {entities:,} entities restored in {seconds:.2f} s", flush=True)
    return restart


def _two_workers(
    settings: Settings, client: AdminClient, run_id: str, options: BenchOptions, workdir: Path
) -> tuple[PathResult, float]:
    """Two workers, their shards split, drain the worker's number of events; the result, their CPU seconds."""
    prefix, app_id = f"{run_id}v-", f"{run_id}v"
    topics.create_worker_topics(client, prefix, app_id)
    env = _worker_env(settings, prefix, app_id)
    pair = [start_worker(env, workdir / f"pair-{i}", _free_port(), workdir / f"pair-{i}.log") for i in (1, 2)]
    try:
        _wait_for_split(pair, DEFAULT_SHARDS, options.idle_timeout_s)  # what create_worker_topics made
        consumer = outputs.reader(settings, topics.verdict_topics(prefix), f"{prefix}reader")  # before: verdicts timed
        cpu = sum(w.child.cpu_seconds() for w in pair)
        sent = _produce("2 workers", settings, prefix, options.events, options)

        def check_alive() -> None:
            for w in pair:
                w.child.check_alive()

        drained = outputs.drain(consumer, sent.owed, check_alive, options.idle_timeout_s)
        cpu = sum(w.child.cpu_seconds() for w in pair) - cpu
        outputs.settle(consumer, drained, SETTLE_S)
        consumer.close()
        rss = max(w.child.peak_rss_bytes() for w in pair)
    finally:
        for w in pair:
            w.child.stop()
    return _result("2 workers", sent, drained, rss), cpu


def _wait_for_split(pair: list[BenchWorker], shards: int, timeout_s: float) -> None:
    """Until each worker holds some shards and, together, each of the app's shards once (the join has settled)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            held = [w.stats()["shards"] for w in pair]
        except OSError:
            held = [[], []]
        if all(held) and sorted(held[0] + held[1]) == list(range(shards)):
            return
        time.sleep(0.3)
    raise StreamguardError(f"the two workers did not split the {shards} shards in {timeout_s:.0f} s")


def _floor_latency(
    settings: Settings, client: AdminClient, run_id: str, throughput: float, options: BenchOptions, workdir: Path
) -> list[latency.LatencyLevel]:
    """The exactly-once floor's latency at the worker's loads, on topics shaped like the worker's."""
    prefix, app_id = f"{run_id}x-", f"{run_id}x"
    topics.create_worker_topics(client, prefix, app_id)
    argv = [sys.executable, "-m", "streamguard.bench.floor", "--bootstrap", settings.bootstrap, "--prefix", prefix]
    child = start("the exactly-once floor", [*argv, "--app-id", app_id], workdir / "floor.log")
    try:
        return _latency("floor", settings, prefix, child.check_alive, throughput, options, lambda _event: 0)
    finally:
        child.stop()


def _worker_env(settings: Settings, prefix: str, app_id: str) -> dict[str, str]:
    return {
        "STREAMGUARD_BOOTSTRAP": settings.bootstrap,
        "STREAMGUARD_TOPIC_PREFIX": prefix,
        "STREAMGUARD_APP_ID": app_id,
        "STREAMGUARD_HASH_KEY": settings.hash_key or secrets.token_hex(16),
        "STREAMGUARD_ENGINE": settings.engine,  # `STREAMGUARD_ENGINE=columnar streamguard bench` measures that one
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _latency(
    name: str,
    settings: Settings,
    prefix: str,
    check_alive: Callable[[], None],
    throughput: float,
    options: BenchOptions,
    observe: Callable[[dict[str, Any]], int],
) -> list[latency.LatencyLevel]:
    mix = traffic.traffic_for(int(throughput * options.latency_seconds), options.seed + 1, f"{prefix}l")
    send, done = latency.sender(settings, prefix, mix, observe)
    clock = latency.VerdictClock(settings, topics.verdict_topics(prefix), f"{prefix}clock")
    levels = []
    try:
        warmup_s = min(WARMUP_S, options.latency_seconds / 2)  # the switch from draining a backlog to live traffic
        latency.measure(clock, send, LOADS[0], LOADS[0] * throughput, warmup_s, check_alive)
        for load in LOADS:
            level = latency.measure(clock, send, load, load * throughput, options.latency_seconds, check_alive)
            print(f"bench {name} latency at {load:.0%}: p50 {level.p50_ms} ms, p99 {level.p99_ms} ms", flush=True)
            levels.append(level)
    finally:
        done()
        clock.close()
    return levels


def _report(
    settings: Settings,
    options: BenchOptions,
    paths: dict[str, PathResult],
    levels: list[latency.LatencyLevel],
    floor: list[latency.LatencyLevel],
    rss: int,
    worker: BenchWorker,
    stats: dict[str, object],
    census: EntityCensus,
) -> Report:
    in_memory = stats.get("memory_state_bytes")
    state_bytes = worker.state_bytes() + (in_memory if isinstance(in_memory, int) else 0)  # on disk, in memory
    return Report(
        machine={"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        broker=settings.bootstrap,
        sizes={
            "worker_events": options.events,
            "raw_events": options.raw_events,
            "quix_events": options.quix_events,
            "kstreams_events": options.kstreams_events,
            "kstreams_stream_threads": options.kstreams_threads,
            "latency_seconds_per_load": options.latency_seconds,
            "event_rate_stamped": options.event_rate,
            "seed": options.seed,
            "engine": settings.engine,
        },
        paths=paths,
        latency=levels,
        floor_latency=floor,
        worker_peak_rss_bytes=rss,
        state={
            "bytes": state_bytes,
            "entities": census.count(),
            "bytes_per_entity": round(state_bytes / max(1, census.count()), 1),
            "entities_by_kind": census.by_kind(),
            "worker_deadletters": stats.get("deadletters"),
        },
        stalls=worker.stalls(stats),
        methods=METHODS,
    )
