"""The one place that sets Numba compiler options for sparsebert's kernels.

- cache=True: compiled kernels persist in Numba's on-disk cache (NUMBA_CACHE_DIR, else next to the
  source, else a user cache dir); a read-only or missing cache only costs compile time.
- fastmath without `reassoc`: `contract` allows FMA; reassociation would let LLVM vectorise the
  non-zero loop as gathers instead of the token loop, and makes results depend on vector width.
- SLP vectorisation is off in Numba by default; our token-tile loops need it to become AVX2 code.
  It must be switched on before the first kernel compiles, hence at import of this module.
"""

import os

# GNU OpenMP (Numba's "omp" threading layer) spins idle workers for ~300k iterations after each
# parallel region. Our forward pass runs ~100 short regions, and whenever another process wants a
# core, spinning workers steal it: batch-1 latency went from 39 ms to 440 ms on this 2-core machine
# under load. A short spin keeps back-to-back regions fast (39 ms quiet) without that cliff;
# OMP_WAIT_POLICY=PASSIVE costs ~15% when quiet. libgomp reads this when Numba first starts its
# pool, so it is set here, before any kernel runs, unless the user chose a policy.
if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["GOMP_SPINCOUNT"] = "20000"

import numba  # noqa: E402
from numba.core import config as _numba_config  # noqa: E402

_numba_config.SLP_VECTORIZE = 1

FASTMATH = {"nsz", "arcp", "contract", "afn"}

# Serial kernel (called inside parallel ones, or where work is small).
kernel = numba.njit(cache=True, fastmath=FASTMATH, nogil=True, boundscheck=None)
# Parallel kernel: prange on its outermost loop only.
parallel_kernel = numba.njit(cache=True, fastmath=FASTMATH, nogil=True, parallel=True)
# Small function only ever inlined into cached kernels (e.g. erf, epilogues): not cached itself.
# Numba's cache keys a function on its own file, so a cached helper would keep serving its old
# code to kernels compiled after an edit to a file it calls into; uncached, it compiles fresh.
helper = numba.njit(fastmath=FASTMATH, nogil=True, boundscheck=None)


def _single_threaded_kernel_blas() -> None:
    """Numba's np.dot calls SciPy's BLAS, and our kernels call it from inside their own parallel
    loops, so that BLAS must run single-threaded. OpenBLAS honours OPENBLAS_NUM_THREADS only when the
    library loads; capping it later (threadpoolctl) leaves its thread server in the call path, which
    made concurrent small gemms ~10x slower here. So we load SciPy's BLAS with the variable set, then
    restore the environment; NumPy's own BLAS (what user code calls) is already loaded and untouched.
    If SciPy's BLAS was loaded before sparsebert, the runtime cap below is the fallback."""
    import os
    import sys

    if "scipy.linalg.cython_blas" not in sys.modules:
        saved = os.environ.get("OPENBLAS_NUM_THREADS")
        os.environ["OPENBLAS_NUM_THREADS"] = "1"
        try:
            import scipy.linalg.cython_blas  # noqa: F401
        finally:
            if saved is None:
                del os.environ["OPENBLAS_NUM_THREADS"]
            else:
                os.environ["OPENBLAS_NUM_THREADS"] = saved
    from threadpoolctl import ThreadpoolController

    libs = [c for c in ThreadpoolController().lib_controllers if c.user_api == "blas"]
    scipy_libs = [c for c in libs if "scipy" in c.filepath and "numpy" not in c.filepath]
    for c in scipy_libs or libs:
        c.set_num_threads(1)


_single_threaded_kernel_blas()
