import pytest

from streamguard.errors import ConfigError
from streamguard.settings import DEFAULT_SHARDS
from streamguard.topics.names import TopicNames
from streamguard.topics.spec import load_specs


def test_the_repository_definitions_cover_the_contract():
    names = TopicNames.resolve(load_specs("p-", "app"), "p-", "app")
    assert names.inputs["login"] == "p-events.login"
    assert names.verdicts["sms"] == "p-verdicts.sms"
    assert names.deadletter == "p-deadletter"
    assert names.shard_topic == "p-app.shards"
    assert names.shards >= 1


def test_inputs_default_to_six_partitions():
    specs = {s.name: s for s in load_specs("", "sg")}
    assert all(specs[f"events.{t}"].partitions == 6 for t in ("device", "login", "registration", "sms", "transaction"))
    assert specs["control.rules"].cleanup == "compact"


def test_a_typo_is_an_error_naming_file_and_field(tmp_path):
    (tmp_path / "bad.toml").write_text('[[topic]]\nname = "x"\npartitions = 1\nretention = 5\n')
    with pytest.raises(ConfigError, match=r"bad.toml.*retention"):
        load_specs("", "sg", tmp_path)


def test_a_wrong_type_is_an_error(tmp_path):
    (tmp_path / "bad.toml").write_text('[[topic]]\nname = "x"\npartitions = "six"\n')
    with pytest.raises(ConfigError, match=r"bad.toml.*partitions"):
        load_specs("", "sg", tmp_path)


def test_a_topic_declared_twice_is_an_error(tmp_path):
    (tmp_path / "a.toml").write_text('[[topic]]\nname = "x"\npartitions = 1\n')
    (tmp_path / "b.toml").write_text('[[topic]]\nname = "x"\npartitions = 2\n')
    with pytest.raises(ConfigError, match="twice"):
        load_specs("", "sg", tmp_path)


def test_the_shard_topics_have_one_partition_per_shard_of_the_count_given():
    for shards in (6, 24, 48):
        names = TopicNames.resolve(load_specs("", "sg", shards=shards), "", "sg")
        specs = {s.name: s for s in load_specs("", "sg", shards=shards)}
        assert names.shards == specs["sg.shards"].partitions == specs["sg.state-changelog"].partitions == shards
        assert specs["sg.cluster"].partitions == 1 and specs["events.login"].partitions == 6
    assert TopicNames.resolve(load_specs("", "sg"), "", "sg").shards == DEFAULT_SHARDS


def test_partitions_per_shard_is_the_one_word_allowed(tmp_path):
    (tmp_path / "ok.toml").write_text('[[topic]]\nname = "x"\npartitions = "shards"\n')
    assert load_specs("", "sg", tmp_path, shards=9)[0].partitions == 9
