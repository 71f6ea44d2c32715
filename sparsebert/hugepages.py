"""Model weights in one 2 MiB-aligned mapping that Linux may back with huge pages.

A forward pass streams every layer's weights through the cache once per batch (once per token
tile in the fused kernels). The arrays of one linear are 1-3 MB, and NumPy asks for transparent
huge pages only from 4 MiB on, so they sit in 4 KiB pages: BERT-base's 85 M int8 codes span ~21,000
of them, far beyond the TLB's reach, and the int8 AMX kernels, which read a weight tile per 16
cycles, stalled on page walks. One Sapphire Rapids core, BERT-base 12L at 8 x 128 tokens
(`benchmarks/hugepages_ab.py`, 2026-12-03): the dense int8 model (AMX) ran 1.14-1.15x faster in
three runs; the fp32 and the int8 1x4 block-sparse models did not change (0.99-1.01x).

`move_to_huge_pages(objects)` copies the large read-only NumPy arrays held as attributes of the
given objects into one anonymous mapping advised MADV_HUGEPAGE, and points the attributes at the
copies (same dtype, shape and values, read-only). Where the kernel does not grant huge pages
(THP "never", other systems) the copy is plain memory and nothing else changes.

Left out: the embedding tables (gathered a row per token, not streamed; NumPy already advises
huge pages for them at 4 MiB and up) and arrays shared between objects through views.
"""

from __future__ import annotations

import mmap

import numpy as np

HUGE_PAGE = 2 << 20
MIN_BYTES = 64 << 10  # smaller arrays fit a few 4 KiB pages: not worth a copy
_ALIGN = 64  # every array starts on a cache line (AMX tile rows are 64 bytes)


def _large_arrays(objects, keep) -> list[tuple[object, str, np.ndarray]]:
    kept = {id(a) for a in keep}
    found = []
    for obj in objects:
        for name, value in vars(obj).items():
            if (isinstance(value, np.ndarray) and value.nbytes >= MIN_BYTES and value.flags.c_contiguous
                    and not value.flags.writeable and id(value) not in kept):
                found.append((obj, name, value))
    return found


def move_to_huge_pages(objects, keep=()) -> int:
    """Move the large read-only C-contiguous array attributes of `objects` into one mapping advised
    for transparent huge pages (see the module docstring); returns the bytes moved. Arrays in
    `keep` (ones something else also holds, such as the float weights a dense linear runs on
    as they are) stay where they are: a copy would double their memory."""
    found = _large_arrays(objects, keep)
    if not found:
        return 0
    offsets, total, seen = {}, 0, {}
    for _, _, a in found:
        if id(a) not in seen:
            seen[id(a)] = total
            total += -(-a.nbytes // _ALIGN) * _ALIGN
    region = mmap.mmap(-1, total + HUGE_PAGE)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        try:
            region.madvise(mmap.MADV_HUGEPAGE)
        except OSError:  # a kernel without THP: plain pages
            pass
    raw = np.frombuffer(region, dtype=np.uint8)
    start = (-raw.ctypes.data) % HUGE_PAGE  # THP maps only 2 MiB-aligned ranges
    for obj, name, a in found:
        off = start + seen[id(a)]
        if id(a) not in offsets:
            copy = raw[off:off + a.nbytes].view(a.dtype).reshape(a.shape)
            copy[...] = a
            copy.flags.writeable = False
            offsets[id(a)] = copy
        setattr(obj, name, offsets[id(a)])
    return total
