"""Topic definitions: loading `topics/*.toml` and applying them to a broker."""

from streamguard.topics.spec import TopicSpec, load_specs

__all__ = ["TopicSpec", "load_specs"]
