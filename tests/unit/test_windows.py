"""The typed window wrappers: state survives its bytes, and distinct counts stay bounded."""

import math
import random

import pytest

from streamguard.features.compiled import value_hash
from streamguard.features.windows import DistinctWindow, ExtremeWindow, SinceLastWindow, SumWindow

RES, SLOTS, BUCKETS = 1000, 16, 10


def _round_trip(window, make):
    return make(window.to_bytes())


def test_sum_and_extreme_windows_survive_their_bytes():
    total = SumWindow.of(SLOTS, RES, BUCKETS)
    top = ExtremeWindow.of(SLOTS, RES, BUCKETS, True)
    for ts, v in [(1000, 2), (2500, 5), (1800, 1)]:
        total.add(ts, v)
        top.add(ts, v)
    total = _round_trip(total, lambda raw: SumWindow.of(SLOTS, RES, BUCKETS, raw))
    top = _round_trip(top, lambda raw: ExtremeWindow.of(SLOTS, RES, BUCKETS, True, raw))
    assert total.value(3000) == 8.0
    assert top.value(3000) == 5.0
    for window in (total, top):
        assert type(window).newest_ts_in(window.to_bytes(), SLOTS, RES) == window.newest_ts() == 2999
    assert math.isnan(ExtremeWindow.of(SLOTS, RES, BUCKETS, False).value(3000))


def test_distinct_is_exact_up_to_the_cap_then_estimated_and_bounded():
    window = DistinctWindow.of(SLOTS, RES, BUCKETS, cap=32)
    for i in range(30):
        window.add(1000 + i, value_hash(f"v{i % 20}"))
    window = DistinctWindow.of(SLOTS, RES, BUCKETS, 32, window.to_bytes())
    assert window.value(2000) == 20.0 and not window.estimated
    size_exact = len(window.to_bytes())
    for i in range(5000):
        window.add(1000 + i % 9000, value_hash(f"w{i}"))
    assert window.estimated
    raw = window.to_bytes()
    assert len(raw) < size_exact + SLOTS * 128 + 64  # bounded: the registers replace the values
    window = DistinctWindow.of(SLOTS, RES, BUCKETS, 32, raw)
    assert window.value(9999) == pytest.approx(5020, rel=0.3)


def test_since_last_reports_what_was_known_before_the_event():
    window = SinceLastWindow.of()
    window.add(10_000, 1)
    assert math.isnan(window.value(10_000))
    window = SinceLastWindow.of(window.to_bytes())
    assert window.value(25_000) == 15.0  # read only: the gap to the newest counted
    window.add(26_000, 1)
    assert window.value(26_000) == 16.0  # right after its own add: the gap to the one before


@pytest.mark.parametrize("make", [
    lambda raw=None: SumWindow.of(SLOTS, RES, BUCKETS, raw),
    lambda raw=None: ExtremeWindow.of(SLOTS, RES, BUCKETS, False, raw),
    lambda raw=None: DistinctWindow.of(SLOTS, RES, BUCKETS, 32, raw),
])  # fmt: skip
def test_bytes_keep_only_held_slots_and_decode_to_the_same_answers(make):
    rng = random.Random(3)
    window = make()
    assert make(window.to_bytes()).value(5000) == window.value(5000) or math.isnan(window.value(5000))
    for step in range(400):  # the ring wraps many times; the distinct one goes past its cap
        window.add(step * 97 + rng.randrange(3000), value_hash(f"v{rng.randrange(60)}"))
        raw = window.to_bytes()
        again = make(raw)
        assert again.to_bytes() == raw
        for ts in (step * 97, step * 97 + 2000):
            a, b = window.value(ts), again.value(ts)
            assert a == b or (math.isnan(a) and math.isnan(b))
    assert len(SumWindow.of(SLOTS, RES, BUCKETS).to_bytes()) == 0
