"""The layers of the design hold: pages are widgets over tl_core's API, with no torch and no private names."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted((ROOT / "pages").rglob("*.py")) + [ROOT / "app.py"]


def test_only_page_files_sit_at_the_top_of_pages():
    """Streamlit lists, and runs on a deep link, every .py file at the top of pages/: helpers live in pages/ui/."""
    import re

    tops = sorted(p.name for p in (ROOT / "pages").glob("*.py"))
    assert tops and all(re.fullmatch(r"\d+_[A-Za-z_]+\.py", name) for name in tops), tops


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:
                yield node.module or "", alias.name


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_pages_import_no_torch_and_no_private_engine_names(page):
    for module, name in _imports(page):
        assert module.split(".")[0] not in ("torch", "torchvision", "timm"), f"{page.name} imports {module}"
        if module.startswith("tl_core"):
            assert not (name or "").startswith("_"), f"{page.name} imports {module}.{name}"
            assert not any(part.startswith("_") for part in module.split(".")), f"{page.name} imports {module}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_pages_use_no_private_engine_attributes(page):
    engine_modules = {name or module.split(".")[-1] for module, name in _imports(page) if module.startswith("tl_core")}
    for node in ast.walk(ast.parse(page.read_text())):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in engine_modules:
            assert not node.attr.startswith("_"), f"{page.name} uses {node.value.id}.{node.attr}"


RUN_FILES = ("config.json", "facts.json", "status.json", "events.jsonl", "metrics.json", "predictions.csv", "model.safetensors",
             "labels.json", "preprocess.json", "worker.lock", "STOP", "owner.json", "worker.log")


def test_only_runs_py_names_the_files_of_a_run_folder():
    """The run-folder contract is spelled out once (runs.RunFolder); everyone else asks it for paths."""
    from tl_core.ops.runs import RunFolder

    folder = RunFolder("/r")
    assert sorted(getattr(folder, name).name for name in ("config", "facts", "status", "events", "metrics", "predictions",
                                                           "weights", "labels", "preprocess", "lock", "stop", "owner", "log")) \
        == sorted(RUN_FILES)
    for path in [*sorted((ROOT / "tl_core").rglob("*.py")), *PAGES]:
        if path.name == "runs.py" or "bundle" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in RUN_FILES:
                # A Hugging Face hub repository names its weights model.safetensors too: not a run folder.
                assert path.name == "backbones.py" and node.value == "model.safetensors", \
                    f"{path.relative_to(ROOT)} names the run file {node.value!r}: use runs.RunFolder"


def _engine_modules() -> dict[str, Path]:
    """tl_core's modules by dotted name relative to tl_core ("fit.loop"); a package by its own name when its
    __init__ holds more than a docstring."""
    modules = {}
    for path in sorted((ROOT / "tl_core").rglob("*.py")):
        parts = path.relative_to(ROOT / "tl_core").with_suffix("").parts
        if parts[-1] == "__init__":
            body = ast.parse(path.read_text()).body
            if not parts[:-1] or all(isinstance(node, ast.Expr) for node in body):
                continue  # tl_core itself (its lazy public API), or a package that only says what it holds
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _engine_imports(name: str, path: Path, modules: dict[str, Path]):
    """The tl_core modules `name` imports, anywhere in it (a function's local import counts too)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            elif (node.module or "").split(".")[0] == "tl_core":
                module = node.module.partition("tl_core")[2].lstrip(".")
            else:
                continue
            targets = [f"{module}.{alias.name}".lstrip(".") for alias in node.names]
        elif isinstance(node, ast.Import):
            targets = [alias.name.partition("tl_core")[2].lstrip(".") for alias in node.names
                       if alias.name.split(".")[0] == "tl_core"]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `from .fit.loop import Fit` names the module fit.loop
                target = target.rpartition(".")[0]
            if target and target != name:
                yield target


def test_every_engine_module_has_a_layer_and_imports_only_its_own_or_lower_layers():
    """tl_core.LAYERS is the one list of the engine's modules: every module is in it, and none imports a
    module of a higher layer."""
    import tl_core

    layer_of = {module: index for index, (_, modules) in enumerate(tl_core.LAYERS) for module in modules}
    modules = _engine_modules()
    assert sorted(modules) == sorted(layer_of), "tl_core.LAYERS and the modules on disk differ"
    upward = [f"{name} ({tl_core.LAYERS[layer_of[name]][0]}) imports {target} ({tl_core.LAYERS[layer_of[target]][0]})"
              for name, path in modules.items() for target in _engine_imports(name, path, modules)
              if layer_of[target] > layer_of[name]]
    assert upward == []


def test_the_engine_import_graph_has_no_cycle():
    """No module reaches itself through imports, a function's local import included (Tarjan's strongly
    connected components of the graph)."""
    import sys

    modules = _engine_modules()
    graph = {name: set(_engine_imports(name, path, modules)) for name, path in modules.items()}
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph)))

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    assert cycles == []
