"""Execute the notebooks headless and save their outputs in place.

    python notebooks/run_full.py                     # all three, FULL = True, outputs saved in place
    python notebooks/run_full.py kernels --quick     # one notebook, the CI set

The kernel is this interpreter (a kernelspec pointing at sys.executable is written to a temporary
JUPYTER_PATH entry, so a user-wide "python3" kernel of another Python cannot be picked up).
`execute_notebook` is also what tests/test_notebooks.py runs. The full set takes about an hour and
a half in all (sweep ~1 h, accuracy ~10 min, kernels a few minutes) and wants a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
NOTEBOOKS = ("kernels", "speedup_vs_sparsity", "accuracy_vs_speed")


@contextmanager
def _environment(values: dict):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update({k: str(v) for k, v in values.items()})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextmanager
def this_python_kernel():
    """A temporary JUPYTER_PATH whose kernels/python3 runs sys.executable; yields its name."""
    from ipykernel.kernelspec import write_kernel_spec

    tmp = Path(tempfile.mkdtemp(prefix="sparsebert-kernelspec-"))
    try:
        write_kernel_spec(str(tmp / "kernels" / "python3"))
        path = os.pathsep.join(p for p in (str(tmp), os.environ.get("JUPYTER_PATH")) if p)
        with _environment({"JUPYTER_PATH": path}):
            yield "python3"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def execute_notebook(path, *, full: bool, results_dir=None, cwd=None, save_to=None,
                     timeout: int = 600, strip_outputs_first: bool = True):
    """Run every cell of the notebook at `path` (FULL set by environment), return the executed
    NotebookNode; raises nbclient's CellExecutionError on the first failing cell. `save_to`
    writes the executed notebook; `results_dir` sets SPARSEBERT_RESULTS_DIR."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(str(path), as_version=4)
    if strip_outputs_first:
        for cell in nb.cells:
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = [], None
    env = {"SPARSEBERT_NOTEBOOK_FULL": "1" if full else "0", "SPARSEBERT_REPO": str(ROOT),
           "MPLBACKEND": "Agg"}
    if results_dir is not None:
        env["SPARSEBERT_RESULTS_DIR"] = str(results_dir)
    with _environment(env), this_python_kernel() as kernel:
        client = NotebookClient(nb, timeout=timeout, kernel_name=kernel,
                                resources={"metadata": {"path": str(cwd or Path(path).parent)}})
        client.execute()
    if save_to is not None:
        nbformat.write(nb, str(save_to))
    return nb


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="*", default=list(NOTEBOOKS), help=f"some of {NOTEBOOKS}")
    p.add_argument("--quick", action="store_true", help="the CI set instead of FULL")
    p.add_argument("--timeout", type=int, default=4 * 3600, help="seconds per cell")
    args = p.parse_args(argv)
    for name in args.names:
        name = Path(name).stem
        if name not in NOTEBOOKS:
            p.error(f"unknown notebook {name!r}; expected some of {NOTEBOOKS}")
        path = HERE / f"{name}.ipynb"
        t0 = time.perf_counter()
        print(f"running {path.name} ({'CI set' if args.quick else 'FULL'}) ...", flush=True)
        execute_notebook(path, full=not args.quick, save_to=path, timeout=args.timeout)
        print(f"  done in {time.perf_counter() - t0:.0f} s; outputs saved in {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
