import time
from collections import Counter

import pytest

from streamguard.codec import decode_event
from streamguard.demo.traffic import DemoTraffic
from streamguard.errors import InvalidEvent
from tests.unit.events_fixtures import NOW_MS


def test_demo_traffic_is_labelled_and_valid_where_it_says_so():
    traffic = DemoTraffic(seed=3)
    labels = Counter()
    for _ in range(3000):
        message = traffic.next_message(NOW_MS)
        labels[message.label] += 1
        kind = message.topic.removeprefix("events.")
        if message.label == "bad_input":
            with pytest.raises(InvalidEvent):
                decode_event(message.value, kind, NOW_MS)
        else:
            decode_event(message.value, kind, NOW_MS)
    assert labels["benign"] > 2000
    assert labels["bad_input"] > 0 and labels["duplicate"] > 0
    assert len(labels) >= 5


def test_the_same_seed_gives_the_same_traffic():
    one, two = DemoTraffic(seed=5, run="r"), DemoTraffic(seed=5, run="r")
    assert [one.next_message(NOW_MS).value for _ in range(200)] == [two.next_message(NOW_MS).value for _ in range(200)]


def test_each_run_has_its_own_event_ids():
    first = DemoTraffic(seed=5).run
    time.sleep(0.002)
    assert DemoTraffic(seed=5).run != first, "a rerun of the demo would be nothing but duplicates"
