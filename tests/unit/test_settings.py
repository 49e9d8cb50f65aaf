from pathlib import Path

import pytest

from streamguard.errors import ConfigError
from streamguard.settings import DOCS, Settings, env_name, load, unknown_env


def test_defaults_without_environment():
    assert load({}) == Settings()


def test_environment_then_flags():
    env = {"STREAMGUARD_BOOTSTRAP": "kafka:9092", "STREAMGUARD_WEB_PORT": "7000", "STREAMGUARD_DATA_DIR": "/x"}
    settings = load(env, web_port=7001)
    assert settings.bootstrap == "kafka:9092"
    assert settings.web_port == 7001
    assert settings.data_dir == Path("/x")


def test_a_bad_number_names_the_variable():
    with pytest.raises(ConfigError, match="STREAMGUARD_WEB_PORT"):
        load({"STREAMGUARD_WEB_PORT": "eighty"})


def test_the_hash_key_is_required_and_never_defaulted():
    with pytest.raises(ConfigError, match="STREAMGUARD_HASH_KEY"):
        load({}).require_hash_key()
    assert load({"STREAMGUARD_HASH_KEY": "s" * 16}).require_hash_key() == b"s" * 16


def test_typos_in_variables_are_found():
    assert unknown_env({"STREAMGUARD_BOOTSTRAPP": "x", "STREAMGUARD_APP_ID": "a", "HOME": "/"}) == [
        "STREAMGUARD_BOOTSTRAPP"
    ]


def test_every_setting_is_documented():
    assert set(DOCS) == set(Settings.__dataclass_fields__)
    assert env_name("web_port") == "STREAMGUARD_WEB_PORT"


@pytest.mark.parametrize("raw", ["0", "-3", "100000"])
def test_a_shard_count_out_of_range_is_refused(raw):
    with pytest.raises(ConfigError, match=f"the shard count \\(STREAMGUARD_SHARDS\\) must be from 1 to 512, not {raw}"):
        load({"STREAMGUARD_SHARDS": raw})
