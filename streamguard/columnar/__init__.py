"""The columnar engine: a batch of events through a few numba kernels over in-memory columnar state.

`core.BatchCore` is the entry: records in, verdicts and dead letters out, no
Kafka. `columns` turns decoded events into columns, `hashing` identifiers
into keyed hashes, `layout` the feature declarations into arrays, `tables`
and `state` hold the entities, `count` is the kernel that counts and reads
every window, `rules` runs the ruleset over the batch.
"""
