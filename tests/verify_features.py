"""V5 of `streamguard verify`: probe feature values against brute force (tests/naive.py).

It needs a worker that ran with STREAMGUARD_FEATURES_TOPIC set and the naive
twins, which are not part of the package, so it lives with the tests and
uses the verifier's readers. Probes should count in no feature themselves
(a refund, as in tests/integration/test_features.py) and be sent once the
history is decided: then their values no longer depend on arrival order.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from streamguard.codec import decode_event
from streamguard.events import DeviceEvent
from streamguard.settings import Settings
from streamguard.verify import Check, read_inputs, read_topics, topic_names
from streamguard.verify.outputs import dead_letter_sources
from tests.naive import naive_feature


def decided_events(settings: Settings) -> list[Any]:
    """The events the workers took as valid: one copy per event_id (the earliest sent), edge cases included."""
    inputs = read_inputs(settings)
    dead, _ = dead_letter_sources(read_topics(settings, [topic_names(settings).deadletter]))
    taken = [c for c in inputs if c.kind == "valid" or (c.kind == "either" and not dead.get(c.record.source))]
    taken.sort(key=lambda c: (c.record.timestamp_ms or 0, c.record.topic, c.record.partition, c.record.offset))
    events: dict[str, Any] = {}
    for item in taken:
        assert item.event_id is not None
        if item.event_id not in events:
            events[item.event_id] = decode_event(item.record.value, item.event_type, 2**62)
    return list(events.values())


def fingerprints(events: Iterable[Any]) -> dict[str, str]:
    """Each device's fingerprint, as its newest report gave it."""
    reports = sorted((e for e in events if isinstance(e, DeviceEvent) and e.fingerprint), key=lambda e: e.ts)
    return {e.device_id: e.fingerprint for e in reports}


def check_probe_features(settings: Settings, probe_ids: Iterable[str], specs: list[Any]) -> Check:
    """V5: every probe's published value of each of `specs` equals brute force over everything else decided."""
    events = decided_events(settings)
    fingerprint_of = fingerprints(events)
    published = {}
    for record in read_topics(settings, [settings.topic(settings.features_topic)]):
        body = json.loads(record.value or b"{}")
        published[body["event_id"]] = body["features"]
    by_id = {e.event_id: e for e in events}
    wrong, unpublished, compared = [], [], 0
    for probe_id in probe_ids:
        if probe_id not in published or probe_id not in by_id:
            unpublished.append(probe_id)
            continue
        history = [e for e in events if e.event_id != probe_id]
        for spec in specs:
            want = naive_feature(spec, history, by_id[probe_id], fingerprint_of)
            got = published[probe_id].get(spec.name)
            compared += 1
            if got != want:
                wrong.append(f"{probe_id} {spec.name}: {got} != {want}")
    counts = {"values compared": compared}
    problems = {"differing values": wrong, "no feature record": unpublished}
    return Check.of("V5", "probe features equal brute force", counts, problems)
