"""Velocity features against the real broker: exact whatever the partitioning, the workers and the crashes.

Three hours of event-time history are produced as fast as possible; then one
probe per entity (a refund, which counts in no feature) reads every feature of
its IP, network, device, fingerprint and account. Once the history is in, a
probe's values no longer depend on the order anything arrived in, so they are
compared with brute force over the history (tests/naive.py).
"""

from __future__ import annotations

import random
import time

import msgspec
import pytest

from streamguard.events import DeviceEvent, LoginEvent, SmsEvent, TransactionEvent
from streamguard.features.spec import load_features
from tests.integration.harness import Stack
from tests.naive import naive_feature

pytestmark = pytest.mark.integration

HOURS_MS = 3 * 3_600_000
LATENESS_MS = 300_000
PROBE_READS = ("ip", "ip_network", "device_id", "fingerprint", "account_id", "global")


History = tuple[list, list, dict[str, str], list]


def _history(run: str, seed: int = 7) -> History:
    """Device reports first, then 3 h of logins, SMS and payments in event-time order; then the probes."""
    rng = random.Random(seed)
    end = int(time.time() * 1000) - 60_000
    start = end - HOURS_MS
    devices = [f"dev{i}" for i in range(12)]
    fingerprint_of = {d: f"fp{i // 3}" for i, d in enumerate(devices)}  # a reset tool: 3 ids per fingerprint
    ips = [f"10.{rng.randrange(2)}.{rng.randrange(2)}.{rng.randrange(1, 5)}" for _ in range(10)]
    accounts = [f"acct{i}" for i in range(15)]
    n = 0

    def eid() -> str:
        nonlocal n
        n += 1
        return f"{run}-{n:06d}"

    reports = [DeviceEvent(event_id=eid(), ts=start + i, device_id=d, fingerprint=fingerprint_of[d])
               for i, d in enumerate(devices)]  # fmt: skip
    events: list = []
    for _ in range(2500):
        ts = start + 1_000 + rng.randrange(HOURS_MS - 1_000)
        ip, device, account = rng.choice(ips), rng.choice(devices), rng.choice(accounts)
        roll = rng.random()
        if roll < 0.6:
            failed = rng.random() < 0.4
            events.append(
                LoginEvent(
                    event_id=eid(),
                    ts=ts,
                    account_id=account,
                    ip=ip,
                    device_id=device,
                    success=not failed,
                    failure_reason=rng.choice(["bad_password", "no_such_account"]) if failed else None,
                )
            )
        elif roll < 0.8:
            events.append(
                SmsEvent(event_id=eid(), ts=ts, phone=f"+8613800{rng.randrange(60):06d}", ip=ip, device_id=device)
            )
        else:
            events.append(
                TransactionEvent(
                    event_id=eid(),
                    ts=ts,
                    account_id=account,
                    amount=rng.randrange(3000),
                    currency="CNY",
                    kind=rng.choice(["payment", "promo_redeem"]),
                    instrument_id=f"card{rng.randrange(20)}",
                    device_id=device,
                    ip=ip,
                )
            )
    events.sort(key=lambda e: e.ts)
    probes = [TransactionEvent(event_id=eid(), ts=end, account_id=accounts[i % len(accounts)], amount=0,
                               currency="CNY", kind="refund", device_id=devices[i % len(devices)], ip=ips[i % len(ips)])
              for i in range(20)]  # fmt: skip
    return reports, events, fingerprint_of, probes


def _send(stack: Stack, events: list, keyed: bool = True, partition: int | None = None) -> None:
    rng = random.Random(1)
    stack.produce(
        ((f"events.{type(e).__struct_config__.tag}", (f"k{rng.random()}".encode() if keyed else None),
          msgspec.json.encode(e)) for e in events),
        partition=partition,
    )  # fmt: skip


def _run(
    stack: Stack, partition: int | None, kill_after: float | None = None, workers: int = 1
) -> tuple[dict[str, dict], float, History]:
    """Each probe's feature values, how long the history took to be decided, and what was sent."""
    sent = _history(stack.prefix)
    reports, history, _, probes = sent
    started = [stack.start_worker(f"w{i}") for i in range(workers)]
    reader = stack.reader([stack.topic("features")])
    _send(stack, reports, partition=partition)
    reader.read_until(len(reports), settle=0)
    t0 = time.monotonic()
    _send(stack, history, partition=partition)
    if kill_after is not None:
        time.sleep(kill_after)
        started[0].kill()
        stack.start_worker("w0")
    reader.read_until(len(reports) + len(history), timeout=120, settle=0)
    replay_s = time.monotonic() - t0
    _send(stack, probes, partition=partition)
    reader.read_until(len(reports) + len(history) + len(probes), timeout=60)
    by_id = {v["event_id"]: v for v in reader.verdicts}
    assert len(by_id) == len(reader.verdicts), "one feature record per event"
    return {p.event_id: by_id[p.event_id]["features"] for p in probes}, replay_s, sent


def _expected(sent: History) -> dict[str, dict]:
    reports, history, fingerprint_of, probes = sent
    specs = [s for s in load_features(LATENESS_MS) if s.entity in PROBE_READS]
    out = {}
    for probe in probes:
        out[probe.event_id] = {s.name: naive_feature(s, reports + history, probe, fingerprint_of) for s in specs}
    return out


def _assert_exact(run: tuple[dict[str, dict], float, History]) -> None:
    got, _, sent = run
    expected = _expected(sent)
    compared, wrong = 0, []
    for event_id, want in expected.items():
        for name, value in want.items():
            if got[event_id].get(name) != value:
                wrong.append((event_id, name, got[event_id].get(name), value))
            compared += 1
    assert not wrong, f"{len(wrong)} of {compared} values differ: {wrong[:10]}"
    assert compared > 400


def test_one_partition_and_six_give_the_exact_features_and_replay_runs_fast(feature_stack: Stack, broker, tmp_path):
    one = _run(feature_stack, partition=0)
    _assert_exact(one)
    assert one[1] < 60, f"3 h of history took {one[1]:.1f} s"
    six_stack = Stack(broker, tmp_path / "six", features=True)
    (tmp_path / "six").mkdir()
    six_stack.create_topics()
    try:
        six = _run(six_stack, partition=None)
        _assert_exact(six)  # the same history, keyed at random over 6 partitions
    finally:
        six_stack.stop()


def test_two_workers_give_the_exact_features(feature_stack: Stack):
    _assert_exact(_run(feature_stack, partition=None, workers=2))


def test_a_worker_killed_mid_replay_gives_the_exact_features(feature_stack: Stack):
    _assert_exact(_run(feature_stack, partition=None, kill_after=0.3))
