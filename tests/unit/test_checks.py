"""The rule-check kernels against their plain-Python twins (tests/naive.py)."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from numba.core.registry import CPUDispatcher

from streamguard.kernels import checks
from tests.naive import naive_combine, naive_rules

N_INPUTS = 6
inputs = st.lists(
    st.one_of(st.floats(-5, 50, allow_nan=False), st.just(0.0), st.just(math.nan)), min_size=N_INPUTS, max_size=N_INPUTS
)
condition = st.tuples(
    st.integers(0, N_INPUTS - 1),
    st.integers(-1, N_INPUTS - 1),
    st.integers(0, 5),
    st.sampled_from([0.0, 1.0, 0.5, 3.0, 10.0, -1.0]),
)
rules = st.lists(st.lists(condition, min_size=1, max_size=4), min_size=1, max_size=8)


def _run(values: list[float], conditions: list[list[tuple[int, int, int, float]]]):
    flat = [c for rule in conditions for c in rule]
    observed = np.empty(len(flat))
    fired = np.zeros(len(conditions), np.bool_)
    count = checks.evaluate_rules(
        np.array(values, np.float64),
        np.array([c[0] for c in flat], np.int32),
        np.array([c[1] for c in flat], np.int32),
        np.array([c[2] for c in flat], np.int8),
        np.array([c[3] for c in flat], np.float64),
        np.cumsum([0] + [len(r) for r in conditions], dtype=np.int32),
        observed,
        fired,
    )
    return observed, fired, count


@settings(max_examples=300, deadline=None)
@given(inputs, rules)
def test_rules_fire_as_the_twin_says(values, conditions):
    observed, fired, count = _run(values, conditions)
    twin_observed, twin_fired = naive_rules(values, conditions)
    assert list(fired) == twin_fired
    assert count == sum(twin_fired)
    flat = [x for rule in twin_observed for x in rule]
    for got, want in zip(observed, flat, strict=True):
        assert (math.isnan(got) and math.isnan(want)) or got == want


def test_a_missing_input_fails_every_comparison():
    for op in range(6):
        _, fired, _ = _run([math.nan, 1.0], [[(0, -1, op, 1.0)]])
        assert not fired[0], op
    _, fired, _ = _run([5.0, 0.0], [[(0, 1, 0, 0.0)]])  # a ratio over zero is missing, not infinite
    assert not fired[0]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 1000), max_size=10), st.data())
def test_scores_combine_as_the_twin_says(scores, data):
    fired = data.draw(st.lists(st.booleans(), min_size=len(scores), max_size=len(scores)))
    got = checks.combine_scores(np.array(scores, np.int32), np.array(fired, np.bool_))
    assert got == naive_combine([s for s, f in zip(scores, fired, strict=True) if f])
    assert 0 <= got <= 1000


def test_the_check_kernels_really_are_compiled():
    checks.warm_up()
    for kernel in checks.KERNELS:
        assert isinstance(kernel, CPUDispatcher), kernel
        assert kernel.nopython_signatures, f"{kernel.__name__} is not compiled in nopython mode"
