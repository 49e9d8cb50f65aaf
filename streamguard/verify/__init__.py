"""`streamguard verify`: check, after the fact, that what is committed keeps the exactly-once guarantees.

V1 one verdict per valid event; V2 one dead letter per invalid message, key
and bytes unchanged; V3 no transaction left open; V4 the group committed
every input; V6 each shard's RocksDB equals its changelog replayed; V7 no
event left parked. (V5, feature values against brute force, needs the tests'
naive twins and lives in tests/verify_features.py.)
"""

from streamguard.verify.outputs import Classified, classify
from streamguard.verify.records import Record
from streamguard.verify.report import Check, Report
from streamguard.verify.run import read_inputs, read_topics, topic_names, verify

__all__ = ["Check", "Classified", "Record", "Report", "classify", "read_inputs", "read_topics", "topic_names", "verify"]
