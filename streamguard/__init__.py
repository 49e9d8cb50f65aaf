"""streamguard: a streaming anti-fraud event processor on Kafka.

The package is layered: the contract (events, errors, settings, codec) at the
bottom, state and decisions above it, and the Faust pipeline and CLI on top.
"""

__version__ = "0.1.0"
