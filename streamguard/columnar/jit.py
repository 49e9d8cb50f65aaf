"""How the columnar kernels are compiled.

`kernel`: cached on disk, and without numba's reference counting. The kernels
allocate nothing (their callers give them every array they work in), and
counting the references of every array a kernel handed on to another was
three quarters of the count kernel's time. `inline`: a helper compiled into
its caller.

numba's disk cache is keyed by the stamp of each kernel's own file: after
editing a constant another module defines (`tables.INLINE`...), clear
`streamguard/columnar/__pycache__/*.nb[ic]`, or kernels compiled for the old
value run on arrays sized for the new one.
"""

from __future__ import annotations

from typing import Any

from numba import njit

kernel: Any = njit(cache=True, _nrt=False)  # type: ignore[call-overload]
inline: Any = njit(inline="always")
