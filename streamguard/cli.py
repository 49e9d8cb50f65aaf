"""`streamguard`: the command line of workers, topics, the demo, the bench and the schemas.

Flags override `STREAMGUARD_*` variables; the settings object is built here,
once, and passed down.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from streamguard import settings as settings_module
from streamguard.errors import StreamguardError
from streamguard.settings import Settings

log = logging.getLogger("streamguard")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    try:
        settings = settings_module.load(None, **_overrides(args))
        logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        run: Callable[[Settings, argparse.Namespace], int] = args.run
        return run(settings, args)
    except StreamguardError as exc:
        print(f"streamguard: {exc}", file=sys.stderr)
        return 1


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    names = ("bootstrap", "web_port", "data_dir", "topic_prefix", "app_id", "log_level", "shards")
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--bootstrap", help="Kafka bootstrap servers (STREAMGUARD_BOOTSTRAP)")
    common.add_argument("--topic-prefix", help="prefix of every topic (STREAMGUARD_TOPIC_PREFIX)")
    common.add_argument("--app-id", help="application id and consumer group (STREAMGUARD_APP_ID)")
    common.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR (STREAMGUARD_LOG_LEVEL)")
    parser = argparse.ArgumentParser(prog="streamguard", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(title="commands")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help, parents=[common])

    worker = command("worker", "run a worker: decide every event of the input topics")
    worker.add_argument("--web-port", type=int, help="port of the worker's web server (STREAMGUARD_WEB_PORT)")
    worker.add_argument("--data-dir", type=Path, help="the worker's state directory (STREAMGUARD_DATA_DIR)")
    worker.set_defaults(run=_worker)

    topics = command("topics", "create the topics of topics/ and report drift")
    topics.add_argument("action", choices=["create", "check"])
    topics.add_argument("--shards", type=int, help="the shard count of a new app (STREAMGUARD_SHARDS)")
    topics.set_defaults(run=_topics)

    reshard = command("reshard", "move an app's state to another shard count, with every worker stopped")
    reshard.add_argument("--to", dest="to_shards", type=int, required=True, help="the new shard count")
    reshard.add_argument(
        "--workdir", type=Path, default=Path(".run/reshard"), help="where the state is staged (kept if it fails)"
    )
    reshard.set_defaults(run=_reshard)

    demo = command("demo", "stream labelled demo traffic and show what the workers decide")
    demo.add_argument("--rate", type=float, default=500.0, help="events per second")
    demo.add_argument("--seconds", type=float, default=60.0, help="how long to send")
    demo.add_argument("--seed", type=int, default=1)
    demo.set_defaults(run=_demo)

    bench = command(
        "bench", "measure one worker against raw Kafka, Quix Streams and Kafka Streams; print and write a report"
    )
    bench.add_argument("--events", type=int, default=200_000, help="events of the worker's throughput run")
    bench.add_argument("--raw-events", type=int, default=300_000, help="events of the raw pass-through's run")
    bench.add_argument("--quix-events", type=int, default=15_000, help="events of the Quix Streams peer's run")
    bench.add_argument(
        "--kstreams-events", type=int, default=60_000, help="events of the Kafka Streams peer's run (0: leave it out)"
    )
    bench.add_argument("--kstreams-threads", type=int, default=1, help="the Kafka Streams peer's num.stream.threads")
    bench.add_argument("--latency-seconds", type=float, default=20.0, help="seconds of traffic per latency load")
    bench.add_argument("--event-rate", type=float, default=2000.0, help="rate the pre-produced events are stamped at")
    bench.add_argument("--seed", type=int, default=1)
    bench.add_argument("--out", type=Path, default=Path(".run/bench/report.json"), help="where the JSON report goes")
    bench.add_argument("--workdir", type=Path, default=Path(".run/bench"), help="logs and state of each run")
    bench.add_argument("--quix-venv", type=Path, default=Path(".run/bench/quix-venv"), help="made if missing")
    bench.add_argument(
        "--kstreams-build", type=Path, default=Path(".run/bench/kstreams"), help="the peer's jar; built if missing"
    )
    bench.set_defaults(run=_bench)

    core = command("bench-core", "measure the batch core alone, offline: CPU per event, state per entity, restore")
    core.add_argument("--scenario", type=Path, help="a file ../shared/scenarios/generate.py wrote (default: demo mix)")
    core.add_argument("--events", type=int, default=100_000, help="demo events, without --scenario")
    core.add_argument("--batch", type=int, default=5000, help="records per batch, as the engine's merge releases them")
    core.add_argument("--seed", type=int, default=1)
    core.add_argument(
        "--workers", type=int, help="through the in-memory cluster: simulated workers, change records, snapshots"
    )
    core.set_defaults(run=_bench_core)

    rules = command("rules", "check a ruleset file, or check it and publish it to control.rules")
    rules.add_argument("action", choices=["check", "publish"])
    rules.add_argument("file", type=Path, help="a ruleset (TOML or JSON), e.g. features/rulesets/default.toml")
    rules.set_defaults(run=_rules)

    lists = command("lists", "add an entry to a block/allow list, or remove it (control.lists)")
    lists.add_argument("action", choices=["add", "remove"])
    lists.add_argument("list", choices=["block", "allow"])
    lists.add_argument("entity", help="ip, network, device, fingerprint, account, phone or instrument")
    lists.add_argument("value", help="the raw identifier (an address or /24 for networks)")
    lists.add_argument("--ttl", type=int, help="seconds until the entry lapses (default: never)")
    lists.add_argument("--note", default="", help="why, for whoever reads the topic")
    lists.set_defaults(run=_lists)

    verify = command("verify", "check, once traffic has stopped, that what is committed is exactly-once")
    verify.add_argument(
        "--data-dir",
        dest="data_dirs",
        type=Path,
        action="append",
        help="a worker's data directory, for the state check (repeat for each worker; default STREAMGUARD_DATA_DIR)",
    )
    verify.set_defaults(run=_verify)

    schemas = command("schemas", "write the JSON Schemas of the events into topics/schemas")
    schemas.add_argument("--check", action="store_true", help="fail if the files on disk are stale")
    schemas.set_defaults(run=_schemas)
    return parser


def _worker(settings: Settings, args: argparse.Namespace) -> int:
    from confluent_kafka import KafkaError, KafkaException

    from streamguard.app import create_app  # imports faust: only for the worker
    from streamguard.pipeline.service import START_AGAIN_AFTER_S, RestartingWorker, restart_in_place
    from streamguard.topics.admin import wait_for_broker

    wait_for_broker(settings)
    try:
        _apply_topics(settings, quiet=True)
        app, engine = create_app(settings)
    except KafkaException as exc:  # the broker answered, then went away again (it is restarting)
        if exc.args[0].code() != KafkaError._TRANSPORT:
            raise
        print(f"streamguard: the broker went away while this worker was starting ({exc.args[0]}): starting again",
              file=sys.stderr, flush=True)  # fmt: skip
        time.sleep(START_AGAIN_AFTER_S)
        restart_in_place()  # waits for the broker again, at most BROKER_WAIT_S
    worker = RestartingWorker(app, engine, loglevel=settings.log_level, override_logging=False)
    worker.execute_from_commandline()
    return 0


def _topics(settings: Settings, args: argparse.Namespace) -> int:
    """`create` reports drift and succeeds; `check` fails on drift, for scripts that gate on it."""
    problems = _apply_topics(settings, quiet=False, create=args.action == "create")
    return 1 if problems and args.action == "check" else 0


def _apply_topics(settings: Settings, quiet: bool, create: bool = True) -> list[str]:
    from streamguard.topics import admin
    from streamguard.topics.identity import app_topics

    specs, names = app_topics(settings)
    if names.shards != settings.shards and not quiet:
        print(f"this app has {names.shards} shards (STREAMGUARD_SHARDS and --shards apply to new apps; "
              f"`streamguard reshard --to {settings.shards}` re-shards this one)")  # fmt: skip
    client = admin.admin_client(settings)
    if create:
        for name in admin.create_missing(client, specs):
            print(f"created {name}")
    problems = admin.drift(client, specs)
    for problem in problems:
        print(f"drift: {problem}", file=sys.stderr)
    if not problems and not quiet:
        print(f"{len(specs)} topics match topics/")
    return problems


def _reshard(settings: Settings, args: argparse.Namespace) -> int:
    from streamguard.reshard.run import reshard

    print(reshard(settings, args.to_shards, args.workdir))
    return 0


def _demo(settings: Settings, args: argparse.Namespace) -> int:
    from streamguard.demo.run import run_demo

    return run_demo(settings, rate=args.rate, seconds=args.seconds, seed=args.seed)


def _bench_core(settings: Settings, args: argparse.Namespace) -> int:
    import time

    from streamguard.bench.core import bench_cluster, bench_core, demo_records, print_figures, scenario_records

    settings.require_hash_key()
    now_ms = int(time.time() * 1000)
    if args.scenario is not None:
        records = scenario_records(settings, args.scenario)
    else:
        records = demo_records(settings, args.events, args.seed, now_ms)
    if args.workers is not None:
        print_figures(bench_cluster(settings, records, args.batch, now_ms, args.workers))
    else:
        print_figures(bench_core(settings, records, args.batch, now_ms))
    return 0


def _bench(settings: Settings, args: argparse.Namespace) -> int:
    """Exit 0 when the bench ran and every path wrote what it owed; the targets are reported, not enforced."""
    from streamguard.bench.run import BenchOptions, run_bench

    names = ["events", "raw_events", "quix_events", "kstreams_events", "kstreams_threads", "latency_seconds"]
    names += ["event_rate", "seed", "out", "workdir", "quix_venv", "kstreams_build"]
    options = BenchOptions(**{n: getattr(args, n) for n in names})
    report = run_bench(settings, options)
    report.write(args.out)
    print(report.table())
    print(f"report: {args.out}")
    return 0 if all(p.complete for p in report.paths.values()) else 1


def _rules(settings: Settings, args: argparse.Namespace) -> int:
    from streamguard.features.spec import load_features
    from streamguard.rules.spec import parse_ruleset

    raw = args.file.read_bytes()
    ruleset = parse_ruleset(raw, load_features(settings.allowed_lateness_ms))
    print(f"{args.file}: {ruleset.label}, {len(ruleset.rule)} rules, valid")
    if args.action == "publish":
        _publish(settings, "control.rules", ruleset.name.encode(), raw)
        print(f"published to {settings.topic('control.rules')}: workers switch within seconds if it is newer")
    return 0


def _lists(settings: Settings, args: argparse.Namespace) -> int:
    import orjson

    from streamguard.privacy import Pseudonymizer
    from streamguard.rules.lists import Lists

    key = f"{args.list}:{args.entity}:{args.value}".encode()
    value = None if args.action == "remove" else orjson.dumps({"ttl_s": args.ttl, "note": args.note})
    Lists(Pseudonymizer(b"only-to-check-the-entry")).apply(key, value, 0)  # raises on a bad entry
    _publish(settings, "control.lists", key, value)
    print(f"{'removed' if value is None else 'added'} {args.list}:{args.entity} on {settings.topic('control.lists')}")
    return 0


def _publish(settings: Settings, topic: str, key: bytes, value: bytes | None) -> None:
    from confluent_kafka import Producer

    from streamguard import kafka_config
    from streamguard.errors import BrokerError

    producer = Producer(kafka_config.publisher(settings))
    errors: list[Any] = []
    producer.produce(settings.topic(topic), value, key, on_delivery=lambda err, _: errors.append(err))
    if producer.flush(30) or errors[0] is not None:
        raise BrokerError(f"could not publish to {settings.topic(topic)}: {errors[0] if errors else 'timed out'}")


def _verify(settings: Settings, args: argparse.Namespace) -> int:
    """Exit 0 when every check passed (or was skipped), 1 when one failed."""
    from streamguard.verify import verify

    data_dirs = args.data_dirs or [p for p in [Path(settings.data_dir)] if p.is_dir()]
    report = verify(settings, data_dirs)
    print(report.format())
    return 0 if report.passed else 1


def _schemas(settings: Settings, args: argparse.Namespace) -> int:
    from streamguard.schemas import write_schemas

    stale = write_schemas(check_only=args.check)
    for path in stale:
        print(f"{'stale' if args.check else 'wrote'} {path}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
