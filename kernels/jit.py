"""The one place that sets Numba compiler options for sparsebert's kernels.

- cache=True: compiled kernels persist in Numba's on-disk cache (NUMBA_CACHE_DIR, else next to the
  source, else a user cache dir); a read-only or missing cache only costs compile time.
- fastmath without `reassoc`: `contract` allows FMA; reassociation would let LLVM vectorise the
  non-zero loop as gathers instead of the token loop, and makes results depend on vector width.
- SLP vectorisation is off in Numba by default; our token-tile loops need it to become AVX2 code.
  It must be switched on before the first kernel compiles, hence at import of this module.
"""

import numba
from numba.core import config as _numba_config

_numba_config.SLP_VECTORIZE = 1

FASTMATH = {"nsz", "arcp", "contract", "afn"}

# Serial kernel (called inside parallel ones, or where work is small).
kernel = numba.njit(cache=True, fastmath=FASTMATH, nogil=True, boundscheck=None)
# Parallel kernel: prange on its outermost loop only.
parallel_kernel = numba.njit(cache=True, fastmath=FASTMATH, nogil=True, parallel=True)
