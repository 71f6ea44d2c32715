"""Rerun some of a test file's cases compiled for Haswell (AVX2), in a fresh process.

On an AVX-512 host the kernels run their zmm tiles; Numba caches per target CPU, so a process with
NUMBA_CPU_NAME=haswell compiles and runs the code an AVX2 machine gets (the generated tiles). The
child first asserts that it really is on that path, so a detection bug cannot pass silently.
"""

import os
import subprocess
import sys

_CHILD = (
    "import sys, pytest\n"
    "from sparsebert.kernels import spmm, spmm_zmm\n"
    "assert not spmm_zmm.ZMM and spmm.tile_width((4, 1)) == 32, 'expected the AVX2 path'\n"
    "sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', sys.argv[1], '-k', sys.argv[2]]))\n"
)


def rerun_on_haswell(test_file: str, cases: str) -> None:
    """Run `pytest test_file -k cases` compiled for Haswell; fail with its output unless cases ran
    and all passed."""
    env = dict(os.environ, NUMBA_CPU_NAME="haswell")
    env.pop("NUMBA_CPU_FEATURES", None)
    proc = subprocess.run([sys.executable, "-c", _CHILD, test_file, cases], env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout and "failed" not in proc.stdout
