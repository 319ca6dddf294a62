"""The C allocator and large buffers: give freed ones back to the operating system at once.

glibc serves an allocation of 128 KiB or more with a mapping of its own until the first such block is freed; then
it raises its threshold to that block's size (the "dynamic mmap threshold") and serves later ones from the heap,
whose freed space it keeps. Every TLS connection asyncio opens carries a 256 KiB read buffer, so a fleet replica
whose tenants open connections in a burst and let them idle out kept every burst's buffers for good (≈ 1.2 MiB per
tenant, bench/fleet_analysis.md). Pinning the threshold keeps such buffers mapped, and unmapped when freed. This is
``MALLOC_MMAP_THRESHOLD_=65536``, set from inside so every way of starting the process behaves alike.

The read buffer itself need not be 256 KiB (``asyncio.sslproto.SSLProtocol.max_size``, how much one socket read
may take): a TLS record carries at most 16 KiB, and the answers the CCM reads are Node lists and watch events of a
few KiB each. :func:`small_tls_read_buffers` makes it 64 KiB: an open connection (a watch, the Lease's) holds
192 KiB less for as long as it lives, a burst's new connections zero-fill a quarter as much, and a large listing
takes a few more (cheap) socket reads. The threshold is pinned at the same 64 KiB, so these buffers, too, are
mapped and go back to the OS when their connection closes (below it they would be left in the heap: a 20-Node
daemon measured 72.9 MiB settled with 64 KiB buffers under a 128 KiB threshold, 72.2 with both at 64 KiB, 72.0 with
asyncio's 256 KiB buffers — but a 76.9 MiB peak then, 72.8 now; ``python -m bench.footprint``).
"""

from __future__ import annotations

import ctypes
from asyncio import sslproto

__all__ = ["TLS_READ_BUFFER", "return_large_buffers", "small_tls_read_buffers"]

M_MMAP_THRESHOLD = -3  # glibc's <malloc.h>
#: Allocations of this many bytes or more are mapped on their own (TLS read buffers included).
LARGE = 64 * 1024
#: Bytes one socket read of a TLS connection may take (asyncio's default: 256 KiB).
TLS_READ_BUFFER = 64 * 1024


def return_large_buffers(threshold: int = LARGE) -> bool:
    """Pin the C allocator's mmap threshold at ``threshold`` bytes. False when the C library has no ``mallopt`` or
    refuses it (not glibc): nothing is changed then."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, threshold))


def small_tls_read_buffers(size: int = TLS_READ_BUFFER) -> None:
    """Give every TLS connection asyncio opens from now on a read buffer of ``size`` bytes (see the module
    docstring); a process setting, like the allocator's threshold."""
    sslproto.SSLProtocol.max_size = size
