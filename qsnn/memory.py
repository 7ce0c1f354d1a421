"""Keep freed CPU memory inside the process (Linux/glibc).

glibc hands every allocation above 32 MB straight to mmap and gives it back on free, so each
training iteration page-faults its large activation buffers anew. In the VMs this was measured
on, that cost more than the arithmetic: the fast LIF loop over 100 steps took 1.7 s instead of
27 ms. Serving large blocks from the heap and never trimming it lets freed blocks be reused.
"""
import ctypes
import sys

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # from glibc's malloc.h


def keep_freed_memory():
    """Tell glibc's malloc not to mmap large blocks nor trim the heap; True if it took effect."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    except (OSError, AttributeError):  # not glibc (e.g. musl): leave the allocator alone
        return False
