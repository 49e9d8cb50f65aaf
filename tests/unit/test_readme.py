"""The README's settings table is the settings object, row for row."""

import dataclasses
import re
from pathlib import Path

from streamguard.settings import DOCS, Settings, env_name

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_setting_is_in_the_readme_with_its_default_and_meaning():
    rows = dict(re.findall(r"^\| `(STREAMGUARD_[A-Z_]+)` \| `([^`]*)` \| .+ \|$", README, re.MULTILINE))
    fields = dataclasses.fields(Settings)
    assert set(rows) == {env_name(f.name) for f in fields}
    for field in fields:
        assert rows[env_name(field.name)] == str(field.default), field.name
    for field in fields:
        assert DOCS[field.name] in README, field.name


def test_the_two_commands_are_at_the_top():
    top = README.split("## ")[0]
    assert "make demo" in top and "make test" in top
