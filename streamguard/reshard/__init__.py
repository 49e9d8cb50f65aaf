"""`streamguard reshard`: an app's state moved to another shard count, offline.

`checks` says whether an app is at rest (pure functions of what the broker
reports); `stage` holds the re-partitioned state on local disk; `run` does
the Kafka side, in an order that a rerun can resume after any failure.
"""
