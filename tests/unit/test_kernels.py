"""The window kernels against their plain-Python twins (tests/naive.py), and against brute force."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numba.core.registry import CPUDispatcher

from streamguard.kernels import window
from tests.naive import NaiveRing, naive_hll_estimate

RESOLUTION = 1000
SLOTS = 12
WINDOW = 8  # buckets; the other 4 slots are the allowed lateness

# Timestamps over ~40 buckets, in any order: out of order, repeated, on bucket edges.
timestamps = st.one_of(
    st.integers(0, 40 * RESOLUTION),
    st.integers(0, 40).map(lambda b: b * RESOLUTION),  # first ms of a bucket
    st.integers(1, 40).map(lambda b: b * RESOLUTION - 1),  # last ms of a bucket
)
events = st.lists(st.tuples(timestamps, st.integers(0, 5)), max_size=60)


@pytest.fixture(autouse=True, scope="module")
def _compiled() -> None:
    """Compile first: a kernel's first call must not count against hypothesis' deadline."""
    window.warm_up()


def _ring(slots: int = SLOTS) -> tuple[np.ndarray, np.ndarray]:
    return np.full(slots, window.EMPTY, np.int64), np.zeros(slots, np.float64)


@given(events, timestamps)
def test_sum_matches_the_twin(stream, query_ts):
    starts, values = _ring()
    twin = NaiveRing(SLOTS, RESOLUTION)
    for ts, amount in stream:
        assert window.ring_add(starts, values, ts, RESOLUTION, float(amount)) == twin.add(ts, amount)
    assert window.ring_sum(starts, values, query_ts, RESOLUTION, WINDOW) == twin.sum(query_ts, WINDOW)
    assert window.ring_newest(starts, RESOLUTION) == twin.newest_ts()


@given(events, timestamps, st.booleans())
def test_min_and_max_match_the_twin(stream, query_ts, is_max):
    starts, values = _ring()
    twin = NaiveRing(SLOTS, RESOLUTION)
    for ts, value in stream:
        assert window.ring_extreme(starts, values, ts, RESOLUTION, float(value), is_max) == twin.add(ts, value)
    got = window.ring_reduce_extreme(starts, values, query_ts, RESOLUTION, WINDOW, is_max)
    want = twin.extreme(query_ts, WINDOW, is_max)
    assert (math.isnan(got) and math.isnan(want)) or got == want


@given(events, timestamps)
def test_distinct_matches_the_twin(stream, query_ts):
    starts = np.full(SLOTS, window.EMPTY, np.int64)
    hashes, masks = np.zeros(64, np.int64), np.zeros(64, np.uint64)
    used = 0
    twin = NaiveRing(SLOTS, RESOLUTION)
    for ts, value in stream:
        result = window.distinct_add(starts, hashes, masks, used, value, ts, RESOLUTION)
        assert (result != -2) == twin.add(ts, value)
        assert result != -1, "64 slots hold the 6 values drawn"
        used = max(used, 0) if result < 0 else result
    assert window.distinct_count(starts, masks, used, query_ts, RESOLUTION, WINDOW) == twin.distinct(query_ts, WINDOW)


def test_distinct_reports_a_full_table_and_keeps_what_it_had():
    starts = np.full(SLOTS, window.EMPTY, np.int64)
    hashes, masks = np.zeros(2, np.int64), np.zeros(2, np.uint64)
    used = window.distinct_add(starts, hashes, masks, 0, 11, 5_000, RESOLUTION)
    used = window.distinct_add(starts, hashes, masks, used, 22, 5_100, RESOLUTION)
    assert window.distinct_add(starts, hashes, masks, used, 33, 5_200, RESOLUTION) == -1
    assert window.distinct_add(starts, hashes, masks, used, 11, 5_300, RESOLUTION) == 2  # a known value still fits
    assert window.distinct_count(starts, masks, used, 5_300, RESOLUTION, WINDOW) == 2


@settings(max_examples=200)
@given(st.integers(20 * RESOLUTION, 30 * RESOLUTION), st.lists(st.integers(-4 * RESOLUTION + 1, 0), max_size=50))
def test_with_bounded_lateness_the_window_is_exact(newest_ts, offsets):
    """Events no older than the lateness behind the newest count exactly, whatever their order."""
    starts, values = _ring()
    stream = [newest_ts, *[newest_ts + o for o in offsets]]
    for ts in stream:
        assert window.ring_add(starts, values, ts, RESOLUTION, 1.0)
    for query_ts in {newest_ts, *stream}:
        newest = query_ts // RESOLUTION
        brute = sum(1 for ts in stream if newest - WINDOW + 1 <= ts // RESOLUTION <= newest)
        assert window.ring_sum(starts, values, query_ts, RESOLUTION, WINDOW) == brute


@given(events, timestamps, st.integers(0, 6 * RESOLUTION))
def test_a_query_more_than_the_lateness_behind_the_newest_is_answered_there(stream, query_ts, lateness):
    starts, values = _ring()
    distinct_starts, hashes, masks, used = _ring()[0], np.zeros(64, np.int64), np.zeros(64, np.uint64), 0
    for ts, amount in stream:
        window.ring_add(starts, values, ts, RESOLUTION, float(amount))
        used = max(used, window.distinct_add(distinct_starts, hashes, masks, used, amount, ts, RESOLUTION))
    floor = max(query_ts, window.ring_newest(starts, RESOLUTION) - lateness)
    assert window.query_ts(starts, query_ts, RESOLUTION, lateness) == floor
    assert window.ring_sum(starts, values, query_ts, RESOLUTION, WINDOW, lateness) == window.ring_sum(
        starts, values, floor, RESOLUTION, WINDOW
    )
    assert window.distinct_count(distinct_starts, masks, used, query_ts, RESOLUTION, WINDOW, lateness) == (
        window.distinct_count(distinct_starts, masks, used, floor, RESOLUTION, WINDOW)
    )


def test_empty_windows():
    starts, values = _ring()
    assert window.ring_sum(starts, values, 5_000, RESOLUTION, WINDOW) == 0.0
    assert math.isnan(window.ring_reduce_extreme(starts, values, 5_000, RESOLUTION, WINDOW, True))
    masks = np.zeros(4, np.uint64)
    assert window.distinct_count(starts, masks, 0, 5_000, RESOLUTION, WINDOW) == 0


def test_the_kernels_really_are_compiled():
    window.warm_up()
    for kernel in window.KERNELS:
        assert isinstance(kernel, CPUDispatcher), kernel
        assert kernel.nopython_signatures, f"{kernel.__name__} is not compiled in nopython mode"
        assert not kernel.targetoptions.get("forceobj"), kernel


hashes64 = st.integers(-(2**63), 2**63 - 1)


@given(st.lists(st.tuples(timestamps, hashes64), max_size=80), timestamps)
def test_the_estimate_matches_the_twin_over_the_live_window(stream, query_ts):
    starts = np.full(SLOTS, window.EMPTY, np.int64)
    registers = np.zeros((SLOTS, window.HLL_REGISTERS), np.uint8)
    twin = NaiveRing(SLOTS, RESOLUTION)
    for ts, h in stream:
        assert window.hll_add(starts, registers, h, ts, RESOLUTION) == twin.add(ts, h)
    live = [int(v) for _, v in twin.in_window(query_ts, WINDOW)]
    want = naive_hll_estimate(live) if live else 0.0
    got = window.hll_count(starts, registers, query_ts, RESOLUTION, WINDOW)
    assert got == pytest.approx(want)


def test_the_estimate_is_within_its_error():
    errors = []
    for seed in range(20):
        rng = random.Random(seed)
        starts = np.full(SLOTS, window.EMPTY, np.int64)
        registers = np.zeros((SLOTS, window.HLL_REGISTERS), np.uint8)
        for _ in range(5000):
            window.hll_add(starts, registers, rng.getrandbits(64) - 2**63, rng.randrange(8 * RESOLUTION), RESOLUTION)
        errors.append(window.hll_count(starts, registers, 8 * RESOLUTION - 1, RESOLUTION, WINDOW) / 5000 - 1)
    assert abs(sum(errors) / len(errors)) < 0.05
    assert max(abs(e) for e in errors) < 0.35
