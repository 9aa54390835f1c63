"""The shape of the code: layers import only downwards, no import cycles, modules and functions
small enough to hold in one's head (docs/architecture.md)."""

import ast
from pathlib import Path

import pytest

from conftest import REPO

PACKAGE = REPO / "gencompress"
# Lower number = lower layer. A module may import its own layer or any lower one.
LAYERS = {
    "base": 0,  # config, results, errors, progress, artifacts, tfenv, interrupts, limits, memory, printable, compat
    "model": 1,  # model, loading, bridge
    "support": 2,  # calibration, converters, report
    "compress": 3,
    "pipelines": 4,
    "api": 5,
    "cli": 6,
}
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80


def _layer(module: str) -> int:
    parts = module.split(".")[1:]
    top = parts[0] if parts else ""
    if top == "__main__":
        return LAYERS["cli"]
    if top in ("config", "results", "errors", "progress", "artifacts", "tfenv", "interrupts", "compat", "limits", "memory", "printable", "__init__", ""):
        return LAYERS["base"]
    if top in ("model", "loading", "bridge"):
        return LAYERS["model"]
    if top in ("calibration", "converters", "report"):
        return LAYERS["support"]
    if top == "cli_options":  # the command line's shared options
        return LAYERS["cli"]
    if top == "recipe":  # recipes are API calls written down
        return LAYERS["api"]
    if top in ("compress", "pipelines", "api", "cli"):
        return LAYERS[top]
    raise AssertionError(f"module {module} has no layer: add it to tests/test_architecture.py and docs/architecture.md")


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(REPO).with_suffix("")
        name = ".".join(rel.parts)
        if name.endswith(".__init__"):
            name = name[: -len(".__init__")]
        yield name, path


def _imports(path: Path, module: str):
    """gencompress modules imported anywhere in the file (function-level imports included)."""
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("gencompress"):
                    yield alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if base.startswith("gencompress"):
                yield base


def test_layers_import_only_downwards():
    wrong = []
    for module, path in _modules():
        if module == "gencompress":  # the package front re-exports the API lazily
            continue
        for imported in _imports(path, module):
            if _layer(imported) > _layer(module):
                wrong.append(f"{module} imports {imported}")
    assert not wrong, "\n".join(wrong)


def test_compress_never_imports_pipelines():
    offending = [
        f"{m} imports {i}" for m, p in _modules() if m.startswith("gencompress.compress") for i in _imports(p, m)
        if i.startswith(("gencompress.pipelines", "gencompress.api", "gencompress.cli"))
    ]
    assert not offending


def test_no_import_cycles_at_module_level():
    """Module-level imports only: a function-level import is how a lower layer stays lazy, and
    cannot form a cycle at import time."""
    graph = {}
    for module, path in _modules():
        tree = ast.parse(path.read_text())
        deps = set()
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("gencompress"):
                deps.add(node.module)
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("gencompress")}
        graph[module] = {d for d in deps if d != module}

    state = {}

    def visit(node, stack):
        state[node] = "active"
        for dep in graph.get(node, ()):
            while dep not in graph and "." in dep:
                dep = dep.rsplit(".", 1)[0]
            if state.get(dep) == "active":
                raise AssertionError("import cycle: " + " -> ".join(stack + [node, dep]))
            if dep in graph and dep not in state:
                visit(dep, stack + [node])
        state[node] = "done"

    for module in graph:
        if module not in state:
            visit(module, [])


@pytest.mark.parametrize("module, path", list(_modules()), ids=lambda x: x if isinstance(x, str) else "")
def test_module_and_function_sizes(module, path):
    lines = path.read_text().splitlines()
    assert len(lines) <= MAX_MODULE_LINES, f"{module}: {len(lines)} lines (split it along its seams)"
    long = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                long.append(f"{node.name}: {length} lines")
    assert not long, f"{module}: " + ", ".join(long)


def test_private_apis_stay_in_compat():
    """TensorFlow's, LiteRT's, tfmot's and tf-keras' private modules are used only in compat/."""
    needles = ("tensorflow_model_optimization.python", "tf_keras.src", "_get_ops_details", "_experimental_calibrate_only",
               "lite.python.convert", "flatbuffer_utils")
    found = [
        f"{module}: {needle}"
        for module, path in _modules()
        if not module.startswith("gencompress.compat")
        for needle in needles
        if needle in path.read_text()
    ]
    assert not found, found
