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
             "labels.json", "preprocess.json", "worker.lock", "STOP", "owner.json")


def test_only_runs_py_names_the_files_of_a_run_folder():
    """The run-folder contract is spelled out once (runs.RunFolder); everyone else asks it for paths."""
    from tl_core.ops.runs import RunFolder

    folder = RunFolder("/r")
    assert sorted(getattr(folder, name).name for name in ("config", "facts", "status", "events", "metrics", "predictions",
                                                           "weights", "labels", "preprocess", "lock", "stop", "owner")) \
        == sorted(RUN_FILES)
    for path in [*sorted((ROOT / "tl_core").rglob("*.py")), *PAGES]:
        if path.name == "runs.py" or "bundle" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in RUN_FILES:
                # A Hugging Face hub repository names its weights model.safetensors too: not a run folder.
                assert path.name == "backbones.py" and node.value == "model.safetensors", \
                    f"{path.relative_to(ROOT)} names the run file {node.value!r}: use runs.RunFolder"
