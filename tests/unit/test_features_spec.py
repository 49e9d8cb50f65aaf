from pathlib import Path

import pytest

from streamguard.errors import ConfigError
from streamguard.features.spec import load_features, parse_duration

LATENESS = 300_000
GOOD = """
[[feature]]
name = "f"
events = ["login"]
entity = "ip"
aggregate = "count"
window = "10m"
resolution = "30s"
"""


def _load(tmp_path: Path, text: str):
    (tmp_path / "x.toml").write_text(text)
    return load_features(LATENESS, tmp_path)


def test_the_repository_features_load_and_cover_the_detection_needs():
    features = {(f.events[0], f.entity, f.aggregate, f.field) for f in load_features(LATENESS)}
    for needed in [
        ("login", "ip", "count", None),
        ("login", "ip", "distinct", "account_id"),
        ("login", "ip_network", "distinct", "account_id"),
        ("login", "device_id", "count", None),
        ("login", "fingerprint", "distinct", "account_id"),
        ("login", "account_id", "distinct", "ip"),
        ("login", "global", "count", None),
        ("sms", "phone", "count", None),
        ("sms", "phone", "distinct", "ip"),
        ("sms", "ip", "distinct", "phone"),
        ("sms", "ip", "distinct", "phone_block"),
        ("sms", "fingerprint", "distinct", "phone"),
        ("registration", "device_id", "count", None),
        ("registration", "fingerprint", "count", None),
        ("registration", "ip", "count", None),
        ("registration", "invite_code", "count", None),
        ("transaction", "device_id", "count", None),
        ("transaction", "fingerprint", "count", None),
        ("transaction", "account_id", "distinct", "instrument_id"),
        ("transaction", "device_id", "distinct", "instrument_id"),
    ]:
        assert needed in features, needed


def test_a_good_declaration_loads(tmp_path):
    (feature,) = _load(tmp_path, GOOD)
    assert feature.window_ms == 600_000 and feature.resolution_ms == 30_000
    assert feature.slots(LATENESS) == 30


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('aggregate = "count"', 'agregate = "count"'), r"x.toml.*agregate"),
        (('window = "10m"', 'window = "ten minutes"'), r"feature\[0\].*duration"),
        (('events = ["login"]', 'events = ["logins"]'), r"`events`"),
        (('entity = "ip"', 'entity = "invite_code"'), r"login events have no `invite_code`"),
        (('entity = "ip"', 'entity = "ipv4"'), r"x.toml.*entity"),
        (('aggregate = "count"', 'aggregate = "distinct"'), r"`field` is required"),
        (('resolution = "30s"', 'resolution = "7m"'), r"must divide"),
        (('resolution = "30s"', 'resolution = "5s"'), r"over 64 buckets.*at least 14063 ms"),
        (('window = "10m"', 'window = "48h"'), r"from 1s to 24h"),
        (('name = "f"', 'name = "Bad Name"'), r"snake_case"),
        (('entity = "ip"', 'entity = "phone_block"'), r"login events have no `phone`"),
    ],
)
def test_mistakes_are_errors_that_name_the_file_and_the_path(tmp_path, change, message):
    with pytest.raises(ConfigError, match=message):
        _load(tmp_path, GOOD.replace(*change))


def test_a_predicate_on_a_missing_field_is_an_error(tmp_path):
    text = GOOD + 'where = [{ field = "amount", op = ">", value = 1 }]\n'
    with pytest.raises(ConfigError, match="login events have no `amount`"):
        _load(tmp_path, text)


def test_in_takes_a_list(tmp_path):
    text = GOOD + 'where = [{ field = "method", op = "in", value = "password" }]\n'
    with pytest.raises(ConfigError, match="takes a list"):
        _load(tmp_path, text)


def test_phone_blocks_need_their_digits(tmp_path):
    text = GOOD.replace('events = ["login"]', 'events = ["sms"]').replace('entity = "ip"', 'entity = "phone_block"')
    with pytest.raises(ConfigError, match="phone_block_digits"):
        _load(tmp_path, text)
    assert _load(tmp_path, text + "phone_block_digits = 9\n")[0].phone_block_digits == 9


def test_a_name_declared_twice_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="twice"):
        _load(tmp_path, GOOD + GOOD)


def test_changing_a_parameter_gives_fresh_state_and_renaming_does_not(tmp_path):
    (base,) = _load(tmp_path, GOOD)
    (renamed,) = _load(tmp_path, GOOD.replace('name = "f"', 'name = "g"'))
    (wider,) = _load(tmp_path, GOOD.replace('window = "10m"', 'window = "20m"'))
    assert renamed.state_id == base.state_id
    assert wider.state_id != base.state_id


def test_durations():
    assert [parse_duration(t) for t in ("500ms", "30s", "10m", "24h")] == [500, 30_000, 600_000, 86_400_000]
    with pytest.raises(ValueError):
        parse_duration("1d")
