"""numba kernels: window arithmetic on arrays and scalars only.

Nothing here imports streamguard, logs, reads a clock or touches an object:
the typed wrappers that own I/O live in `streamguard.features`. Every kernel
has a plain-Python twin in `tests/naive.py` and a property test against it.
"""
