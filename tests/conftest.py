"""Hypothesis checks what holds, not how fast: on a loaded 2-core machine an example may take over 200 ms."""

from hypothesis import settings

settings.register_profile("streamguard", deadline=None)
settings.load_profile("streamguard")
