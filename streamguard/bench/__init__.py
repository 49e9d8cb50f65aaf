"""`streamguard bench`: one worker measured against raw Kafka and a Quix Streams peer, on one broker.

`run` drives it; `traffic` makes the events, `outputs` reads what each path
writes, `passthrough` and `quix_peer` are the two other paths (the latter a
script for its own venv, see `quix_env`), `worker`, `latency`, `entities`
and `report` measure and tell. Nothing outside this package imports it.
"""
