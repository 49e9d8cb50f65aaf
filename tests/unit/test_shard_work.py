"""Shard work with every shard local: fingerprints are learnt, followed from device ids, and forgotten."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamguard.events import DeviceEvent, LoginEvent
from streamguard.pipeline.shard import FINGERPRINT_MEMORY_MS
from tests.local import LocalPipeline

T0 = 1_790_000_000_000


@pytest.fixture
def pipeline(tmp_path: Path):
    local = LocalPipeline(tmp_path)
    yield local
    local.close()


def _values(pipeline: LocalPipeline, event) -> dict:
    return pipeline.run(event, T0)["features"]


def _login(i: int, ts: int, device: str) -> LoginEvent:
    return LoginEvent(event_id=f"l{i}", ts=ts, account_id=f"a{i}", ip="10.0.0.1", success=False, device_id=device)


def test_a_fingerprint_is_learnt_followed_through_a_device_id_reset_and_forgotten(pipeline):
    for i, device in enumerate(["d1", "d2"]):  # one phone, its id reset once
        _values(pipeline, DeviceEvent(event_id=f"r{i}", ts=T0, device_id=device, fingerprint="hw-1"))
    _values(pipeline, _login(1, T0 + 60_000, "d1"))
    values = _values(pipeline, _login(2, T0 + 120_000, "d2"))
    assert values["login_accounts_by_fingerprint_1h"] == 2.0  # both device ids lead to one fingerprint
    assert values["login_accounts_by_device_1h"] == 1.0
    _values(pipeline, _login(3, T0 + FINGERPRINT_MEMORY_MS + 3_600_000, "d9"))  # a day later, elsewhere
    later = _values(pipeline, _login(4, T0 + FINGERPRINT_MEMORY_MS + 3_700_000, "d2"))
    assert "login_accounts_by_fingerprint_1h" not in later, "a link not reported for a day is forgotten"
    assert later["login_accounts_by_device_1h"] == 1.0
