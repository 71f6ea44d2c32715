"""The package's shape: imports run one way (no cycle, lazy imports included), and `import
sparsebert` loads the runtime only, none of the tools built on top of it.

The import graph is read from the source with `ast`, every `import` statement wherever it stands
(module level, inside functions, under `if TYPE_CHECKING`), so a cycle hidden in a lazy import
fails too. An edge goes to the module an import names (`from .x import y` -> `x.y` when that is a
module, else `x`); the implicit import of parent packages (`a.b` runs `a/__init__.py` first) is
not an edge, or every package that re-exports its submodules would be a cycle. A package's
`__init__.py` is a node like any other module.
"""

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Source folder -> the package name it ships as (pyproject.toml maps kernels/ to sparsebert.kernels).
PACKAGES = {ROOT / "sparsebert": "sparsebert", ROOT / "kernels": "sparsebert.kernels"}


def module_files() -> dict[str, Path]:
    files = {}
    for folder, package in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            if ".venv" in path.parts or "__pycache__" in path.parts:
                continue
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            files[".".join([package] + parts)] = path
    return files


def _resolve(module: str, is_package: bool, level: int, name: str | None) -> str:
    if level == 0:
        return name or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join(base + ([name] if name else []))


def import_graph() -> dict[str, set[str]]:
    """{module: modules of this project it imports, anywhere in its source}."""
    files = module_files()
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        is_package = path.name == "__init__.py"
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(module, is_package, node.level, node.module)
                names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base
                         for alias in node.names]
            else:
                continue
            for name in names:
                # `import a.b.c` binds a but imports a.b.c: take the longest name that is ours.
                while name and name not in files:
                    name = name.rpartition(".")[0]
                if name and name != module:
                    targets.add(name)
        graph[module] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None."""
    WHITE, GREY, BLACK = 0, 1, 2
    colour = dict.fromkeys(graph, WHITE)
    stack: list[str] = []

    def visit(node):
        colour[node] = GREY
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if colour.get(nxt) == GREY:
                return stack[stack.index(nxt):] + [nxt]
            if colour.get(nxt) == WHITE:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        colour[node] = BLACK
        return None

    for node in sorted(graph):
        if colour[node] == WHITE:
            found = visit(node)
            if found:
                return found
    return None


def test_the_graph_sees_lazy_imports():
    # The reader must see imports inside functions, or it would miss the cycles that matter.
    graph = import_graph()
    assert "sparsebert.api" in graph["sparsebert.cli"]  # `from .api import load` inside a command
    assert "sparsebert.kernels.spmm" in graph["sparsebert.linear"]


def test_a_planted_cycle_is_found():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_imports_have_no_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


# Modules `import sparsebert` must not load: the tools on top of the runtime and their heavy extras.
# The int8 linears and fused int8 layers (sparsebert.quant.linear, .fused) are runtime and may load.
TOOLS = ("sparsebert.quant.checkpoint", "sparsebert.quant.calibrate", "sparsebert.quant.onnx_export",
         "sparsebert.quant.cli", "sparsebert.serve", "sparsebert.train", "sparsebert.ray_data",
         "sparsebert.encode_job", "sparsebert.tuning_cli", "sparsebert.cli", "sparsebert.benchmark",
         "sparsebert.prune", "sparsebert.export", "sparsebert.ort_files", "sparsebert.demo",
         "torch", "transformers", "starlette", "uvicorn", "ray", "pyarrow", "onnx", "onnxruntime")


def test_import_sparsebert_loads_no_tools():
    code = ("import json, sys, sparsebert; "
            "print(json.dumps(sorted(m for m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         check=True).stdout
    loaded = set(json.loads(out))
    bad = sorted(m for m in loaded if any(m == t or m.startswith(t + ".") for t in TOOLS))
    assert not bad, f"`import sparsebert` loads tools built on top of it: {bad}"
    assert "sparsebert.model" in loaded  # the runtime itself does load


def test_repository_kernels_folder_does_not_shadow_another_kernels_package(tmp_path):
    """Run from the repository root (`python -m ...`), the root is on sys.path and this repo's
    `kernels/` folder is importable as a top-level `kernels`, the name of Hugging Face's package that
    transformers >= 5.25 imports. The folder must hand such an import over to the other package."""
    import subprocess
    import sys

    site = tmp_path / "site" / "kernels"
    site.mkdir(parents=True)
    (site / "__init__.py").write_text("MARK = 'the other kernels'\n")
    code = ("import sys; sys.path.insert(1, sys.argv[1]); import kernels; print(kernels.MARK); "
            "import sparsebert.kernels.ops")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "site")], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "the other kernels"
