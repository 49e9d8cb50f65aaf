"""`streamguard bench`: one worker measured against raw Kafka, Quix Streams and Kafka Streams, on one broker.

`run` drives it; `traffic` makes the events, `outputs` reads what each path
writes, `passthrough`, `quix_peer` (a script for its own venv, see
`quix_env`) and the Java project in `bench/kstreams` (built and started by
`kstreams_env`) are the other paths, both peers on the windows of
`peer_spec`; `worker`, `latency`, `entities` and `report` measure and tell.
Nothing outside this package imports it.
"""
