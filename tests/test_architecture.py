"""The package's shape: every module imports on its own, no import cycle, small modules, torch-free index loading,
and tests that use public seams only."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "retrieval_icl"
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(name: str, path: Path) -> set[str]:
    """Package modules `name` imports anywhere in its file (at the top or inside a function)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            target = f"{base}.{node.module}" if node.level and node.module else (node.module or base)
            candidates = [target] + [f"{target}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        else:
            continue
        found |= {c for c in candidates if c in MODULES and c != name}
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle found by depth-first search (each reported once from its first node)."""
    found, state = [], dict.fromkeys(graph, 0)  # 0 new, 1 on the stack, 2 done

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state[nxt] == 1:
                found.append(stack[stack.index(nxt):] + [nxt])
            elif state[nxt] == 0:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in graph:
        if state[node] == 0:
            visit(node, [node])
    return found


def test_the_import_graph_has_no_cycle():
    """Imports anywhere in a file count, at the top or inside a function: each module imports only what sits below."""
    graph = {name: imported_modules(name, path) for name, path in MODULES.items()}
    # a package's __init__ re-exports its modules; an edge from a module up to its own package is not a cycle
    graph = {n: {m for m in deps if not n.startswith(m + ".")} for n, deps in graph.items()}
    assert cycles(graph) == []


def test_the_subpackages_are_layers():
    """Between subpackages (data, lm, retrieval, selectors, serving, experiment, analysis, ...) imports go one way."""
    def subpackage(module: str) -> str | None:
        parts = module.split(".")
        return parts[1] if len(parts) > 2 else None  # root modules (cli, study, record, ...) are not a layer

    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        if (a := subpackage(name)) is not None:
            deps = {subpackage(m) for m in imported_modules(name, path)}
            graph.setdefault(a, set()).update(d for d in deps if d is not None and d != a)
    for deps in list(graph.values()):
        for d in deps:
            graph.setdefault(d, set())
    assert cycles(graph) == []


def test_a_cycle_is_found():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


def test_every_module_imports_in_a_fresh_interpreter():
    code = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)\n"
    modules = [m for m in MODULES if not m.endswith("__main__")]  # importing __main__ runs the CLI
    proc = subprocess.run([sys.executable, "-c", code, *modules], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_no_module_is_over_400_lines():
    long = {name: n for name, path in MODULES.items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}


@pytest.mark.parametrize("module", ["retrieval_icl.retrieval.index", "retrieval_icl.record",
                                    "retrieval_icl.results_dir", "retrieval_icl.experiment.plan",
                                    "retrieval_icl.experiment.assemble",
                                    "retrieval_icl.lm.scoring"])
def test_torch_free_modules_do_not_import_torch(module):
    code = f"import sys, {module}\nassert 'torch' not in sys.modules, '{module} imported torch'"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_opening_and_searching_an_index_imports_no_torch(tmp_path):
    build = ("import numpy as np\nfrom retrieval_icl.retrieval.sentence_encoder import Encoder\n"
             "from retrieval_icl.retrieval.index import DemoIndex\n"
             "from retrieval_icl.data.examples import Example\n"
             "examples = [Example(i, (f'text {i}',), i % 2) for i in range(6)]\n"
             "vectors = np.eye(6, 8, dtype=np.float32)\n"
             f"DemoIndex(Encoder()).build(examples, embeddings=vectors).save({str(tmp_path / 'idx')!r})\n")
    subprocess.run([sys.executable, "-c", build], check=True, cwd=ROOT)
    search = ("import sys, numpy as np\nfrom retrieval_icl.retrieval.index import DemoIndex\n"
              f"index = DemoIndex.load({str(tmp_path / 'idx')!r})\n"
              "scores, ids = index.search(np.eye(1, 8, 2, dtype=np.float32), 2)\n"
              "assert ids[0][0] == 2, ids\nassert 'torch' not in sys.modules, 'loading an index imported torch'\n")
    proc = subprocess.run([sys.executable, "-c", search], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]


def private_attribute_writes(path: Path) -> list[str]:
    """Places in a test file that assign to `obj._name` or monkeypatch an attribute named `_name`."""
    hits = []
    for node in ast.walk(ast.parse(path.read_text())):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, (ast.AugAssign, ast.AnnAssign)) else []
        hits += [f"{path.name}:{node.lineno}" for t in targets
                 if isinstance(t, ast.Attribute) and t.attr.startswith("_") and not t.attr.startswith("__")]
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "setattr" and len(node.args) >= 2:
            name = node.args[1]
            if isinstance(name, ast.Constant) and str(name.value).startswith("_"):
                hits.append(f"{path.name}:{node.lineno}")
    return hits


def test_no_test_sets_a_private_attribute():
    tests = [p for p in sorted(Path(__file__).parent.glob("*.py")) if p.name != Path(__file__).name]
    assert [hit for p in tests for hit in private_attribute_writes(p)] == []






def defined_names(path: Path) -> set[str]:
    """Names a module binds itself at top level (def, class, assignment), not names it imports."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
        elif isinstance(node, (ast.If, ast.Try)):  # names bound under a guard (faiss_support's one `import faiss`)
            names |= {n.name for n in ast.walk(node) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
            names |= {(a.asname or a.name) for n in ast.walk(node) if isinstance(n, ast.Import) for a in n.names}
            names |= {t.id for n in ast.walk(node) if isinstance(n, ast.Assign) for t in n.targets
                      if isinstance(t, ast.Name)}
    return names


def imports_through_another_module(path: Path, name: str) -> list[str]:
    """`from M import N` lines in `path` where N is neither defined in package module M nor one of its submodules."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.ImportFrom) or not node.module:
            continue
        base = package
        for _ in range(node.level - 1):
            base = base.rpartition(".")[0]
        target = f"{base}.{node.module}" if node.level else node.module
        if target not in MODULES:
            continue
        defined = defined_names(MODULES[target])
        found += [f"{path.relative_to(ROOT)}:{node.lineno}: {a.name} from {target}" for a in node.names
                  if a.name not in defined and f"{target}.{a.name}" not in MODULES]
    return found


def test_every_name_is_imported_from_the_module_that_defines_it():
    """One import path per name: no re-export, in the package, its tests, benchmarks and scripts."""
    files = [*MODULES.values(), *sorted((ROOT / "tests").rglob("*.py")), *sorted((ROOT / "benchmarks").rglob("*.py")),
             *sorted((ROOT / "scripts").rglob("*.py"))]
    found = []
    for path in files:
        inside = path.is_relative_to(PACKAGE)
        found += imports_through_another_module(path, module_name(path) if inside else "tests.x")
    assert found == []


def test_the_readme_module_table_matches_the_tree():
    """Every module is named in README.md's Layout table (itself, or its folder's row) and every name there exists."""
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("| module | responsibility | tests |"):]
    table = table[:table.index("\n\n")]
    named = {n for line in table.splitlines()[2:] for n in re.findall(r"`([\w/]+(?:\.py|/))`", line.split("|")[1])}
    assert [n for n in named if not (PACKAGE / n).exists()] == []
    folders = {n for n in named if n.endswith("/")}
    modules = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
               if p.name not in ("__init__.py", "__main__.py") and p.relative_to(PACKAGE).parts[0] != "task_configs"]
    assert [m for m in modules if m not in named and not any(m.startswith(f) for f in folders)] == []
